//! `GET` and `HEAD /files/<path>`: one file, whole or a single range, with
//! its validators; 304 when the client's copy is current.

use std::io;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    LAST_MODIFIED, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ferry_files::{FileMeta, SafeName};
use http_body_util::Full;

use crate::blocking::run_blocking;
use crate::conditional::{self, Answer};
use crate::error::HttpError;
use crate::file_body::{MAX_WHOLE_FILE_BYTES, is_file_changed, load_whole};
use crate::file_stream::FileStream;
use crate::path::name_from_path;
use crate::range::RangeRequest;
use crate::state::HttpState;
use crate::tracked_body::TrackedBody;
use crate::transfers::TransferKind;

/// Looks at a file this many times while it keeps changing under the
/// request before giving up with 503.
const MAX_ATTEMPTS: usize = 3;

pub async fn get_file(
    State(state): State<HttpState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let name = name_from_path(uri.path())?;
    for _ in 0..MAX_ATTEMPTS {
        let store = state.store().clone();
        let stat_name = name.clone();
        let meta = run_blocking(move || store.stat(&stat_name)).await?.map_err(HttpError::from_read)?;
        let (status, start, end) = match conditional::evaluate(&headers, &meta, SystemTime::now()) {
            Answer::NotModified => return Ok(not_modified(&meta)),
            Answer::Send(RangeRequest::Unsatisfiable) => return Ok(unsatisfiable(&meta)),
            Answer::Send(RangeRequest::Whole) => (StatusCode::OK, 0, meta.size),
            Answer::Send(RangeRequest::Partial { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        };
        let head = file_headers(&name, &meta, status, start, end);
        if method == Method::HEAD {
            return Ok((status, head, Body::empty()).into_response());
        }
        if let Some(body) = body(&state, &name, &meta, start, end).await? {
            return Ok((status, head, body).into_response());
        }
        // The file changed between the stat and the read: look again.
    }
    Err(HttpError::Unavailable(format!("{name} keeps changing while being read; try again")))
}

/// The body for bytes `start..end` of the version `meta`, or `None` if the
/// file is no longer that version.
async fn body(
    state: &HttpState,
    name: &SafeName,
    meta: &FileMeta,
    start: u64,
    end: u64,
) -> Result<Option<Body>, HttpError> {
    let transfers = state.metrics().transfers().clone();
    let store = state.store().clone();
    let (name, meta) = (name.clone(), meta.clone());
    if meta.size <= state.limits().whole_file_max_bytes.min(MAX_WHOLE_FILE_BYTES) {
        let (n, m) = (name.clone(), meta.clone());
        let bytes = match run_blocking(move || load_whole(&store, &n, &m)).await? {
            Ok(bytes) => bytes,
            Err(e) if is_file_changed(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HttpError::NotFound(name.to_string())),
            Err(e) => return Err(HttpError::Internal(format!("read {name}: {e}"))),
        };
        // `size <= MAX_WHOLE_FILE_BYTES`, so both ends fit a usize.
        let (s, e) = (usize::try_from(start), usize::try_from(end));
        let (Ok(s), Ok(e)) = (s, e) else {
            return Err(HttpError::Internal(format!("range {start}..{end} of {name} does not fit memory")));
        };
        assert!(s <= e && e <= bytes.len(), "range {s}..{e} outside the {} bytes read", bytes.len());
        let guard = transfers.begin(TransferKind::Download, name.as_str(), Some(end - start));
        return Ok(Some(Body::new(TrackedBody::new(Full::new(bytes.slice(s..e)), guard))));
    }
    let open_name = name.clone();
    let (file, opened) = run_blocking(move || store.open_file(&open_name)).await?.map_err(HttpError::from_read)?;
    if opened.etag != meta.etag {
        return Ok(None);
    }
    let guard = transfers.begin(TransferKind::Download, name.as_str(), Some(end - start));
    Ok(Some(Body::new(TrackedBody::new(FileStream::new(file, opened.etag, start, end), guard))))
}

/// Headers shared by every answer about a file.
fn validators(meta: &FileMeta) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(ETAG, header_value(&conditional::etag_header(&meta.etag)));
    h.insert(LAST_MODIFIED, header_value(&conditional::last_modified_header(meta)));
    // Revalidate every time: the etag makes that a cheap 304.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}

/// Our own values (quoted hex etags, HTTP dates, numbers, mime types) are
/// always valid header values; an empty one would only drop the header.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn file_headers(name: &SafeName, meta: &FileMeta, status: StatusCode, start: u64, end: u64) -> HeaderMap {
    let mut h = validators(meta);
    let mime = mime_guess::from_path(name.as_str()).first_or_octet_stream();
    h.insert(CONTENT_TYPE, header_value(mime.as_ref()));
    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(CONTENT_RANGE, header_value(&format!("bytes {start}-{}/{}", end - 1, meta.size)));
    }
    // Files are client-supplied: never let a browser sniff them into HTML,
    // and run any HTML served from here in an opaque origin, away from the
    // dashboard's.
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    h
}

fn not_modified(meta: &FileMeta) -> Response {
    (StatusCode::NOT_MODIFIED, validators(meta)).into_response()
}

fn unsatisfiable(meta: &FileMeta) -> Response {
    let mut h = validators(meta);
    h.insert(CONTENT_RANGE, header_value(&format!("bytes */{}", meta.size)));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    (StatusCode::RANGE_NOT_SATISFIABLE, h, format!("range not satisfiable: the file is {} bytes\n", meta.size))
        .into_response()
}
