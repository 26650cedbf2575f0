//! `GET /api/openapi.json`: the HTTP API described by utoipa from the handlers' own annotations
//! and types, so the description cannot drift from the code. services/gateway/API.md says the same
//! in prose.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Prism gateway",
        description = "Uploads with live results, results read back, the admin statistics, batch jobs, and /predict (object detection through the Prism pipeline). See services/gateway/API.md."
    ),
    paths(
        crate::uploads::upload,
        crate::uploads::events,
        crate::results::upload,
        crate::results::content,
        crate::results::object,
        crate::predict::predict,
        crate::admin::stats,
        crate::jobs::submit,
        crate::jobs::list,
        crate::jobs::status,
        crate::jobs::cancel,
    ),
    components(schemas(
        crate::uploads::Uploaded,
        crate::views::UploadView,
        crate::views::ContentView,
        crate::views::DeadLetterView,
        crate::views::ObjectRef,
        crate::predict::ByKey,
        crate::predict::Prediction,
        crate::predict::Pending,
        crate::error::ErrorBody,
    )),
    modifiers(&BearerToken)
)]
struct ApiDoc;

/// Declares the admin API's bearer token.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for path in [
            "/api/uploads",
            "/api/sessions/{session}/events",
            "/api/uploads/{bucket}/{key}",
            "/api/results/{content_hash}",
            "/api/objects/{bucket}/{key}",
            "/predict",
            "/api/admin/stats",
            "/api/jobs",
            "/api/jobs/{id}",
            "/api/jobs/{id}/cancel",
        ] {
            assert!(
                paths.contains_key(path),
                "{path} missing: {:?}",
                paths.keys()
            );
        }
        let predict = &paths["/predict"]["post"]["responses"];
        for status in ["200", "400", "404", "413", "422", "504"] {
            assert!(predict.get(status).is_some(), "/predict: no {status}");
        }
    }
}
