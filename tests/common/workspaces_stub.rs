//! A stand-in for Workspaces and the archive: a small axum app on 127.0.0.1 implementing the
//! REST contract of the design ("Domain contracts"), recording every call it receives, with
//! scripted faults (errors, lost answers, slow answers, stale listings), lasting delays and
//! held answers per route, and request states the test moves by hand (or lets complete).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One call as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub method: String,
    /// Path and query exactly as sent (percent-encoded).
    pub raw: String,
    pub body: Option<Value>,
    pub authorization: Option<String>,
    /// When the call arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// `METHOD path?query`, percent-decoded, for readable assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, decode(&self.raw))
    }
}

/// A capability or workflow request the stand-in holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StubRequest {
    pub id: i64,
    /// `capability` or `workflow`.
    pub service: String,
    pub name: String,
    pub external_id: String,
    /// The `parameters` (capability) or `argument` (workflow) sent.
    pub input: Value,
    pub state: String,
    pub message: Option<String>,
}

/// Which call a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Create,
    Submit,
    Get,
    List,
    Archive,
    Cancel,
}

/// What the next call on a route does instead of (or besides) its normal work.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body; do nothing.
    Fail(u16, &'static str),
    /// Do the work, then answer with this status: the caller never learns it worked.
    Lost(u16),
    /// Do the work, then wait this long before answering (beyond the client's timeout).
    Slow(Duration),
    /// A listing that does not show requests yet (List only).
    StaleList,
    /// Do the work, then answer only once the test opens the gate: the caller's request is
    /// in flight for as long as the test needs.
    Hold(super::gate::Gate),
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    requests: Vec<StubRequest>,
    faults: HashMap<Route, VecDeque<Fault>>,
    /// Archive calibration status by ASDM uid (decoded).
    marks: HashMap<String, Value>,
    /// Every answer on the route comes this much later (the work is done first).
    delays: HashMap<Route, Duration>,
    /// Routes whose answers wait until the test releases them (the work is done first).
    holds: HashMap<Route, tokio::sync::watch::Receiver<bool>>,
    hold_gates: HashMap<Route, tokio::sync::watch::Sender<bool>>,
    /// Answers waiting on a hold right now, per route.
    held: HashMap<Route, usize>,
    /// A submitted request completes at once (its submit still answers Submitted).
    auto_complete: bool,
    /// Creates made while another request of the same object was not finished, as
    /// `new external id (live: id external id state)`: what "one request in flight per
    /// object" forbids.
    overlaps: Vec<String>,
}

/// The object a request was made for: its external id without `@<generation>`.
fn object_of(external_id: &str) -> &str {
    external_id
        .rsplit_once('@')
        .map_or(external_id, |(object, _)| object)
}

/// Whether a request in this state may still run.
fn is_live(state: &str) -> bool {
    matches!(state, "Created" | "Submitted" | "Executing")
}

