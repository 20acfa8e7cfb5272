//! `/api/v1/models…`: list, one model, its history; retry and delete (with the token).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::params::Params;
use super::views::{self, ExecutionView, ModelDetail, ModelPage};
use super::Api;
use crate::store::{PageFilter, RetryResult};

/// The largest page the list gives.
pub const MAX_LIMIT: i64 = 1000;

/// The filters of a model listing, from the query (shared by the API and the page).
pub fn page_filter(params: &Params, default_limit: i64) -> Result<PageFilter, ApiError> {
    Ok(PageFilter {
        kind: params.get("kind").map(str::to_string),
        state: params.state()?,
        prefix: params.get("prefix").map(str::to_string),
        after: params.get("cursor").map(views::decode_cursor).transpose()?,
        limit: params.int("limit", default_limit, 1, MAX_LIMIT)?,
    })
}

/// A 400 naming `kind` when it is not a kind the steps or the store know (a typo would
/// otherwise look like an empty table).
pub async fn known_kind(api: &Api, kind: Option<&str>) -> Result<(), ApiError> {
    let Some(kind) = kind else { return Ok(()) };
    let mut kinds = api.engine.store().kinds().await?;
    kinds.extend(api.engine.graph().sync_order().iter().cloned());
    if kinds.iter().any(|k| k == kind) {
        return Ok(());
    }
    kinds.sort();
    kinds.dedup();
    Err(ApiError::bad_param(
        "kind",
        format!("{kind:?} is not a kind (kinds: {})", kinds.join(", ")),
    ))
}

/// Models, filtered by kind, state and key prefix, ordered by (kind, key), a page at a time.
#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    params(
        ("kind" = Option<String>, Query, description = "Only this kind, e.g. Ingestion"),
        ("state" = Option<String>, Query, description = "ok, pending, backoff, error, waiting or deleting"),
        ("prefix" = Option<String>, Query, description = "Only keys starting with this text"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<i64>, Query, description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of models", body = ModelPage),
        (status = 400, description = "A query parameter is wrong; `parameter` names it", body = ErrorBody),
    ))]
pub async fn list(State(api): State<Api>, uri: Uri) -> Result<Json<ModelPage>, ApiError> {
    let params = Params::parse(&uri, &["kind", "state", "prefix", "cursor", "limit"])?;
    let filter = page_filter(&params, 100)?;
    known_kind(&api, filter.kind.as_deref()).await?;
    Ok(Json(views::page(api.engine.store(), filter).await?))
}

/// One model: spec, status, links, dependents, last error, recent executions.
#[utoipa::path(get, path = "/api/v1/models/{kind}/{key}", tag = "models",
    params(
        ("kind" = String, Path, description = "Model kind"),
        ("key" = String, Path, description = "Model key, percent-encoded (`/` as `%2F`)"),
    ),
    responses(
        (status = 200, description = "The model", body = ModelDetail),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn show(
    State(api): State<Api>,
    Path((kind, key)): Path<(String, String)>,
) -> Result<Json<ModelDetail>, ApiError> {
    match views::detail(&api.engine, &kind, &key, 10).await? {
        Some(detail) => Ok(Json(detail)),
        None => Err(ApiError::not_found(format!("{kind} {key} not found"))),
    }
}

/// A model's executions audit trail, newest first.
#[utoipa::path(get, path = "/api/v1/models/{kind}/{key}/history", tag = "models",
    params(
        ("kind" = String, Path, description = "Model kind"),
        ("key" = String, Path, description = "Model key, percent-encoded"),
        ("limit" = Option<i64>, Query, description = "At most this many, 1 to 1000 (default 50)"),
    ),
    responses(
        (status = 200, description = "Executions, newest first", body = [ExecutionView]),
        (status = 404, description = "No such model and no executions", body = ErrorBody),
    ))]
pub async fn history(
    State(api): State<Api>,
    Path((kind, key)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Vec<ExecutionView>>, ApiError> {
    let params = Params::parse(&uri, &["limit"])?;
    let limit = params.int("limit", 50, 1, MAX_LIMIT)?;
    let store = api.engine.store();
    let executions = store.history(&kind, &key, limit).await?;
    if executions.is_empty() && store.get(&kind, &key).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "{kind} {key} not found and has no recorded executions"
        )));
    }
    Ok(Json(
        executions.into_iter().map(ExecutionView::from).collect(),
    ))
}

/// What a mutation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// For a person.
    pub message: String,
    /// How many objects or messages it touched.
    pub count: u64,
}

/// Clears a model's backoff or permanent failure so it runs at the next pass.
#[utoipa::path(post, path = "/api/v1/models/{kind}/{key}/retry", tag = "models",
    params(("kind" = String, Path), ("key" = String, Path, description = "percent-encoded")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Scheduled, or already in sync", body = Done),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Mutations are off: no `api.token` configured", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn retry(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((kind, key)): Path<(String, String)>,
) -> Result<Json<Done>, ApiError> {
    api.authorize(&headers)?;
    let now = api.engine.now_ms();
    let (message, count) = match api.engine.store().retry(&kind, &key, now).await? {
        RetryResult::Scheduled => {
            api.engine.wake();
            (
                format!("{kind} {key}: backoff cleared; it runs at the next pass"),
                1,
            )
        }
        RetryResult::InSync => (format!("{kind} {key} is in sync; nothing to retry"), 0),
        RetryResult::NotFound => {
            return Err(ApiError::not_found(format!("{kind} {key} not found")))
        }
    };
    Ok(Json(Done { message, count }))
}

/// Soft-deletes a model and its dependents; their delete steps run, dependents first.
#[utoipa::path(delete, path = "/api/v1/models/{kind}/{key}", tag = "models",
    params(("kind" = String, Path), ("key" = String, Path, description = "percent-encoded")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Marked for deletion", body = Done),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Mutations are off: no `api.token` configured", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    ))]
pub async fn delete(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((kind, key)): Path<(String, String)>,
) -> Result<Json<Done>, ApiError> {
    api.authorize(&headers)?;
    let store = api.engine.store();
    if store.get(&kind, &key).await?.is_none() {
        return Err(ApiError::not_found(format!("{kind} {key} not found")));
    }
    let marked = store.delete(&kind, &key, api.engine.now_ms()).await?;
    api.engine.wake();
    let message = if marked == 0 {
        format!("{kind} {key} is already being deleted")
    } else {
        format!("{kind} {key}: marked {marked} object(s) for deletion (dependents first)")
    };
    Ok(Json(Done {
        message,
        count: marked as u64,
    }))
}

/// 404 for an API path no route serves.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// 405 for a method the path does not take.
pub async fn wrong_method(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}
