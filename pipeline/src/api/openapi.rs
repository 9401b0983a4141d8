//! `GET /openapi.json` (OpenAPI 3, written by hand beside the routes it describes) and
//! `GET /docs` (a page that renders it and sends requests with a key kept in the browser).
//! Both are compiled into the binary: no CDN, no build step.

use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse};
use serde_json::Value;

const DOCUMENT: &str = include_str!("assets/openapi.json");
const DOCS: &str = include_str!("assets/docs.html");

/// The document with this build's version.
pub fn document_value() -> Value {
    let mut document: Value = serde_json::from_str(DOCUMENT).unwrap_or(Value::Null);
    if let Some(info) = document.get_mut("info").and_then(Value::as_object_mut) {
        info.insert("version".into(), Value::from(env!("CARGO_PKG_VERSION")));
    }
    document
}

pub async fn document() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/json")],
        document_value().to_string(),
    )
}

pub async fn docs() -> Html<&'static str> {
    Html(DOCS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_and_carries_the_version() {
        let document = super::document_value();
        assert_eq!(document["openapi"], "3.0.3");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(document["paths"].as_object().is_some_and(|p| p.len() > 10));
    }
}
