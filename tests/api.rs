//! The operator surface over HTTP, on a real store (SQLite and PostgreSQL): the JSON API's
//! listing, filters and cursor paging (stable while rows are inserted between pages), 404s,
//! 400s naming the parameter, mutations refused without the token and done with it; the page
//! escaping a hostile key; `/metrics` parsing as Prometheus text with counters that move after
//! a reconcile; `/readyz` unready while the database is cut and ready after; the CLI and the
//! API showing the same figures; and the real `thalamus run` serving it all.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{json, Value};
use thalamus::api::ApiSettings;
use thalamus::bus::EventsSettings;
use thalamus::engine::Engine;
use thalamus::secret::Secret;

use common::proxy::{Mode, Proxy};
use common::{Act, Backend, Child, Harness, Parent};

const TOKEN: &str = "s3cret-token";

/// Serves the surface over `engine` on a free port; its base URL.
async fn serve(engine: &Engine, token: Option<&str>) -> String {
    serve_with(engine, token, &EventsSettings::default()).await
}

/// Like [`serve`], telling of the transports `events` enables.
async fn serve_with(engine: &Engine, token: Option<&str>, events: &EventsSettings) -> String {
    let settings = ApiSettings {
        listen: "127.0.0.1:0".into(),
        token: token.map(Secret::new),
        ..ApiSettings::default()
    };
    let server = thalamus::api::serve(engine, &settings, events)
        .await
        .expect("serve")
        .expect("enabled");
    format!("http://{}", server.addr())
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(url: &str) -> (StatusCode, Value) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn text(url: &str) -> (StatusCode, String) {
    let r = client().get(url).send().await.expect("GET");
    (r.status(), r.text().await.unwrap())
}

async fn parents(h: &Harness, keys: impl IntoIterator<Item = String>) {
    for (i, key) in keys.into_iter().enumerate() {
        h.models()
            .upsert(&key, &Parent { value: i as i64 })
            .await
            .unwrap();
    }
}

fn keys_of(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect()
}

async fn list_filters_and_pages(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    parents(&h, (10..40).map(|i| format!("p{i}"))).await;
    h.models()
        .upsert(
            "c1",
            &Child {
                parent: "p10".into(),
                value: 1,
            },
        )
        .await
        .unwrap();

    // All kinds, ordered by (kind, key).
    let (status, all) = get(&format!("{base}/api/v1/models?limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["items"].as_array().unwrap().len(), 31);
    assert_eq!(all["items"][0]["kind"], "Child");
    assert!(all["next_cursor"].is_null());

    // Kind and prefix filters.
    let (_, p2) = get(&format!("{base}/api/v1/models?kind=Parent&prefix=p2")).await;
    assert_eq!(
        keys_of(&p2),
        (20..30).map(|i| format!("p{i}")).collect::<Vec<_>>()
    );
    let (_, none) = get(&format!("{base}/api/v1/models?kind=Parent&prefix=nothing")).await;
    assert_eq!(keys_of(&none), Vec::<String>::new());

    // Pages of 7, with rows inserted between pages before and after the cursor: every row
    // there at the start is seen exactly once, in order; one inserted ahead of the cursor
    // is seen too, one inserted behind it is not.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            None => format!("{base}/api/v1/models?kind=Parent&limit=7"),
            Some(c) => format!("{base}/api/v1/models?kind=Parent&limit=7&cursor={c}"),
        };
        let (status, page) = get(&url).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(keys_of(&page));
        pages += 1;
        if pages == 2 {
            parents(&h, ["p00".to_string(), "p99".to_string()]).await;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (10..40).map(|i| format!("p{i}")).collect();
    expected.push("p99".into());
    assert_eq!(seen, expected);

    // The state filter: failing objects are in backoff after a pass.
    h.script.set("p11", Act::Fail);
    h.script.set("p12", Act::Fail);
    h.engine.sync_pass().await.unwrap();
    let (_, backoff) = get(&format!("{base}/api/v1/models?state=backoff")).await;
    assert_eq!(keys_of(&backoff), vec!["p11", "p12"]);
    assert_eq!(backoff["items"][0]["state"], "backoff");
    let (_, ok) = get(&format!(
        "{base}/api/v1/models?kind=Parent&state=ok&prefix=p1"
    ))
    .await;
    assert_eq!(ok["items"].as_array().unwrap().len(), 8);
}

async fn one_model_and_404s(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    parents(&h, ["VLA/24A-001.sb1.eb1".to_string()]).await;
    h.models()
        .upsert(
            "c1",
            &Child {
                parent: "VLA/24A-001.sb1.eb1".into(),
                value: 1,
            },
        )
        .await
        .unwrap();
    h.script.set("c1", Act::Permanent);
    h.engine.sync_pass().await.unwrap();

    // A key holding `/` travels percent-encoded.
    let (status, parent) = get(&format!(
        "{base}/api/v1/models/Parent/VLA%2F24A-001.sb1.eb1"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{parent}");
    assert_eq!(parent["state"], "ok");
    assert_eq!(parent["spec"]["value"], 0);
    assert_eq!(
        parent["dependents"][0],
        json!({"field": "parent", "kind": "Child", "key": "c1"})
    );
    assert_eq!(parent["executions"][0]["outcome"], "ok");

    let (_, child) = get(&format!("{base}/api/v1/models/Child/c1")).await;
    assert_eq!(child["state"], "error");
    assert!(child["last_error"].as_str().is_some(), "{child}");
    assert_eq!(child["links"][0]["key"], "VLA/24A-001.sb1.eb1");
    let (status, history) = get(&format!("{base}/api/v1/models/Child/c1/history")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history.as_array().unwrap().len(), 1);

    let r = client()
        .put(format!("{base}/api/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
    for url in [
        format!("{base}/api/v1/models/Parent/nope"),
        format!("{base}/api/v1/models/Parent/nope/history"),
        format!("{base}/api/v1/dead-letters/12345"),
        format!("{base}/api/v1/nothing-here"),
    ] {
        let (status, body) = get(&url).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{url}: {body}");
        assert!(body["error"].as_str().is_some(), "{url}: {body}");
    }
}

async fn bad_parameters_are_400s_naming_them(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("limit=1001", "limit"),
        ("state=sleepy", "state"),
        ("cursor=zz", "cursor"),
        ("cursor=6869", "cursor"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = get(&format!("{base}/api/v1/models?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains(&format!("`{parameter}`")),
            "{query}: {body}"
        );
    }
    let (status, body) = get(&format!("{base}/api/v1/models/Parent/p/history?limit=-1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["parameter"], "limit");
}

async fn mutations_need_the_token(backend: Backend) {
    let h = Harness::new(backend).await;
    parents(&h, ["p".to_string()]).await;
    h.script.set("p", Act::FailTimes(1));
    h.engine.sync_pass().await.unwrap();
    let retry = |base: &str| format!("{base}/api/v1/models/Parent/p/retry");

    // No token configured: refused, whatever the request brings.
    let open = serve(&h.engine, None).await;
    for auth in [None, Some(TOKEN)] {
        let mut req = client().post(retry(&open));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let r = client()
        .delete(format!("{open}/api/v1/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A token configured: none or a wrong one is 401, the right one works.
    let base = serve(&h.engine, Some(TOKEN)).await;
    let r = client().post(retry(&base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = client()
        .post(retry(&base))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, before) = get(&format!("{base}/api/v1/models/Parent/p")).await;
    assert_eq!(before["state"], "backoff");
    assert!(before["next_attempt_at"].as_str().is_some());

    let r = client()
        .post(retry(&base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, after) = get(&format!("{base}/api/v1/models/Parent/p")).await;
    assert_eq!(after["state"], "pending", "{after}");
    // Due now: the next pass runs it although the manual clock has not moved.
    let report = h.engine.sync_pass().await.unwrap();
    assert_eq!(report.synced, 1);

    let r = client()
        .delete(format!("{base}/api/v1/models/Parent/p"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, deleting) = get(&format!("{base}/api/v1/models/Parent/p")).await;
    assert_eq!(deleting["state"], "deleting");
    let r = client()
        .post(format!("{base}/api/v1/models/Parent/gone/retry"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client()
        .delete(format!("{base}/api/v1/dead-letters?older_than_days=30"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // As the CLI: no filter purges nothing; `all=true` must be said.
    let r = client()
        .delete(format!("{base}/api/v1/dead-letters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["parameter"], "older_than_days", "{body}");
    let r = client()
        .delete(format!("{base}/api/v1/dead-letters?all=true"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A kind that is not one is a 400 naming `kind`, not an empty table.
    let (status, body) = get(&format!("{base}/api/v1/models?kind=Nope")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["parameter"], "kind", "{body}");
}

async fn the_page_escapes_a_hostile_key(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    let hostile = r#"<script>alert("x")</script>&"'"#;
    parents(&h, [hostile.to_string(), "calm".to_string()]).await;
    h.script.set(hostile, Act::Permanent);
    h.engine.sync_pass().await.unwrap();

    let (status, overview) = text(&format!("{base}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(overview.contains("Parent"), "{overview}");
    assert!(overview.contains(r#"class="st error""#), "{overview}");

    let (status, list) = text(&format!("{base}/models?kind=Parent&state=error")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list.contains("<script>alert"), "{list}");
    assert!(
        list.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"),
        "{list}"
    );
    assert!(!list.contains(">calm<"), "the state filter holds: {list}");

    let href = format!("/models/Parent/{}", thalamus::api::encode_segment(hostile));
    assert!(list.contains(&href), "a link to the model page: {list}");
    let (status, page) = text(&format!("{base}{href}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("History"), "{page}");
    assert!(
        page.contains("permanent"),
        "the history shows the outcome: {page}"
    );

    let (status, _) = text(&format!("{base}/models?state=bogus")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = text(&format!("{base}/models/Parent/missing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// `name{labels}` → value, for every sample; panics on a line that is not Prometheus text.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn metrics_move_after_a_reconcile(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    parents(&h, ["a".to_string(), "b".to_string(), "c".to_string()]).await;
    h.script.set("c", Act::Fail);

    let r = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let before = parse_metrics(&r.text().await.unwrap());
    assert_eq!(
        before[r#"thalamus_models{kind="Parent",state="pending"}"#],
        3.0
    );
    assert_eq!(before[r#"workqueue_depth{name="Parent"}"#], 3.0);
    assert_eq!(
        before[r#"controller_runtime_max_concurrent_reconciles{controller="Parent"}"#],
        4.0
    );
    assert!(!before.contains_key(
        r#"controller_runtime_reconcile_total{controller="Parent",result="success"}"#
    ));

    h.engine.sync_pass().await.unwrap();
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let after = parse_metrics(&text);
    assert_eq!(
        after[r#"controller_runtime_reconcile_total{controller="Parent",result="success"}"#], 2.0,
        "{text}"
    );
    assert_eq!(
        after[r#"controller_runtime_reconcile_total{controller="Parent",result="error"}"#],
        1.0
    );
    assert_eq!(
        after[r#"controller_runtime_reconcile_errors_total{controller="Parent"}"#],
        1.0
    );
    assert_eq!(after[r#"workqueue_retries_total{name="Parent"}"#], 1.0);
    assert_eq!(
        after[r#"controller_runtime_reconcile_time_seconds_count{controller="Parent"}"#],
        3.0
    );
    assert_eq!(
        after[r#"controller_runtime_active_workers{controller="Parent"}"#],
        0.0
    );
    assert_eq!(after[r#"thalamus_models{kind="Parent",state="ok"}"#], 2.0);
    assert_eq!(
        after[r#"thalamus_models{kind="Parent",state="backoff"}"#],
        1.0
    );
    assert_eq!(after["thalamus_store_up"], 1.0);
    assert_eq!(
        after[r#"thalamus_events_consumed_total{transport="direct"}"#], 0.0,
        "{text}"
    );
    assert!(!text.contains(r#"transport="kafka""#), "off: {text}");
}

async fn cli_and_api_show_the_same_figures(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    parents(&h, (0..5).map(|i| format!("p{i}"))).await;
    h.models()
        .upsert(
            "c",
            &Child {
                parent: "p0".into(),
                value: 1,
            },
        )
        .await
        .unwrap();
    h.script.set("p1", Act::Fail);
    h.script.set("p2", Act::Permanent);
    h.engine.sync_pass().await.unwrap();
    parents(&h, ["p9".to_string()]).await;

    let cwd = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_thalamus"))
            .args(args)
            .env("THALAMUS__DATABASE__URL", &h.db.url)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let (_, counts) = get(&format!("{base}/api/v1/counts")).await;
    assert_eq!(counts, cli(&["status", "-o", "json"]));
    assert_eq!(counts["total"], 7);

    let (_, detail) = get(&format!("{base}/api/v1/models/Parent/p1")).await;
    let described = cli(&["describe", "Parent", "p1", "-o", "json"]);
    for field in [
        "state",
        "generation",
        "enacted",
        "attempts",
        "next_attempt_at",
        "last_error",
        "backend_status",
        "spec",
        "status",
        "dependents",
        "links",
    ] {
        assert_eq!(detail[field], described[field], "{field}");
    }
    let (_, listed) = get(&format!("{base}/api/v1/models?kind=Parent")).await;
    let got = cli(&["get", "Parent", "-o", "json"]);
    let figures = |rows: &Value| -> BTreeSet<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {}",
                    r["key"], r["state"], r["generation"], r["enacted"], r["attempts"]
                )
            })
            .collect()
    };
    assert_eq!(figures(&listed["items"]), figures(&got));
}

async fn openapi_and_health(backend: Backend) {
    let h = Harness::new(backend).await;
    let base = serve(&h.engine, None).await;
    let (status, doc) = get(&format!("{base}/api/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/models",
        "/api/v1/models/{kind}/{key}",
        "/api/v1/models/{kind}/{key}/retry",
        "/api/v1/dead-letters/{id}/replay",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} in {doc}");
    }
    assert!(doc["components"]["schemas"]["ModelPage"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let (status, health) = get(&format!("{base}/healthz")).await;
    assert_eq!(
        (status, health["ok"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let (status, graph) = get(&format!("{base}/api/v1/graph")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        graph["sync_order"],
        json!(["Parent", "Child", "Grandchild"])
    );
    let (status, replicas) = get(&format!("{base}/api/v1/replicas")).await;
    assert_eq!(status, StatusCode::OK, "{replicas}");
    assert!(replicas
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["this"] == true));
    let (status, consumers) = get(&format!("{base}/api/v1/consumers")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(consumers[0]["transport"], "kafka");
    assert_eq!(consumers[0]["enabled"], false);
    assert_eq!(consumers[1]["transport"], "amqp");
    assert_eq!(consumers[2]["consumed"], 0);
}

both_backends!(
    list_filters_and_pages,
    one_model_and_404s,
    bad_parameters_are_400s_naming_them,
    mutations_need_the_token,
    the_page_escapes_a_hostile_key,
    metrics_move_after_a_reconcile,
    cli_and_api_show_the_same_figures,
    openapi_and_health,
);

/// `/readyz` is unready while PostgreSQL is cut, naming the store check, and ready again
/// once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_database_outage() {
    let h = Harness::new(Backend::Postgres).await;
    let proxy = Proxy::postgres().await;
    let store = thalamus::store::Store::connect(
        &h.db.url_via(proxy.addr()),
        2,
        thalamus::store::Open::Existing,
    )
    .await
    .unwrap();
    let engine = h.engine_on(store, "api-outage", |_| {});
    let base = serve(&engine, None).await;
    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    proxy.cut(Mode::Refuse);
    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["ok"], false);
    assert_eq!(ready["checks"][0]["name"], "store");
    assert_eq!(ready["checks"][0]["ok"], false);
    assert!(ready["checks"][0]["error"].as_str().is_some(), "{ready}");
    let (status, _) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, StatusCode::OK, "the process still serves");
    let (status, body) = get(&format!("{base}/api/v1/counts")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    proxy.restore();
    common::brokers::eventually("readyz ready again", || async {
        get(&format!("{base}/readyz")).await.0 == StatusCode::OK
    })
    .await;
}

/// The real `thalamus run` serves the surface on `api.listen` (port 0 here: the log says
/// which it took): a dataset's Observation shows on the page and in the API, `/metrics`
/// counts its reconcile, and a retry is refused without the token and done with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thalamus_run_serves_the_surface() {
    use common::controller::{self, Controller};
    let stub = common::workspaces_stub::Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = common::TestDb::new(Backend::Sqlite).await;
    let settings = controller::settings(dir.path(), &db.url, &stub);
    let config = controller::write_config(dir.path(), "thalamus", &settings);
    controller::add_dataset(dir.path(), "24A-001.sb1.eb1");
    let mut c = Controller::spawn(
        &config,
        dir.path(),
        "thalamus",
        &[("THALAMUS__API__TOKEN", TOKEN)],
    );

    let mut base = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while base.is_empty() {
        assert!(c.alive(), "the controller exited:\n{}", c.tail(20));
        assert!(
            std::time::Instant::now() < deadline,
            "no address logged:\n{}",
            c.tail(20)
        );
        if let Some(line) = c
            .log_lines()
            .iter()
            .find(|l| l.message.starts_with("operator surface at "))
        {
            base = line.message["operator surface at ".len()..]
                .trim_end_matches('/')
                .to_string();
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let key = "VLA/24A-001.sb1.eb1";
    common::brokers::eventually("the Observation in the API", || async {
        let (_, page) = get(&format!("{base}/api/v1/models?kind=Observation&state=ok")).await;
        page["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    let (_, page) = get(&format!("{base}/api/v1/models?kind=Observation")).await;
    assert_eq!(page["items"][0]["key"], key, "{page}");

    let (status, html) = text(&format!("{base}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Observation"), "{html}");
    let metrics = parse_metrics(&text(&format!("{base}/metrics")).await.1);
    assert!(
        metrics[r#"controller_runtime_reconcile_total{controller="Observation",result="success"}"#]
            >= 1.0,
        "{metrics:?}"
    );

    // The Ingestion's calls to Workspaces and the VLA scans are counted too.
    common::brokers::eventually("a Workspaces call counted", || async {
        let text = text(&format!("{base}/metrics")).await.1;
        parse_metrics(&text)
            .get(r#"thalamus_http_calls_total{service="workspaces",result="ok"}"#)
            .is_some_and(|n| *n >= 1.0)
    })
    .await;
    let metrics = parse_metrics(&text(&format!("{base}/metrics")).await.1);
    let sdm = dir.path().join("sdm").display().to_string();
    let scans = format!(r#"thalamus_pull_scan_seconds_count{{root="{sdm}"}}"#);
    assert!(metrics[&scans] >= 1.0, "{metrics:?}");
    let pending = format!(r#"thalamus_pull_datasets_pending_settle{{root="{sdm}"}}"#);
    assert_eq!(metrics[&pending], 0.0, "{metrics:?}");
    assert!(metrics
        .contains_key(r#"thalamus_http_rate_limit_wait_seconds_count{service="workspaces"}"#));

    let retry = format!(
        "{base}/api/v1/models/Observation/{}/retry",
        thalamus::api::encode_segment(key)
    );
    let r = client().post(&retry).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .post(&retry)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert!(c.alive());
}

/// `/readyz` names each enabled broker that is not connected (Kafka and AMQP), and turns
/// ready once the transports are; the consumer's counters move per transport (a message no step can apply is
/// dead-lettered under `amqp`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_consumers_follow_the_transports() {
    use common::brokers::{self, ARCHIVE};
    let h = Harness::new(Backend::Sqlite).await;
    brokers::ensure_kafka();
    let events = brokers::events("api_brokers");
    let base = serve_with(&h.engine, None, &events).await;

    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    let failing: Vec<&Value> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    let names: Vec<&Value> = failing.iter().map(|c| &c["name"]).collect();
    assert_eq!(
        names,
        [&json!("kafka connected"), &json!("amqp connected")],
        "{ready}"
    );

    let shutdown = h.engine.shutdown_token();
    let sink = std::sync::Arc::new(h.engine.clone());
    let transports = thalamus::bus::start(sink, h.engine.holder(), &events, &shutdown);
    brokers::eventually("readyz ready with both brokers connected", || async {
        get(&format!("{base}/readyz")).await.0 == StatusCode::OK
    })
    .await;

    brokers::publish_amqp(
        &brokers::actual(&events, ARCHIVE),
        "ingestion.event",
        &[b"not json".to_vec()],
    )
    .await;
    brokers::eventually("the message dead-lettered", || async {
        let (_, consumers) = get(&format!("{base}/api/v1/consumers")).await;
        consumers[1]["dead_lettered"] == 1
    })
    .await;
    let (_, consumers) = get(&format!("{base}/api/v1/consumers")).await;
    assert_eq!(consumers[1]["connected"], true, "{consumers}");
    assert_eq!(consumers[1]["consumed"], 1, "{consumers}");
    let metrics = parse_metrics(&text(&format!("{base}/metrics")).await.1);
    assert_eq!(
        metrics[r#"thalamus_events_dead_lettered_total{transport="amqp"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"thalamus_events_connected{transport="amqp"}"#],
        1.0
    );
    let (_, letters) = get(&format!("{base}/api/v1/dead-letters")).await;
    assert_eq!(letters[0]["payload"], "not json", "{letters}");

    shutdown.cancel();
    transports.join_all().await;
    brokers::cleanup_amqp(&events).await;
}

/// The shipped config.yaml spells out the `api` defaults; the token comes from the
/// environment; a bad listen address is refused by name.
#[test]
fn api_settings_load_from_the_file_and_the_environment() {
    use thalamus::config::Settings;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let s = Settings::load_with_env(Some(&path), None, Vec::new()).unwrap();
    assert_eq!(
        serde_json::to_value(&s.api).unwrap(),
        serde_json::to_value(ApiSettings::default()).unwrap()
    );
    assert_eq!(s.api.listen, "127.0.0.1:8080");
    assert!(
        s.api.token.is_none(),
        "no token unless configured: mutations refused"
    );
    let s =
        Settings::load_with_env(Some(&path), None, env("THALAMUS__API__TOKEN", "t0k-en")).unwrap();
    assert_eq!(s.api.token.unwrap().expose(), "t0k-en");
    let err = Settings::load_with_env(Some(&path), None, env("THALAMUS__API__LISTEN", "nowhere"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`api.listen`"), "{err}");
}

/// The real `thalamus run` on PostgreSQL through a proxy: `/readyz` turns unready while the
/// database is cut, `/healthz` still answers, and `/readyz` is ready again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thalamus_run_is_unready_while_its_database_is_cut() {
    use common::controller::{self, Controller};
    let stub = common::workspaces_stub::Stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = common::TestDb::new(Backend::Postgres).await;
    let proxy = Proxy::postgres().await;
    let settings = controller::settings(dir.path(), &db.url_via(proxy.addr()), &stub);
    let config = controller::write_config(dir.path(), "thalamus", &settings);
    let mut c = Controller::spawn(&config, dir.path(), "thalamus", &[]);
    let mut base = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while base.is_empty() {
        assert!(c.alive(), "the controller exited:\n{}", c.tail(20));
        assert!(
            std::time::Instant::now() < deadline,
            "no address logged:\n{}",
            c.tail(20)
        );
        match c
            .log_lines()
            .iter()
            .find(|l| l.message.starts_with("operator surface at "))
        {
            Some(line) => {
                base = line.message["operator surface at ".len()..]
                    .trim_end_matches('/')
                    .to_string()
            }
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    common::brokers::eventually("ready", || async {
        get(&format!("{base}/readyz")).await.0 == StatusCode::OK
    })
    .await;

    proxy.cut(Mode::Refuse);
    let (status, ready) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["checks"][0]["name"], "store", "{ready}");
    assert_eq!(get(&format!("{base}/healthz")).await.0, StatusCode::OK);

    proxy.restore();
    common::brokers::eventually("ready again", || async {
        get(&format!("{base}/readyz")).await.0 == StatusCode::OK
    })
    .await;
    assert!(c.alive(), "{}", c.tail(20));
}
