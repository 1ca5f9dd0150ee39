//! `/`: the dashboard, one self-contained page (no external resources, no
//! build step) whose script polls the JSON API every second.

use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::response::{Html, IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");

/// The page may talk to its own origin only; it loads nothing else. Only
/// the page's own script (marked with this nonce) runs: inline event
/// handlers are refused, so even a name that slipped past escaping into
/// markup could not run code. Scripts inserted by `innerHTML` never run
/// anyway, which is why a fixed nonce is enough here.
const POLICY: &str = "default-src 'none'; script-src 'nonce-ferry-dashboard'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page() -> Response {
    let mut resp = Html(PAGE).into_response();
    resp.headers_mut().insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
