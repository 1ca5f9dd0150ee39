//! The routes of the gateway.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::error::text;
use crate::state::HttpState;
use crate::{api, dashboard, get, put};

/// Every route, with responses counted by status class. `HEAD` is served
/// by the `GET` handlers (same headers, no body).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/api/files", get(api::files))
        .route("/api/status", get(api::status))
        .route("/api/cache", get(api::cache))
        // `/files/` alone reaches the handlers too, to be refused as an empty name.
        .route("/files/", get(get::get_file).put(put::put_file))
        .route("/files/{*path}", get(get::get_file).put(put::put_file))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_response))
        .with_state(state)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found")
}

async fn count_response(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics().record_response(resp.status());
    resp
}
