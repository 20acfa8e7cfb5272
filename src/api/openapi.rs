//! The OpenAPI document, generated from the handlers' annotations, never kept by hand.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use super::{health, metrics, models, overview};

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "thalamus",
        description = "The operator API of thalamus, the NRAO archive's reconciliation controller. \
                       Mutations need `Authorization: Bearer <api.token>`."
    ),
    paths(
        models::list,
        models::show,
        models::history,
        models::retry,
        models::delete,
        overview::counts,
        overview::graph,
        overview::replicas,
        overview::consumers,
        overview::dead_letters,
        overview::dead_letter,
        overview::replay,
        overview::purge,
        health::healthz,
        health::readyz,
        metrics::metrics,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `/api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
