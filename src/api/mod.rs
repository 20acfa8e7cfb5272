//! The operator surface `thalamus run` serves on `api.listen`: the JSON API under `/api/v1`
//! (its OpenAPI document generated from the handlers), the web page at `/`, Prometheus
//! metrics at `/metrics`, and `/healthz` `/readyz` for probes. Reads go through the same store
//! queries as the CLI; mutations need the bearer token (`api.token`) and are refused when
//! none is configured.

mod error;
mod health;
mod metrics;
mod models;
mod openapi;
mod page;
mod params;
mod settings;
mod views;

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info};

pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;
pub use page::encode_segment;
pub use settings::ApiSettings;
pub use views::{decode_cursor, encode_cursor};

mod overview;

use crate::bus::EventsSettings;
use crate::engine::Engine;
use crate::secret::Secret;

/// Which event transports this process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transports {
    pub kafka: bool,
    pub amqp: bool,
}

impl From<&EventsSettings> for Transports {
    fn from(e: &EventsSettings) -> Self {
        Self {
            kafka: e.kafka.enabled,
            amqp: e.amqp.enabled,
        }
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct Api {
    engine: Engine,
    token: Option<Secret>,
    transports: Transports,
    refresh_seconds: u64,
}

impl Api {
    /// The surface over `engine`, with `settings`' token, telling of `transports`.
    pub fn new(engine: Engine, settings: &ApiSettings, transports: Transports) -> Self {
        Self {
            engine,
            token: settings.token.clone(),
            transports,
            refresh_seconds: settings.refresh_seconds,
        }
    }

    /// Mutations need the configured bearer token: 403 when none is configured, 401 when the
    /// request lacks it or brings another.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mutations are off: no api.token is configured (set THALAMUS__API__TOKEN)",
            ));
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this needs `Authorization: Bearer <token>`",
            )),
            Some(given) if same(given.trim().as_bytes(), token.expose().as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong bearer token",
            )),
        }
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every route of the surface.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(page::overview))
        .route("/models", get(page::models))
        .route("/models/{kind}/{key}", get(page::model))
        .route("/dead-letters", get(page::dead_letters))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/models", get(models::list))
        .route(
            "/api/v1/models/{kind}/{key}",
            get(models::show).delete(models::delete),
        )
        .route("/api/v1/models/{kind}/{key}/history", get(models::history))
        .route("/api/v1/models/{kind}/{key}/retry", post(models::retry))
        .route("/api/v1/counts", get(overview::counts))
        .route("/api/v1/graph", get(overview::graph))
        .route("/api/v1/replicas", get(overview::replicas))
        .route("/api/v1/consumers", get(overview::consumers))
        .route(
            "/api/v1/dead-letters",
            get(overview::dead_letters).delete(overview::purge),
        )
        .route("/api/v1/dead-letters/{id}", get(overview::dead_letter))
        .route("/api/v1/dead-letters/{id}/replay", post(overview::replay))
        .fallback(models::no_route)
        .method_not_allowed_fallback(models::wrong_method)
        .with_state(api)
}

/// The running surface.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Where it listens (the port chosen, if `api.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving now.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Serves the surface over `engine` until its shutdown token is cancelled, if `settings`
/// enable it. A port that cannot be bound is an error.
pub async fn serve(
    engine: &Engine,
    settings: &ApiSettings,
    events: &EventsSettings,
) -> anyhow::Result<Option<Server>> {
    if !settings.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listening on api.listen {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let app = router(Api::new(engine.clone(), settings, events.into()));
    let shutdown = engine.shutdown_token();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            error!("the operator surface stopped: {e}");
        }
    });
    info!(%addr, "operator surface at http://{addr}/");
    Ok(Some(Server { addr, task }))
}
