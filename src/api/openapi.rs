//! `GET /openapi.json`: the OpenAPI 3.1 document of the public routes,
//! `docs/openapi.json`, embedded in the binary and served as it is in the
//! repository.
//!
//! The document is written by hand, not generated: what keeps it true is
//! `tests/openapi.rs`, which checks that it names exactly the operations of
//! [`ENDPOINTS`](super::types::ENDPOINTS) (the ones the router serves) with
//! the scopes the token check asks for, and runs each of its examples
//! against real nodes. It is open to all, like `/livez`: it says nothing
//! about a node that the source does not. The internal routes under
//! `/_internal/` are not in it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as in `docs/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub(super) async fn document() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::ENDPOINTS;

    /// The quick half of `tests/openapi.rs`: the document parses and names
    /// the same operations as the table.
    #[test]
    fn the_document_names_every_endpoint_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json parses");
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .filter(|k| *k != "parameters" && *k != "summary" && *k != "description")
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let mut listed: Vec<(String, String)> = ENDPOINTS
            .iter()
            .map(|e| (e.method.to_string(), e.template.to_string()))
            .collect();
        documented.sort();
        listed.sort();
        assert_eq!(documented, listed);
    }
}
