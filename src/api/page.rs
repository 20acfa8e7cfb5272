//! The web page: server-rendered HTML (maud: templates are Rust, checked at compile time,
//! every value escaped), no build step, usable on a phone. It reloads itself with its query
//! string, so filters survive. Retry, delete and replay buttons appear only once a token
//! is entered (kept in the browser's session storage, sent as a bearer header).

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::error::ApiError;
use super::models::page_filter;
use super::params::Params;
use super::views;
use super::Api;
use crate::store::State as ModelState;

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;padding:0 1rem 2rem;color:#222;background:#fafafa}
header{display:flex;flex-wrap:wrap;gap:1rem;align-items:center;border-bottom:1px solid #ccc;padding:.5rem 0;margin-bottom:1rem}
header a{color:#036;text-decoration:none;font-weight:600}
h1{font-size:1.2rem;margin:0}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;white-space:nowrap}
td.long{white-space:normal;min-width:14rem;overflow-wrap:anywhere}
th{background:#eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.wrap{overflow-x:auto}
.st{border-radius:.3rem;padding:.05rem .4rem;color:#fff;font-weight:600;white-space:nowrap}
.ok{background:#2e7d32}.pending{background:#1565c0}.backoff{background:#ef6c00}
.error{background:#c62828}.waiting{background:#6a1b9a}.deleting{background:#455a64}
td.zero{color:#bbb}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:.8rem}
input,select,button{font-size:1rem;padding:.25rem}
pre{background:#f0f0f0;padding:.5rem;overflow-x:auto;white-space:pre-wrap}
.mut{display:none}body.tok .mut{display:inline-block}
.err{color:#c62828}
footer{margin-top:2rem;font-size:.8rem;color:#666}
"#;

const SCRIPT: &str = r#"
function tok(){return sessionStorage.getItem('thalamus-token')}
function setTok(){var t=document.getElementById('token').value;if(t){sessionStorage.setItem('thalamus-token',t)}else{sessionStorage.removeItem('thalamus-token')}location.reload()}
function act(method,url){fetch(url,{method:method,headers:{'Authorization':'Bearer '+tok()}}).then(function(r){return r.json().then(function(b){alert(b.message||b.error);location.reload()})})}
if(tok()){document.body.classList.add('tok')}
"#;

/// Percent-encodes `text` for a path segment (a key may hold `/`).
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn model_href(kind: &str, key: &str) -> String {
    format!("/models/{}/{}", encode_segment(kind), encode_segment(key))
}

fn query_value(text: &str) -> String {
    encode_segment(text)
}

fn layout(api: &Api, title: &str, body: Markup) -> Html<String> {
    let refresh = api.refresh_seconds;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh > 0 { meta http-equiv="refresh" content=(refresh); }
                title { (title) " · thalamus" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { a href="/" { "thalamus" } }
                    a href="/" { "Overview" }
                    a href="/models" { "Models" }
                    a href="/dead-letters" { "Dead letters" }
                    a href="/api/v1/openapi.json" { "API" }
                    a href="/metrics" { "Metrics" }
                }
                (body)
                footer {
                    "Holder " (api.engine.holder()) ". "
                    @if api.token.is_some() {
                        label { "Token for retry, delete, replay: "
                            input id="token" type="password" autocomplete="off";
                        }
                        button onclick="setTok()" { "Set" }
                    } @else {
                        "Mutations are off (no api.token configured)."
                    }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    Html(page.into_string())
}

fn state_badge(state: &str) -> Markup {
    html! { span class={"st " (state)} { (state) } }
}

fn error_page(api: &Api, e: ApiError) -> Response {
    let status = e.status();
    let body = html! { h2 { "Error " (status.as_u16()) } p.err { (e.message()) } };
    (status, layout(api, "Error", body)).into_response()
}

/// `/`: counts per kind × state, replicas, consumers.
pub async fn overview(State(api): State<Api>) -> Response {
    match overview_body(&api).await {
        Ok(body) => layout(&api, "Overview", body).into_response(),
        Err(e) => error_page(&api, e),
    }
}

async fn overview_body(api: &Api) -> Result<Markup, ApiError> {
    let counts = views::counts(api.engine.store()).await?;
    let consumers = super::overview::consumer_list(api);
    let replicas = super::overview::replica_list(api).await?;
    let dead = api.engine.store().dead_letters(Some(1000)).await?.len();
    Ok(html! {
        h2 { "Models" }
        @if counts.kinds.is_empty() {
            p { "No models yet." }
        } @else {
            div.wrap { table {
                tr {
                    th { "Kind" }
                    @for s in ModelState::ALL { th { (state_badge(s.as_str())) } }
                    th { "Total" }
                }
                @for k in &counts.kinds {
                    tr {
                        td { a href={"/models?kind=" (query_value(&k.kind))} { (k.kind) } }
                        @for s in ModelState::ALL {
                            @let n = k.get(s);
                            td.n.zero[n == 0] {
                                @if n > 0 {
                                    a href={"/models?kind=" (query_value(&k.kind)) "&state=" (s.as_str())} { (n) }
                                } @else { "0" }
                            }
                        }
                        td.n { (k.total) }
                    }
                }
                tr {
                    th { "All" }
                    @for s in ModelState::ALL {
                        @let n: i64 = counts.kinds.iter().map(|k| k.get(s)).sum();
                        td.n.zero[n == 0] {
                            @if n > 0 { a href={"/models?state=" (s.as_str())} { (n) } } @else { "0" }
                        }
                    }
                    td.n { a href="/models" { (counts.total) } }
                }
            } }
        }
        h2 { "Event consumers" }
        div.wrap { table {
            tr { th { "Transport" } th { "Enabled" } th { "Connected" } th { "Consumed" } th { "Applied" } th { "Unchanged" } th { "Dead-lettered" } th { "Retried" } th { "Lag" } }
            @for c in &consumers {
                tr {
                    td { (c.transport) }
                    td { (if c.enabled { "yes" } else { "no" }) }
                    td { @if c.enabled { (state_badge(if c.connected { "ok" } else { "error" })) } @else { "-" } }
                    td.n { (c.consumed) } td.n { (c.applied) } td.n { (c.unchanged) }
                    td.n { (c.dead_lettered) } td.n { (c.retried) }
                    td.n { (c.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into())) }
                }
            }
        } }
        p { a href="/dead-letters" { (dead) " dead letter(s) stored" } }
        h2 { "Replicas" }
        div.wrap { table {
            tr { th { "Holder" } th { "Alive" } th { "Leases held" } th { "Started" } th { "Heartbeat until" } }
            @for r in &replicas {
                tr {
                    td { (r.holder) @if r.this { " (this process)" } }
                    td { (state_badge(if r.alive { "ok" } else { "error" })) }
                    td.n { (r.leases) }
                    td { (r.started_at.as_deref().unwrap_or("-")) }
                    td { (r.heartbeat_until.as_deref().unwrap_or("-")) }
                }
            }
        } }
        @if let Some(since) = api.engine.store_health().failing_since() {
            p.err { "The store has been failing since " (crate::clock::format_ms(since)) "." }
        }
    })
}

/// `/models`: a table of models with kind, state and prefix filters and cursor paging.
pub async fn models(State(api): State<Api>, uri: Uri) -> Response {
    match models_body(&api, &uri).await {
        Ok(body) => layout(&api, "Models", body).into_response(),
        Err(e) => error_page(&api, e),
    }
}

async fn models_body(api: &Api, uri: &Uri) -> Result<Markup, ApiError> {
    let params = Params::parse(uri, &["kind", "state", "prefix", "cursor", "limit"])?;
    let filter = page_filter(&params, 50)?;
    super::models::known_kind(api, filter.kind.as_deref()).await?;
    let kinds = api.engine.store().kinds().await?;
    let kind = filter.kind.clone().unwrap_or_default();
    let state = filter.state.map(|s| s.as_str()).unwrap_or("");
    let prefix = filter.prefix.clone().unwrap_or_default();
    let limit = filter.limit;
    let page = views::page(api.engine.store(), filter).await?;
    let next = page.next_cursor.as_ref().map(|c| {
        format!(
            "/models?kind={}&state={}&prefix={}&limit={limit}&cursor={c}",
            query_value(&kind),
            state,
            query_value(&prefix)
        )
    });
    Ok(html! {
        h2 { "Models" }
        form.filters method="get" action="/models" {
            label { "Kind" select name="kind" {
                option value="" { "all" }
                @for k in &kinds { option value=(k) selected[*k == kind] { (k) } }
            } }
            label { "State" select name="state" {
                option value="" { "all" }
                @for s in ModelState::ALL { option value=(s.as_str()) selected[s.as_str() == state] { (s.as_str()) } }
            } }
            label { "Key prefix" input name="prefix" value=(prefix); }
            button type="submit" { "Filter" }
        }
        div.wrap { table {
            tr { th { "Kind" } th { "Key" } th { "State" } th { "Gen" } th { "Enacted" } th { "Attempts" } th { "Next attempt" } th { "Backend status" } }
            @for m in &page.items {
                tr {
                    td { (m.kind) }
                    td { a href=(model_href(&m.kind, &m.key)) { (m.key) } }
                    td { (state_badge(&m.state)) }
                    td.n { (m.generation) }
                    td.n { (m.enacted) }
                    td.n { (m.attempts) }
                    td { @if m.state != "ok" { (m.next_attempt_at.as_deref().unwrap_or("-")) } @else { "-" } }
                    td.long { (m.backend_status) }
                }
            }
        } }
        @if page.items.is_empty() { p { "No models match." } }
        @if let Some(next) = next { p { a href=(next) { "Next page →" } } }
    })
}

/// `/models/{kind}/{key}`: one model with its history, links, dependents and last error.
pub async fn model(State(api): State<Api>, Path((kind, key)): Path<(String, String)>) -> Response {
    match model_body(&api, &kind, &key).await {
        Ok(body) => layout(&api, &format!("{kind} {key}"), body).into_response(),
        Err(e) => error_page(&api, e),
    }
}

async fn model_body(api: &Api, kind: &str, key: &str) -> Result<Markup, ApiError> {
    let Some(m) = views::detail(&api.engine, kind, key, 50).await? else {
        return Err(ApiError::not_found(format!("{kind} {key} not found")));
    };
    let api_path = format!(
        "/api/v1/models/{}/{}",
        encode_segment(kind),
        encode_segment(key)
    );
    let s = &m.summary;
    Ok(html! {
        h2 { (kind) " " (key) " " (state_badge(&s.state)) }
        p {
            button.mut onclick={"act('POST','" (api_path) "/retry')"} { "Retry" } " "
            button.mut onclick={"if(confirm('Delete it and its dependents?'))act('DELETE','" (api_path) "')"} { "Delete" }
        }
        div.wrap { table {
            tr { th { "Generation" } td { (m.summary.generation) " (enacted " (s.enacted) ")" } }
            tr { th { "Backend status" } td.long { (s.backend_status) } }
            tr { th { "Attempts" } td { (s.attempts) } }
            tr { th { "Next attempt" } td { (s.next_attempt_at.as_deref().unwrap_or("-")) } }
            tr { th { "Last error" } td.err.long { (s.last_error.as_deref().unwrap_or("-")) } }
            tr { th { "Waiting on" } td { (m.waiting_on.as_deref().unwrap_or("-")) } }
            tr { th { "Last success" } td { (m.last_success_at.as_deref().unwrap_or("-")) } }
            tr { th { "Created" } td { (m.created_at) } }
            @if let Some(d) = &m.deleted_at { tr { th { "Deleted" } td { (d) " (delete step needed: " (m.need_delete) ")" } } }
            tr { th { "Links" } td { @for l in &m.links { (l.field) " → " a href=(model_href(&l.kind, &l.key)) { (l.kind) " " (l.key) } br; } } }
            tr { th { "Dependents" } td { @for l in &m.dependents { a href=(model_href(&l.kind, &l.key)) { (l.kind) " " (l.key) } " (" (l.field) ")" br; } } }
        } }
        h3 { "Spec" }
        pre { (serde_json::to_string_pretty(&m.spec).unwrap_or_default()) }
        h3 { "Status" }
        pre { (serde_json::to_string_pretty(&m.status).unwrap_or_default()) }
        h3 { "History" }
        div.wrap { table {
            tr { th { "Started" } th { "Step" } th { "Gen" } th { "Cause" } th { "Outcome" } th { "Duration" } th { "Error" } }
            @for e in &m.executions {
                tr {
                    td { (e.started_at) } td { (e.step) } td.n { (e.generation) } td { (e.cause) }
                    td { (e.outcome) } td.n { (e.duration_ms) " ms" } td.long { (e.error.as_deref().unwrap_or("")) }
                }
            }
        } }
    })
}

/// `/dead-letters`: messages no event step could apply, with replay buttons.
pub async fn dead_letters(State(api): State<Api>) -> Response {
    let letters = match api.engine.store().dead_letters(Some(200)).await {
        Ok(l) => l,
        Err(e) => return error_page(&api, e.into()),
    };
    let body = html! {
        h2 { "Dead letters" }
        @if letters.is_empty() { p { "None." } }
        div.wrap { table {
            tr { th { "Id" } th { "Received" } th { "Transport" } th { "Topic" } th { "Reason" } th { "Payload" } th {} }
            @for d in &letters {
                tr {
                    td.n { (d.id) }
                    td { (crate::clock::format_ms(d.received_at)) }
                    td { (d.transport) }
                    td { (d.topic) }
                    td.err.long { (d.reason) }
                    td.long { pre { (d.payload_text()) } }
                    td { button.mut onclick={"act('POST','/api/v1/dead-letters/" (d.id) "/replay')"} { "Replay" } }
                }
            }
        } }
    };
    layout(&api, "Dead letters", body).into_response()
}
