//! The OpenAPI 3 document, generated from the same Rust types the handlers use (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "TVM", description = "Run untrusted code in a fresh microVM per request."),
    paths(
        crate::server::execute,
        crate::server::execute_stream,
        crate::server::languages,
        crate::server::healthz,
        crate::server::readyz,
        crate::server::metrics,
        crate::piston::runtimes,
        crate::piston::execute,
        crate::api::sandboxes::create,
        crate::api::sandboxes::list,
        crate::api::sandboxes::info,
        crate::api::sandboxes::delete,
        crate::api::sandboxes::execute,
        crate::api::sandboxes::execute_stream,
        crate::api::sandboxes::read_file,
        crate::api::sandboxes::list_root,
        crate::api::sandboxes::write_file,
        crate::api::executions::submit,
        crate::api::executions::submit_batch,
        crate::api::executions::result,
        crate::api::executions::cancel,
        crate::api::executions::list,
    ),
    components(schemas(tvm_api::StreamExit)),
    modifiers(&BearerAuth),
    tags(
        (name = "execution", description = "TVM's own API"),
        (name = "executions", description = "Async executions: submit now, read the result later (held in memory for a TTL)"),
        (name = "sandboxes", description = "Multi-step sessions: one microVM kept per sandbox, in memory only"),
        (name = "piston", description = "Piston v2 compatible API"),
        (name = "probes", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// `GET /openapi.json`
pub async fn serve() -> Json<serde_json::Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_openapi_3_and_lists_every_route() {
        let doc = super::document();
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        let text = serde_json::to_string(&doc).unwrap();
        // A full OpenAPI 3.1 parser accepts it.
        let parsed = oas3::from_json(&text).expect("valid OpenAPI 3.1");
        let paths = parsed.paths.expect("paths");
        for p in [
            "/v1/execute",
            "/v1/execute/stream",
            "/v1/languages",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v2/runtimes",
            "/api/v2/execute",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["ExecuteRequest"]["additionalProperties"],
            false
        );
    }
}
