//! The JSON API (`/api/files`, `/api/status`, `/api/cache`), `/metrics` and
//! `/healthz`: what the dashboard and monitoring read.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use ferry_files::StoreError;
use serde_json::{Value, json};

use crate::blocking::run_blocking;
use crate::error::HttpError;
use crate::prometheus;
use crate::state::HttpState;

/// Live figures must never come from a cache.
fn fresh(mut resp: Response) -> Response {
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub async fn healthz() -> Response {
    fresh(([(CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response())
}

/// `{"files": [{name, size, etag, modified_unix_ms}, ...], "count": n}`, sorted by name.
pub async fn files(State(state): State<HttpState>) -> Result<Response, HttpError> {
    let store = state.store().clone();
    let limit = state.limits().max_list_entries;
    let files = run_blocking(move || store.list(limit)).await?.map_err(|e| match e {
        StoreError::TooMany(_) => HttpError::Unavailable(e.to_string()),
        other => HttpError::from_read(other),
    })?;
    let count = files.len();
    Ok(fresh(Json(json!({ "files": files, "count": count })).into_response()))
}

/// The status source's value with the gateway's own metrics under `"http"`.
pub async fn status(State(state): State<HttpState>) -> Response {
    fresh(Json(status_value(&state)).into_response())
}

pub fn status_value(state: &HttpState) -> Value {
    let http = serde_json::to_value(state.metrics().snapshot()).unwrap_or(Value::Null);
    match state.status() {
        Value::Object(mut map) => {
            map.insert("http".into(), http);
            Value::Object(map)
        }
        Value::Null => json!({ "http": http }),
        other => json!({ "status": other, "http": http }),
    }
}

/// The `"cache"` member of the status source's value, or `{}` without a cache.
pub async fn cache(State(state): State<HttpState>) -> Response {
    let cache = match state.status() {
        Value::Object(mut map) => map.remove("cache").filter(Value::is_object),
        _ => None,
    };
    fresh(Json(cache.unwrap_or_else(|| json!({}))).into_response())
}

pub async fn metrics(State(state): State<HttpState>) -> Response {
    let text = prometheus::render(&state.metrics().snapshot(), &state.status());
    fresh(([(CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response())
}