/// The running stand-in; the server stops when the test's runtime does.
#[derive(Clone)]
pub struct Stub {
    addr: std::net::SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Stub {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, inner }
    }

    /// The base URL for `workspaces.url`.
    pub fn workspaces_url(&self) -> String {
        format!("http://{}/workspaces", self.addr)
    }

    /// The base URL for `archive.url`.
    pub fn archive_url(&self) -> String {
        format!("http://{}/archive", self.addr)
    }

    /// Queues a fault for the next call on `route`.
    pub fn fault(&self, route: Route, fault: Fault) {
        let mut inner = self.inner.lock().unwrap();
        inner.faults.entry(route).or_default().push_back(fault);
    }

    /// Every call received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Every call received so far as `METHOD path?query` lines.
    pub fn lines(&self) -> Vec<String> {
        self.received().iter().map(Received::line).collect()
    }

    /// Calls received since the first `n`, as lines.
    pub fn lines_after(&self, n: usize) -> Vec<String> {
        self.lines().split_off(n)
    }

    /// The requests held, in creation order.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Adds a request as if some earlier process had created it; returns its id.
    pub fn seed(&self, service: &str, name: &str, external_id: &str, state: &str) -> i64 {
        let mut inner = self.inner.lock().unwrap();
        let id = inner.requests.len() as i64 + 1;
        inner.requests.push(StubRequest {
            id,
            service: service.into(),
            name: name.into(),
            external_id: external_id.into(),
            input: json!({}),
            state: state.into(),
            message: None,
        });
        id
    }

    /// Moves a request on, as Workspaces would while it runs.
    pub fn set_state(&self, id: i64, state: &str, message: Option<&str>) {
        let mut inner = self.inner.lock().unwrap();
        let r = inner
            .requests
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no request {id}"));
        r.state = state.into();
        r.message = message.map(str::to_string);
    }

    /// Makes every later answer on `route` wait `delay` after doing its work (a slow
    /// Workspaces: a listing made at once but answered late widens every race).
    pub fn delay(&self, route: Route, delay: Duration) {
        self.inner.lock().unwrap().delays.insert(route, delay);
    }

    /// Holds every later answer on `route` (the work is done, the answer waits) until
    /// [`Stub::release`]: a step the test knows is in flight.
    pub fn hold(&self, route: Route) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut inner = self.inner.lock().unwrap();
        inner.holds.insert(route, rx);
        inner.hold_gates.insert(route, tx);
    }

    /// Lets the answers held on `route` go, and answers at once from now on.
    pub fn release(&self, route: Route) {
        let mut inner = self.inner.lock().unwrap();
        inner.holds.remove(&route);
        if let Some(gate) = inner.hold_gates.remove(&route) {
            let _ = gate.send(true);
        }
    }

    /// How many answers on `route` are held right now.
    pub fn held(&self, route: Route) -> usize {
        self.inner
            .lock()
            .unwrap()
            .held
            .get(&route)
            .copied()
            .unwrap_or(0)
    }

    /// Whether a submitted request completes at once (as if its work took no time): the
    /// submit answers Submitted, and the next look at the request finds it Complete.
    pub fn auto_complete(&self, on: bool) {
        self.inner.lock().unwrap().auto_complete = on;
    }

    /// How many create calls each external id received, whatever the answers were: a
    /// duplicate shows as a count above 1 even though the second create was answered 409.
    pub fn creates_per_external_id(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.received() {
            let create = r.method == "POST" && r.raw.ends_with("/request/create");
            let external_id = r
                .body
                .as_ref()
                .and_then(|b| b["external_id"].as_str())
                .map(str::to_string);
            if let (true, Some(id)) = (create, external_id) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The external ids that received more than one create call, with their counts.
    pub fn duplicate_creates(&self) -> BTreeMap<String, usize> {
        self.creates_per_external_id()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect()
    }

    /// Every create made while a request of the same object was still Created, Submitted or
    /// Executing: empty when no object ever had two requests in flight at once.
    pub fn overlaps(&self) -> Vec<String> {
        self.inner.lock().unwrap().overlaps.clone()
    }

    /// The cancel calls received, as request ids, in order.
    pub fn cancels(&self) -> Vec<i64> {
        self.received()
            .iter()
            .filter(|r| r.method == "POST" && r.raw.ends_with("/cancel"))
            .filter_map(|r| r.raw.rsplit('/').nth(1)?.parse().ok())
            .collect()
    }

    /// What the archive holds as the calibration status of `uid`.
    pub fn mark(&self, uid: &str) -> Option<Value> {
        self.inner.lock().unwrap().marks.get(uid).cloned()
    }
}

fn view(r: &StubRequest) -> Value {
    let mut v = json!({"id": r.id, "state": r.state, "external_id": r.external_id});
    if let Some(m) = &r.message {
        v["message"] = json!(m);
    }
    v
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body = (!body.is_empty()).then(|| {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    });
    let segments: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(&v.replace('+', " "))))
        .collect();
    let (response, delay, hold, gate, route) = {
        let mut inner = inner.lock().unwrap();
        inner.received.push(Received {
            method: method.to_string(),
            raw,
            body: body.clone(),
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            at: std::time::Instant::now(),
        });
        let route = match (&method, segments.as_slice()) {
            (&Method::POST, ["workspaces", _, _, "request", "create"]) => Route::Create,
            (&Method::POST, ["workspaces", _, "request", _, "submit"]) => Route::Submit,
            (&Method::POST, ["workspaces", _, "request", _, "cancel"]) => Route::Cancel,
            (&Method::GET, ["workspaces", _, "request", _]) => Route::Get,
            (&Method::GET, ["workspaces", _, "requests"]) => Route::List,
            (&Method::PUT, ["archive", "alma", "asdm", _, "calibration-status"]) => Route::Archive,
            _ => return answer(StatusCode::NOT_FOUND, json!({"error": "no such route"})),
        };
        let fault = inner.faults.get_mut(&route).and_then(VecDeque::pop_front);
        if let Some(Fault::Fail(status, text)) = fault {
            return (StatusCode::from_u16(status).unwrap(), text).into_response();
        }
        let mut response = work(&mut inner, route, &segments, &query, body);
        let mut delay = inner.delays.get(&route).copied();
        let hold = inner.holds.get(&route).cloned();
        if hold.is_some() {
            *inner.held.entry(route).or_insert(0) += 1;
        }
        let mut gate = None;
        match fault {
            Some(Fault::Lost(status)) => {
                response = (StatusCode::from_u16(status).unwrap(), "lost").into_response()
            }
            Some(Fault::Slow(d)) => delay = Some(d),
            Some(Fault::StaleList) => response = answer(StatusCode::OK, json!([])),
            Some(Fault::Hold(g)) => gate = Some(g),
            _ => {}
        }
        (response, delay, hold, gate, route)
    };
    if let Some(mut gate) = hold {
        // Counted as held until answered, or until the caller goes away (say, killed).
        let _held = Held(inner.clone(), route);
        let _ = gate.wait_for(|open| *open).await;
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(gate) = gate {
        gate.pass().await;
    }
    response
}

