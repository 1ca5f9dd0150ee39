//! `GET` and `HEAD /files/<path>`: one file, whole or a single range, with
//! its validators; 304 when the client's copy is current.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    LAST_MODIFIED, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferry_files::{FileCache, FileMeta, FileStore, SafeName};
use http_body_util::Full;

use crate::blocking::run_blocking;
use crate::conditional::{self, Verdict};
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
    let headers = Arc::new(headers);
    let head = method == Method::HEAD;
    let whole_max = state.limits().whole_file_max_bytes.min(MAX_WHOLE_FILE_BYTES);
    for _ in 0..MAX_ATTEMPTS {
        let (store, n, h, cache) = (state.store().clone(), name.clone(), headers.clone(), state.cache().cloned());
        let looked = run_blocking(move || look(&store, cache.as_deref(), &n, &h, head, whole_max)).await??;
        let (meta, answer) = match looked {
            Look::Changed => continue,
            Look::Load(meta, status, start, end) => {
                let Some(cache) = state.cache() else { continue };
                let (store, n, m) = (state.store().clone(), name.clone(), meta.clone());
                let load = move || async move {
                    run_blocking(move || load_whole(&store, &n, &m))
                        .await
                        .map_err(|e| io::Error::other(e.to_string()))?
                };
                let read = match cache.get_or_load(name.as_str(), &meta.etag, meta.size, load).await {
                    Ok(read) => read,
                    Err(e) if is_file_changed(&e) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HttpError::NotFound(name.to_string())),
                    Err(e) => return Err(HttpError::Internal(format!("read {name}: {e}"))),
                };
                state.metrics().record_cache_read(read.hit);
                let content = Content::Whole(slice(&name, &read.bytes, start, end)?);
                (meta, Answer { status, start, end, content })
            }
            Look::NotModified(meta) => return Ok(not_modified(&meta)),
            Look::Unsatisfiable(meta) => return Ok(unsatisfiable(&meta)),
            Look::Send(meta, answer) => (meta, answer),
        };
        let Answer { status, start, end, content } = answer;
        let file_head = file_headers(&name, &meta, status, start, end);
        let transfers = state.metrics().transfers();
        let body = match content {
            Content::Nothing => Body::empty(),
            Content::Whole(bytes) => {
                let guard = transfers.begin(TransferKind::Download, name.as_str(), Some(end - start));
                Body::new(TrackedBody::new(Full::new(bytes), guard))
            }
            Content::Stream(file) => {
                let guard = transfers.begin(TransferKind::Download, name.as_str(), Some(end - start));
                Body::new(TrackedBody::new(FileStream::new(file, meta.etag.clone(), start, end), guard))
            }
        };
        return Ok((status, file_head, body).into_response());
    }
    Err(HttpError::Unavailable(format!("{name} keeps changing while being read; try again")))
}

/// What one look at the disk found.
enum Look {
    NotModified(FileMeta),
    Unsatisfiable(FileMeta),
    Send(FileMeta, Answer),
    /// The file changed between its stat and its read: look again.
    Changed,
    /// A file the cache admits: bytes `start..end` from it (loaded on a miss).
    Load(FileMeta, StatusCode, u64, u64),
}

/// A 200 or 206: bytes `start..end` of the file.
struct Answer {
    status: StatusCode,
    start: u64,
    end: u64,
    content: Content,
}

enum Content {
    /// HEAD.
    Nothing,
    /// Exactly bytes `start..end`, sliced from a whole-file read.
    Whole(Bytes),
    /// The file, opened as the version stat saw, to stream from.
    Stream(File),
}

/// Everything a GET or HEAD needs from the disk, in one blocking call: the
/// stat, the conditional headers, and the read (whole) or open (streamed).
fn look(
    store: &FileStore,
    cache: Option<&FileCache>,
    name: &SafeName,
    headers: &HeaderMap,
    head: bool,
    whole_max: u64,
) -> Result<Look, HttpError> {
    let meta = store.stat(name).map_err(HttpError::from_read)?;
    let (status, start, end) = match conditional::evaluate(headers, &meta, SystemTime::now()) {
        Verdict::NotModified => return Ok(Look::NotModified(meta)),
        Verdict::Send(RangeRequest::Unsatisfiable) => return Ok(Look::Unsatisfiable(meta)),
        Verdict::Send(RangeRequest::Whole) => (StatusCode::OK, 0, meta.size),
        Verdict::Send(RangeRequest::Partial { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
    };
    let content = if head {
        Content::Nothing
    } else if cache.is_some_and(|c| c.admits(meta.size)) {
        // Hit or miss, the cache answers (and counts) it in one call.
        return Ok(Look::Load(meta, status, start, end));
    } else if meta.size <= whole_max {
        let bytes = match load_whole(store, name, &meta) {
            Ok(bytes) => bytes,
            Err(e) if is_file_changed(&e) => return Ok(Look::Changed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HttpError::NotFound(name.to_string())),
            Err(e) => return Err(HttpError::Internal(format!("read {name}: {e}"))),
        };
        Content::Whole(slice(name, &bytes, start, end)?)
    } else {
        let (file, opened) = store.open_file(name).map_err(HttpError::from_read)?;
        if opened.etag != meta.etag {
            return Ok(Look::Changed);
        }
        Content::Stream(file)
    };
    Ok(Look::Send(meta, Answer { status, start, end, content }))
}

/// Bytes `start..end` of a whole-file read, without a copy.
fn slice(name: &SafeName, bytes: &Bytes, start: u64, end: u64) -> Result<Bytes, HttpError> {
    // The file fits memory, so both ends fit a usize.
    let (Ok(s), Ok(e)) = (usize::try_from(start), usize::try_from(end)) else {
        return Err(HttpError::Internal(format!("range {start}..{end} of {name} does not fit memory")));
    };
    if s > e || e > bytes.len() {
        return Err(HttpError::Internal(format!("range {s}..{e} outside the {} bytes read of {name}", bytes.len())));
    }
    Ok(bytes.slice(s..e))
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
