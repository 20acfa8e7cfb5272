//! The executions audit trail keeps every column of every attempt as recorded, whichever
//! columns a batch's rows share (the insert binds shared values once).

mod common;

use common::{Backend, TestDb};
use thalamus::store::{NewExecution, Outcome};

fn attempt(
    kind: &str,
    key: &str,
    cause: &str,
    outcome: Outcome,
    error: Option<&str>,
) -> NewExecution {
    NewExecution {
        kind: kind.into(),
        key: key.into(),
        step: format!("sync:{kind}"),
        generation: key.len() as i64,
        cause: cause.into(),
        holder: "h".into(),
        started_at: 1_000 + key.len() as i64,
        duration_ms: 7,
        outcome,
        error: error.map(str::to_string),
    }
}

async fn every_column_round_trips(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let batches = [
        // All columns but the key shared.
        vec![
            attempt("Parent", "a", "new generation", Outcome::Ok, None),
            attempt("Parent", "b", "new generation", Outcome::Ok, None),
        ],
        // Every column differs somewhere.
        vec![
            attempt(
                "Parent",
                "cc",
                "retry after backoff",
                Outcome::Error,
                Some("boom"),
            ),
            attempt("Child", "d", "new generation", Outcome::Ok, None),
            attempt(
                "Child",
                "eee",
                "deferred recheck",
                Outcome::Deferred,
                Some("later"),
            ),
        ],
        // One row.
        vec![attempt(
            "Child",
            "f",
            "operator retry",
            Outcome::Permanent,
            Some("no"),
        )],
    ];
    for batch in &batches {
        store.record(batch).await.unwrap();
    }
    for want in batches.iter().flatten() {
        let got = store.history(&want.kind, &want.key, 10).await.unwrap();
        assert_eq!(got.len(), 1, "{} {}", want.kind, want.key);
        let got = &got[0];
        assert_eq!(
            (
                &got.step,
                got.generation,
                &got.cause,
                &got.holder,
                got.started_at,
                got.duration_ms,
                got.outcome.as_str(),
                &got.error
            ),
            (
                &want.step,
                want.generation,
                &want.cause,
                &want.holder,
                want.started_at,
                want.duration_ms,
                want.outcome.code(),
                &want.error
            ),
            "{} {}",
            want.kind,
            want.key
        );
    }
}

both_backends!(every_column_round_trips);