/// One answer waiting on a hold; it stops counting when dropped.
struct Held(Arc<Mutex<Inner>>, Route);

impl Drop for Held {
    fn drop(&mut self) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = inner.held.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The contract's normal behaviour for one call.
fn work(
    inner: &mut Inner,
    route: Route,
    segments: &[&str],
    query: &HashMap<String, String>,
    body: Option<Value>,
) -> Response {
    let service = segments.get(1).copied().unwrap_or_default();
    let input_field = match service {
        "capability" => "parameters",
        "workflow" => "argument",
        _ if route == Route::Archive => "",
        other => {
            return answer(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no service {other}")}),
            )
        }
    };
    let find = |inner: &mut Inner, id: &str| {
        let id: i64 = id.parse().ok()?;
        inner
            .requests
            .iter()
            .position(|r| r.id == id && r.service == service)
    };
    match route {
        Route::Create => {
            let body = body.unwrap_or_default();
            let (Some(external_id), Some(input)) =
                (body["external_id"].as_str(), body.get(input_field))
            else {
                return answer(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("external_id and {input_field} are required")}),
                );
            };
            if let Some(live) = inner.requests.iter().find(|r| {
                r.service == service
                    && r.external_id == external_id
                    && !matches!(r.state.as_str(), "Failed" | "Cancelled")
            }) {
                return answer(
                    StatusCode::CONFLICT,
                    json!({"error": format!("request {} exists for {external_id}", live.id)}),
                );
            }
            let overlapping: Vec<String> = inner
                .requests
                .iter()
                .filter(|r| {
                    object_of(&r.external_id) == object_of(external_id) && is_live(&r.state)
                })
                .map(|r| {
                    format!(
                        "{external_id} (live: {} {} {})",
                        r.id, r.external_id, r.state
                    )
                })
                .collect();
            inner.overlaps.extend(overlapping);
            let id = inner.requests.len() as i64 + 1;
            inner.requests.push(StubRequest {
                id,
                service: service.into(),
                name: segments[2].into(),
                external_id: external_id.into(),
                input: input.clone(),
                state: "Created".into(),
                message: None,
            });
            answer(StatusCode::OK, json!({"id": id, "state": "Created"}))
        }
        Route::Submit => match find(inner, segments[3]) {
            Some(i) if inner.requests[i].state == "Created" => {
                inner.requests[i].state = if inner.auto_complete {
                    "Complete".into()
                } else {
                    "Submitted".into()
                };
                answer(
                    StatusCode::OK,
                    json!({"id": inner.requests[i].id, "state": "Submitted"}),
                )
            }
            Some(i) => answer(
                StatusCode::CONFLICT,
                json!({"error": format!("request is {}", inner.requests[i].state)}),
            ),
            None => answer(StatusCode::NOT_FOUND, json!({"error": "no such request"})),
        },
        Route::Cancel => match find(inner, segments[3]) {
            Some(i) if is_live(&inner.requests[i].state) => {
                let r = &mut inner.requests[i];
                r.state = "Cancelled".into();
                r.message = Some("cancelled on request".into());
                answer(StatusCode::OK, view(r))
            }
            Some(i) => answer(
                StatusCode::CONFLICT,
                json!({"error": format!("request is {}", inner.requests[i].state)}),
            ),
            None => answer(StatusCode::NOT_FOUND, json!({"error": "no such request"})),
        },
        Route::Get => match find(inner, segments[3]) {
            Some(i) => answer(StatusCode::OK, view(&inner.requests[i])),
            None => answer(StatusCode::NOT_FOUND, json!({"error": "no such request"})),
        },
        Route::List => {
            let wanted = query.get("external_id").cloned().unwrap_or_default();
            let found: Vec<Value> = inner
                .requests
                .iter()
                .filter(|r| r.service == service && r.external_id == wanted)
                .map(view)
                .collect();
            answer(StatusCode::OK, Value::Array(found))
        }
        Route::Archive => {
            inner
                .marks
                .insert(segments[3].to_string(), body.unwrap_or_default());
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// Percent-decoding, for readable assertions and the stand-in's routing.
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
