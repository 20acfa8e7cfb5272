//! `/healthz` (the process serves) and `/readyz` (the store answers with the schema in
//! place), each a JSON body naming the failing check.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::Api;
use crate::clock::format_ms;

/// How long the readiness probe waits for the store.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the process is ready, and each check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub ok: bool,
    pub checks: Vec<Check>,
    /// Since when the engine's loops have found the store failing, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_failing_since: Option<String>,
}

/// The process serves.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Serving", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        ok: true,
        checks: vec![Check {
            name: "serving".into(),
            ok: true,
            error: None,
        }],
        store_failing_since: None,
    })
}

/// The store answers within 2 s, its schema is migrated, and each enabled broker is
/// connected; 503 naming the failing check otherwise (a database outage makes it unready until the database answers again).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready; the failing check says why", body = Health),
    ))]
pub async fn readyz(State(api): State<Api>) -> (StatusCode, Json<Health>) {
    let store = api.engine.store();
    let (reachable, migrated) = match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
        Err(_) => (
            Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
            None,
        ),
        Ok(Err(e)) => (Err(e.to_string()), None),
        Ok(Ok(())) => {
            let migrated = tokio::time::timeout(PROBE_TIMEOUT, store.ensure_migrated()).await;
            let migrated = match migrated {
                Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
                Ok(result) => result.map_err(|e| e.to_string()),
            };
            (Ok(()), Some(migrated))
        }
    };
    let check = |name: &str, result: Result<(), String>| Check {
        name: name.into(),
        ok: result.is_ok(),
        error: result.err(),
    };
    let mut checks = vec![check("store", reachable)];
    checks.push(check(
        "migrations",
        migrated.unwrap_or_else(|| Err("not checked: the store does not answer".into())),
    ));
    for consumer in super::overview::consumer_list(&api) {
        if consumer.enabled && consumer.transport != "direct" {
            checks.push(check(
                &format!("{} connected", consumer.transport),
                if consumer.connected {
                    Ok(())
                } else {
                    Err("the broker is not connected".into())
                },
            ));
        }
    }
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let store_failing_since = api.engine.store_health().failing_since().map(format_ms);
    (
        status,
        Json(Health {
            ok,
            checks,
            store_failing_since,
        }),
    )
}
