//! `GET /`: the live dashboard page, and `GET /assets/…`: the chart library it draws with
//! (uPlot, vendored under `assets/vendor`). Everything is compiled into the binary and served
//! offline: no CDN, no build step. The page's data comes through the API and the WebSocket,
//! with a key.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{Html, IntoResponse};

const PAGE: &str = include_str!("assets/dashboard.html");
const UPLOT_JS: &str = include_str!("assets/vendor/uplot.min.js");
const UPLOT_CSS: &str = include_str!("assets/vendor/uplot.min.css");

/// Assets never change within a build; the page names them with the version.
const ASSET_CACHE: &str = "public, max-age=86400";

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn uplot_js() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, ASSET_CACHE),
        ],
        UPLOT_JS,
    )
}

pub async fn uplot_css() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, ASSET_CACHE),
        ],
        UPLOT_CSS,
    )
}
