//! Refuses a request whose `Content-Length` announces a body over the API's limit before any
//! of it is read: a client that sent `Expect: 100-continue` gets its 413 without sending the
//! body, and no handler starts on it. Bodies without a length are still capped as they are
//! read (axum's `DefaultBodyLimit`).

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::MAX_BODY_BYTES;

pub async fn refuse_announced_oversize(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > MAX_BODY_BYTES as u64 => {
            ApiError::payload_too_large().into_response()
        }
        _ => next.run(request).await,
    }
}
