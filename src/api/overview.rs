//! `/api/v1/…` beside the models: counts, the dependency graph, replicas, event consumers,
//! and dead letters (list, show; replay and purge with the token).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::models::{Done, MAX_LIMIT};
use super::params::Params;
use super::views::{self, Counts};
use super::Api;
use crate::clock::format_ms;
use crate::engine::{EventReport, TransportSnapshot};
use crate::step::{Event, Transport};
use crate::store::DeadLetter;

/// Model counts per kind × state, as `thalamus status -o json` prints them.
#[utoipa::path(get, path = "/api/v1/counts", tag = "overview",
    responses((status = 200, description = "Counts per kind and state", body = Counts)))]
pub async fn counts(State(api): State<Api>) -> Result<Json<Counts>, ApiError> {
    Ok(Json(views::counts(api.engine.store()).await?))
}

/// One edge of the dependency graph: `kind` objects link to a `target` through `field`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Edge {
    pub kind: String,
    pub target: String,
    pub field: String,
    pub reverse: String,
}

/// The dependency graph from `model-deps.json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Graph {
    /// Kinds in the order the sync loop runs them.
    pub sync_order: Vec<String>,
    pub dependencies: Vec<Edge>,
}

/// The dependency graph and the sync order.
#[utoipa::path(get, path = "/api/v1/graph", tag = "overview",
    responses((status = 200, description = "The graph", body = Graph)))]
pub async fn graph(State(api): State<Api>) -> Json<Graph> {
    let g = api.engine.graph();
    Json(Graph {
        sync_order: g.sync_order().to_vec(),
        dependencies: g
            .dependencies()
            .iter()
            .map(|d| Edge {
                kind: d.kind.clone(),
                target: d.target.clone(),
                field: d.field.clone(),
                reverse: d.reverse.clone(),
            })
            .collect(),
    })
}

/// One controller process sharing the store.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaView {
    pub holder: String,
    pub instance: Option<String>,
    pub started_at: Option<String>,
    /// Until when its heartbeat vouches for it (PostgreSQL only).
    pub heartbeat_until: Option<String>,
    pub alive: bool,
    /// Objects it holds leases on now.
    pub leases: u64,
    /// Whether this is the process answering.
    pub this: bool,
}

/// The replicas and what each holds.
#[utoipa::path(get, path = "/api/v1/replicas", tag = "overview",
    responses((status = 200, description = "Replicas by holder id", body = [ReplicaView])))]
pub async fn replicas(State(api): State<Api>) -> Result<Json<Vec<ReplicaView>>, ApiError> {
    Ok(Json(replica_list(&api).await?))
}

/// The replicas by holder id, this process among them, and the leases each holds now.
pub async fn replica_list(api: &Api) -> Result<Vec<ReplicaView>, ApiError> {
    let store = api.engine.store();
    let now = api.engine.now_ms();
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    for lease in store.leases().await? {
        if lease.until > now {
            *held.entry(lease.holder).or_default() += 1;
        }
    }
    let me = api.engine.holder().to_string();
    let mut out: Vec<ReplicaView> = store
        .replicas()
        .await?
        .into_iter()
        .map(|r| ReplicaView {
            leases: held.remove(&r.holder).unwrap_or(0),
            this: r.holder == me,
            alive: r.heartbeat_until >= now,
            instance: Some(r.instance),
            started_at: Some(format_ms(r.started_at)),
            heartbeat_until: Some(format_ms(r.heartbeat_until)),
            holder: r.holder,
        })
        .collect();
    // SQLite keeps no registry (one process); holders seen only in leases are listed too.
    if !out.iter().any(|r| r.this) {
        out.push(ReplicaView {
            leases: held.remove(&me).unwrap_or(0),
            holder: me,
            instance: None,
            started_at: None,
            heartbeat_until: None,
            alive: true,
            this: true,
        });
    }
    for (holder, leases) in held {
        out.push(ReplicaView {
            holder,
            instance: None,
            started_at: None,
            heartbeat_until: None,
            alive: false,
            leases,
            this: false,
        });
    }
    Ok(out)
}

/// One event transport of this process: whether it runs, whether its broker is connected,
/// and its counters since start.
#[derive(Debug, Serialize, ToSchema)]
pub struct Consumer {
    /// kafka, amqp, or direct (dead-letter replays and tests).
    pub transport: String,
    pub enabled: bool,
    /// Whether its broker is connected now (Kafka: as librdkafka last reported, every 5 s).
    pub connected: bool,
    pub consumed: u64,
    pub applied: u64,
    /// Duplicates and stale messages.
    pub unchanged: u64,
    pub dead_lettered: u64,
    /// Times a batch could not be stored and was retried.
    pub retried: u64,
    /// Kafka lag in messages, if known.
    pub lag: Option<i64>,
}

/// Each transport's state and counters.
pub fn consumer_list(api: &Api) -> Vec<Consumer> {
    let metrics = api.engine.event_metrics();
    let lag = metrics.snapshot().lag;
    [
        (Transport::Kafka, "kafka", api.transports.kafka),
        (Transport::Amqp, "amqp", api.transports.amqp),
        (Transport::Direct, "direct", true),
    ]
    .into_iter()
    .map(|(t, name, enabled)| {
        let TransportSnapshot {
            connected,
            consumed,
            applied,
            unchanged,
            dead_lettered,
            retried,
        } = metrics.transport(t);
        Consumer {
            transport: name.into(),
            enabled,
            connected: connected || t == Transport::Direct,
            consumed,
            applied,
            unchanged,
            dead_lettered,
            retried,
            lag: if t == Transport::Kafka { lag } else { None },
        }
    })
    .collect()
}

/// Event consumers: connected, lag, consumed, applied, dead-lettered, per transport.
#[utoipa::path(get, path = "/api/v1/consumers", tag = "overview",
    responses((status = 200, description = "One entry per transport", body = [Consumer])))]
pub async fn consumers(State(api): State<Api>) -> Json<Vec<Consumer>> {
    Json(consumer_list(&api))
}

/// A message no event step could apply.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: i64,
    pub transport: String,
    pub topic: String,
    pub routing_key: Option<String>,
    pub position: String,
    /// Headers as JSON text.
    pub headers: String,
    /// The payload as text (lossy).
    pub payload: String,
    pub reason: String,
    pub received_at: String,
    pub attempts: i32,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        Self {
            payload: d.payload_text(),
            id: d.id,
            transport: d.transport,
            topic: d.topic,
            routing_key: d.routing_key,
            position: d.position,
            headers: d.headers,
            reason: d.reason,
            received_at: format_ms(d.received_at),
            attempts: d.attempts,
        }
    }
}

/// Dead letters, newest first.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "dead letters",
    params(("limit" = Option<i64>, Query, description = "At most this many, 1 to 1000 (default 100)")),
    responses(
        (status = 200, description = "Dead letters", body = [DeadLetterView]),
        (status = 400, description = "A query parameter is wrong", body = ErrorBody),
    ))]
pub async fn dead_letters(
    State(api): State<Api>,
    uri: Uri,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let params = Params::parse(&uri, &["limit"])?;
    let limit = params.int("limit", 100, 1, MAX_LIMIT)?;
    let letters = api.engine.store().dead_letters(Some(limit)).await?;
    Ok(Json(
        letters.into_iter().map(DeadLetterView::from).collect(),
    ))
}

fn dead_letter_id(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("no dead letter {id:?}")))
}

/// One dead letter with its payload.
#[utoipa::path(get, path = "/api/v1/dead-letters/{id}", tag = "dead letters",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    ))]
pub async fn dead_letter(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = dead_letter_id(&id)?;
    match api.engine.store().dead_letter(id).await? {
        Some(d) => Ok(Json(d.into())),
        None => Err(ApiError::not_found(format!("no dead letter {id}"))),
    }
}

/// Applies a dead letter again (say, after the model it names was created); removed if it
/// applies, kept with the new reason if not.
#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/replay", tag = "dead letters",
    params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied and removed", body = Done),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Mutations are off: no `api.token` configured", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 422, description = "Still cannot be applied", body = ErrorBody),
    ))]
pub async fn replay(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Done>, ApiError> {
    api.authorize(&headers)?;
    let id = dead_letter_id(&id)?;
    let store = api.engine.store();
    let Some(d) = store.dead_letter(id).await? else {
        return Err(ApiError::not_found(format!("no dead letter {id}")));
    };
    let event = Event {
        transport: Transport::Direct,
        topic: d.topic.clone(),
        routing_key: d.routing_key.clone(),
        payload: d.payload.clone(),
        headers: serde_json::from_str(&d.headers).unwrap_or_default(),
        position: format!("dead letter {id}"),
    };
    match api.engine.apply_event(&event).await? {
        EventReport::Applied(what) | EventReport::Unchanged(what) => {
            store.remove_dead_letter(id).await?;
            api.engine.wake();
            Ok(Json(Done {
                message: format!("dead letter {id} replayed: {}", what.join("; ")),
                count: 1,
            }))
        }
        EventReport::Rejected(reason) => {
            store.dead_letter_failed_again(id, &reason).await?;
            Err(ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("dead letter {id} still cannot be applied: {reason}"),
            ))
        }
    }
}

/// Purges dead letters older than `older_than_days`, or all of them with `all=true`.
#[utoipa::path(delete, path = "/api/v1/dead-letters", tag = "dead letters",
    params(
        ("older_than_days" = Option<i64>, Query, description = "Only those older than this"),
        ("all" = Option<bool>, Query, description = "`true`: every dead letter (one of the two is required)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Purged", body = Done),
        (status = 400, description = "A query parameter is wrong", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Mutations are off: no `api.token` configured", body = ErrorBody),
    ))]
pub async fn purge(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Done>, ApiError> {
    api.authorize(&headers)?;
    let params = Params::parse(&uri, &["older_than_days", "all"])?;
    // As the CLI: a filter, or `all=true` said out loud; never everything by default.
    let before = match (params.get("older_than_days"), params.get("all")) {
        (Some(_), None) => {
            let days = params.int("older_than_days", 0, 0, 100_000)?;
            api.engine.now_ms() - days * 86_400_000
        }
        (None, Some("true")) => i64::MAX,
        (None, Some(_)) => return Err(ApiError::bad_param("all", "must be true")),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_param(
                "all",
                "give older_than_days or all=true, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_param(
                "older_than_days",
                "required (or all=true to purge every dead letter)",
            ))
        }
    };
    let n = api.engine.store().purge_dead_letters(before).await?;
    Ok(Json(Done {
        message: format!("purged {n} dead letter(s)"),
        count: n,
    }))
}
