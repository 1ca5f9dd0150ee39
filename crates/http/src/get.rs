//! `GET` and `HEAD /files/<path>`: one file, whole or a single range, with
//! its validators; 304 when the client's copy is current.
//!
//! A name checked a moment ago ([`crate::resolved_names`]) is answered on
//! the async thread when nothing has to be read from the disk: a cache hit,
//! a 304, a HEAD. Everything else takes one blocking call (the checked stat,
//! then the read or the open).

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use ferry_files::{FileCache, FileMeta, Loaded, SafeName};
use http_body_util::Full;

use crate::blocking::run_blocking;
use crate::conditional::{self, Verdict};
use crate::error::HttpError;
use crate::file_body::{MAX_WHOLE_FILE_BYTES, is_file_changed, load_whole, load_whole_keeping, whole_buffer};
use crate::file_head::{FileHead, content_guards, header_value, validators};
use crate::file_stream::FileStream;
use crate::fresh_stat::{self, Arrival};
use crate::path::name_from_path;
use crate::range::RangeRequest;
use crate::send_file::SENDFILE_FROM_BYTES;
use crate::state::HttpState;
use crate::tracked_body::TrackedBody;
use crate::transfers::TransferKind;

/// Looks at a file this many times while it keeps changing under the
/// request before giving up with 503.
const MAX_ATTEMPTS: usize = 3;

/// Downloads listed as transfers (dashboard, `/api/status`) from this size
/// up. A smaller answer leaves in a write or two; listing it would cost more
/// than sending it, and a page that polls once a second would never see it.
pub const LISTED_DOWNLOAD_BYTES: u64 = 1 << 20;

/// Headers on a file answer (hyper adds `date`).
const ANSWER_HEADERS: usize = 10;

pub async fn get_file(
    State(state): State<HttpState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    // The head has been read: a look at the file from here on is fresh enough.
    let arrival = fresh_stat::arrive();
    let name = name_from_path(uri.path())?;
    let head = method == Method::HEAD;
    let whole_max = state.limits().whole_file_max_bytes.min(MAX_WHOLE_FILE_BYTES);
    // A name checked a moment ago is looked at on this thread; a file that
    // changed since, or an answer that needs the disk, goes on to the
    // blocking pool.
    let mut looked = look_recent(&state, &name, &headers, head, arrival).await;
    // Shared with the blocking pool only if a look there is needed.
    let mut shared: Option<Arc<HeaderMap>> = None;
    for _ in 0..MAX_ATTEMPTS {
        let found = match looked.take() {
            Some(found) => found,
            None => {
                let h = shared.get_or_insert_with(|| Arc::new(headers.clone())).clone();
                let (s, n) = (state.clone(), name.clone());
                run_blocking(move || look(&s, &n, &h, head, whole_max)).await??
            }
        };
        let (seen, answer) = match found {
            Look::Changed => continue,
            Look::Load(seen, status, start, end) => {
                let Some(cache) = state.cache() else { continue };
                // Called on a miss only: a hit copies nothing.
                let load = || load_for_cache(&state, &name, &seen.meta);
                let read = match cache.get_or_load(name.as_str(), &seen.meta.etag, seen.meta.size, load).await {
                    Ok(read) => read,
                    Err(e) if is_file_changed(&e) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HttpError::NotFound(name.to_string())),
                    Err(e) => return Err(HttpError::Internal(format!("read {name}: {e}"))),
                };
                state.metrics().record_cache_read(read.hit);
                let content = Content::Whole(slice(&name, &read.bytes, start, end)?);
                (seen, Answer { status, start, end, content })
            }
            Look::NotModified(seen) => return Ok(not_modified(&seen.head)),
            Look::Unsatisfiable(seen) => return Ok(unsatisfiable(&seen)),
            Look::Send(seen, answer) => (seen, answer),
        };
        let Answer { status, start, end, content } = answer;
        let len = end - start;
        let listed = len >= LISTED_DOWNLOAD_BYTES;
        let body = match content {
            Content::Nothing => Body::empty(),
            Content::Whole(bytes) if !listed => Body::new(Full::new(bytes)),
            Content::Whole(bytes) => {
                let guard = state.metrics().transfers().begin(TransferKind::Download, name.as_str(), Some(len));
                Body::new(TrackedBody::new(Full::new(bytes), guard))
            }
            Content::Stream(file) => {
                let stream = FileStream::new(file, seen.meta.etag.clone(), start, end, state.pieces().clone());
                let guard = state.metrics().transfers().begin(TransferKind::Download, name.as_str(), Some(len));
                Body::new(TrackedBody::new(stream, guard))
            }
        };
        return Ok(file_response(&seen, status, start, end, body));
    }
    Err(HttpError::Unavailable(format!("{name} keeps changing while being read; try again")))
}

/// One version of the file as this request saw it.
struct Seen {
    meta: FileMeta,
    head: Arc<FileHead>,
}

/// What one look at the disk found.
enum Look {
    NotModified(Seen),
    Unsatisfiable(Seen),
    Send(Seen, Answer),
    /// The file changed between its stat and its read: look again.
    Changed,
    /// A file the cache admits: bytes `start..end` from it (loaded on a miss).
    Load(Seen, StatusCode, u64, u64),
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

/// What the validators, the method and the cache decide before any byte is
/// read.
enum Plan {
    /// Nothing more to do on this thread: the answer needs no bytes, or the
    /// cache supplies them.
    Answer(Look),
    /// Bytes `start..end` to read whole or stream from the disk.
    Read(Seen, StatusCode, u64, u64),
}

fn plan(cache: Option<&FileCache>, headers: &HeaderMap, head: bool, seen: Seen) -> Plan {
    let (status, start, end) = match conditional::evaluate(headers, &seen.meta, SystemTime::now()) {
        Verdict::NotModified => return Plan::Answer(Look::NotModified(seen)),
        Verdict::Send(RangeRequest::Unsatisfiable) => return Plan::Answer(Look::Unsatisfiable(seen)),
        Verdict::Send(RangeRequest::Whole) => (StatusCode::OK, 0, seen.meta.size),
        Verdict::Send(RangeRequest::Partial { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
    };
    if head {
        Plan::Answer(Look::Send(seen, Answer { status, start, end, content: Content::Nothing }))
    } else if cache.is_some_and(|c| c.admits(seen.meta.size)) {
        // Hit or miss, the cache answers (and counts) it in one call.
        Plan::Answer(Look::Load(seen, status, start, end))
    } else {
        Plan::Read(seen, status, start, end)
    }
}

/// The look without the blocking pool, for a name that passed the store's
/// check less than [`crate::resolved_names::TRUST_FOR`] ago: a stat on this
/// thread taken after the request arrived (shared with the requests that
/// arrived with it: [`fresh_stat`]), trusted only if the file is still the
/// version checked then. `None` sends the request to [`look`].
async fn look_recent(
    state: &HttpState,
    name: &SafeName,
    headers: &HeaderMap,
    head: bool,
    arrival: Arrival,
) -> Option<Look> {
    let checked = state.resolved().recent(name, Instant::now())?;
    let meta = fresh_stat::stat_since(arrival, state.store(), name, &checked.etag).await?;
    match plan(state.cache().map(Arc::as_ref), headers, head, Seen { meta, head: checked }) {
        Plan::Answer(found) => Some(found),
        Plan::Read(..) => None,
    }
}

/// Everything a GET or HEAD needs from the disk, in one blocking call: the
/// checked stat, the conditional headers, and the read (whole) or open
/// (streamed).
fn look(
    state: &HttpState,
    name: &SafeName,
    headers: &HeaderMap,
    head: bool,
    whole_max: u64,
) -> Result<Look, HttpError> {
    let store = state.store();
    let seen = check(state, name)?;
    let (seen, status, start, end) = match plan(state.cache().map(Arc::as_ref), headers, head, seen) {
        Plan::Answer(found) => return Ok(found),
        Plan::Read(seen, status, start, end) => (seen, status, start, end),
    };
    let content = if seen.meta.size <= whole_max {
        let bytes = match load_whole(store, name, &seen.meta) {
            Ok(bytes) => bytes,
            Err(e) if is_file_changed(&e) => return Ok(Look::Changed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HttpError::NotFound(name.to_string())),
            Err(e) => return Err(HttpError::Internal(format!("read {name}: {e}"))),
        };
        Content::Whole(slice(name, &bytes, start, end)?)
    } else {
        let (file, opened) = store.open_file(name).map_err(HttpError::from_read)?;
        if opened.etag != seen.meta.etag {
            return Ok(Look::Changed);
        }
        Content::Stream(file)
    };
    Ok(Look::Send(seen, Answer { status, start, end, content }))
}

/// The store's checked `stat` (the name resolved inside the root), recorded
/// so the next requests for the name may look on the async thread.
fn check(state: &HttpState, name: &SafeName) -> Result<Seen, HttpError> {
    let meta = state.store().stat(name).map_err(HttpError::from_read)?;
    let version = Arc::new(FileHead::new(name, &meta));
    state.resolved().record(name, &version, Instant::now());
    Ok(Seen { meta, head: version })
}

/// The answer [`get_file`] gives a plain request — `GET` or `HEAD` of
/// `path`, no conditional or range header — when that answer is a 200 for
/// the whole file from memory (the cache) or a HEAD's, not empty and below
/// the size listed as a transfer: what [`crate::plain_lane`] writes without hyper.
///
/// `None` when [`get_file`] must answer it (a bad name, a missing or
/// changing file, one the cache does not hold, an error); nothing has been
/// counted then, except by the cache itself in the rare case that a load
/// failed. The same looks as [`get_file`]'s: a `stat` taken after the
/// request arrived, the store's check at least once a
/// [`crate::resolved_names::TRUST_FOR`].
pub async fn plain_whole(state: &HttpState, path: &str, head: bool) -> Option<WholeAnswer> {
    let arrival = fresh_stat::arrive();
    let name = name_from_path(path).ok()?;
    let recent = match state.resolved().recent(&name, Instant::now()) {
        Some(checked) => fresh_stat::stat_since(arrival, state.store(), &name, &checked.etag)
            .await
            .map(|meta| Seen { meta, head: checked }),
        None => None,
    };
    let seen = match recent {
        Some(seen) => seen,
        None => {
            let (s, n) = (state.clone(), name.clone());
            run_blocking(move || check(&s, &n)).await.ok()?.ok()?
        }
    };
    // An empty body makes hyper move `content-length` to the end of the
    // head; such answers are left to it.
    if seen.meta.size == 0 || seen.meta.size >= LISTED_DOWNLOAD_BYTES {
        return None;
    }
    if head {
        return Some(WholeAnswer { head: seen.head, body: None, file: None });
    }
    let cache = state.cache()?;
    if !cache.admits(seen.meta.size) {
        return None;
    }
    let load = || load_for_cache(state, &name, &seen.meta);
    let read = cache.get_or_load(name.as_str(), &seen.meta.etag, seen.meta.size, load).await.ok()?;
    // The cache keys entries by version (the etag holds the size): a
    // mismatch would be a bug, which get_file then reports.
    if read.bytes.len() as u64 != seen.meta.size {
        return None;
    }
    state.metrics().record_cache_read(read.hit);
    Some(WholeAnswer { head: seen.head, body: Some(read.bytes), file: read.file })
}

/// A 200 for the whole file: its header block and, unless for a HEAD, its bytes.
pub struct WholeAnswer {
    pub head: Arc<FileHead>,
    pub body: Option<Bytes>,
    /// The open file `body` was read from, which the cache entry keeps for
    /// bodies of [`SENDFILE_FROM_BYTES`] or more: the same version (checked
    /// by the cache's etag against this request's look), to be sent by
    /// `sendfile` ([`crate::send_file`] says what that guarantees).
    pub file: Option<Arc<File>>,
}

/// Reads the whole of `name`, as `meta` saw it, for the cache; called on a miss
/// only (a hit copies nothing). The buffer is made here, on the worker that
/// will free it, and filled on the blocking pool ([`whole_buffer`] says why).
/// A file of [`SENDFILE_FROM_BYTES`] or more, but under the size listed as a
/// transfer (which the plain lane leaves to hyper), stays open with its
/// entry, for the plain lane to `sendfile` from.
fn load_for_cache(
    state: &HttpState,
    name: &SafeName,
    meta: &FileMeta,
) -> impl Future<Output = io::Result<Loaded>> + use<> {
    let (store, n, m) = (state.store().clone(), name.clone(), meta.clone());
    let buf = whole_buffer(m.size);
    let keep = (SENDFILE_FROM_BYTES..LISTED_DOWNLOAD_BYTES).contains(&m.size);
    async move {
        let (bytes, file) = run_blocking(move || load_whole_keeping(&store, &n, &m, buf))
            .await
            .map_err(|e| io::Error::other(e.to_string()))??;
        Ok(Loaded { bytes, file: keep.then_some(file) })
    }
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

/// An answer about the file with the headers every such answer carries,
/// built in place (no intermediate header map).
fn with_validators(status: StatusCode, head: &FileHead, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    // Room for every header a file answer has, in one allocation.
    h.reserve(ANSWER_HEADERS);
    validators(h, &head.etag_value, &head.last_modified);
    resp
}

/// A 200 or 206 (or the HEAD of one): bytes `start..end` of the file.
fn file_response(seen: &Seen, status: StatusCode, start: u64, end: u64, body: Body) -> Response {
    let whole = start == 0 && end == seen.meta.size;
    if status == StatusCode::OK && whole {
        // The header block made once for this version.
        let mut resp = Response::new(body);
        *resp.headers_mut() = seen.head.whole.clone();
        return resp;
    }
    let mut resp = with_validators(status, &seen.head, body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, seen.head.content_type.clone());
    h.insert(CONTENT_LENGTH, if whole { seen.head.length.clone() } else { HeaderValue::from(end - start) });
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(CONTENT_RANGE, header_value(&format!("bytes {start}-{}/{}", end - 1, seen.meta.size)));
    }
    content_guards(h);
    resp
}

fn not_modified(head: &FileHead) -> Response {
    with_validators(StatusCode::NOT_MODIFIED, head, Body::empty())
}

fn unsatisfiable(seen: &Seen) -> Response {
    let size = seen.meta.size;
    let body = Body::from(format!("range not satisfiable: the file is {size} bytes\n"));
    let mut resp = with_validators(StatusCode::RANGE_NOT_SATISFIABLE, &seen.head, body);
    let h = resp.headers_mut();
    h.insert(CONTENT_RANGE, header_value(&format!("bytes */{size}")));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_files::DEFAULT_MAX_NAME_BYTES;
    use std::os::unix::fs::symlink;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, DEFAULT_MAX_NAME_BYTES).unwrap()
    }

    fn state(dir: &tempfile::TempDir) -> HttpState {
        crate::test_state::cached_state(dir)
    }

    /// [`look_recent`] for a request arriving now.
    fn recent(state: &HttpState, name: &SafeName, headers: &HeaderMap, head: bool) -> Option<Look> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(look_recent(state, name, headers, head, fresh_stat::arrive()))
    }

    fn checked(state: &HttpState, name: &str, head: bool) -> Look {
        look(state, &n(name), &HeaderMap::new(), head, MAX_WHOLE_FILE_BYTES).unwrap()
    }

    fn etag_of(found: &Look) -> String {
        match found {
            Look::Load(seen, ..) | Look::Send(seen, _) | Look::NotModified(seen) | Look::Unsatisfiable(seen) => {
                seen.meta.etag.to_string()
            }
            Look::Changed => panic!("changed"),
        }
    }

    #[test]
    fn a_recent_name_is_looked_at_on_this_thread_only_while_it_is_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        let root = s.store().root().to_path_buf();
        std::fs::write(root.join("a"), b"one").unwrap();
        let h = HeaderMap::new();
        assert!(recent(&s, &n("a"), &h, false).is_none(), "never checked");
        let first = checked(&s, "a", false);
        assert!(matches!(first, Look::Load(..)), "a small file goes through the cache");
        let again = recent(&s, &n("a"), &h, false).expect("checked a moment ago");
        assert!(matches!(again, Look::Load(..)));
        assert_eq!(etag_of(&again), etag_of(&first));

        // Replaced (new inode): the quick look declines, the checked one sees it.
        std::fs::write(root.join("a.new"), b"two").unwrap();
        std::fs::rename(root.join("a.new"), root.join("a")).unwrap();
        assert!(recent(&s, &n("a"), &h, false).is_none());
        let second = checked(&s, "a", false);
        assert_ne!(etag_of(&second), etag_of(&first));
        assert_eq!(etag_of(&recent(&s, &n("a"), &h, false).unwrap()), etag_of(&second));

        // Removed: declined, and the checked look says 404.
        std::fs::remove_file(root.join("a")).unwrap();
        assert!(recent(&s, &n("a"), &h, false).is_none());
        assert!(matches!(look(&s, &n("a"), &h, false, MAX_WHOLE_FILE_BYTES), Err(HttpError::NotFound(_))));
    }

    #[test]
    fn only_answers_that_need_no_disk_read_stay_on_this_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        let root = s.store().root().to_path_buf();
        std::fs::write(root.join("big"), vec![7u8; 100 << 10]).unwrap();
        let h = HeaderMap::new();
        assert!(matches!(checked(&s, "big", false), Look::Send(_, Answer { content: Content::Whole(_), .. })));
        // Over the cache's item bound: the bytes come from the disk.
        assert!(recent(&s, &n("big"), &h, false).is_none());
        // A HEAD, or a 304, needs no bytes.
        let head = recent(&s, &n("big"), &h, true).unwrap();
        assert!(matches!(head, Look::Send(_, Answer { content: Content::Nothing, .. })));
        let mut inm = HeaderMap::new();
        inm.insert(
            axum::http::header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"{}\"", etag_of(&head))).unwrap(),
        );
        assert!(matches!(recent(&s, &n("big"), &inm, false), Some(Look::NotModified(_))));
    }

    #[test]
    fn a_symlink_repointed_out_of_the_root_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(&dir);
        let root = s.store().root().to_path_buf();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"SECRET").unwrap();
        std::fs::write(root.join("inside"), b"fine").unwrap();
        symlink(root.join("inside"), root.join("link")).unwrap();
        let h = HeaderMap::new();
        checked(&s, "link", false);
        assert!(recent(&s, &n("link"), &h, false).is_some());
        std::fs::remove_file(root.join("link")).unwrap();
        symlink(outside.path().join("secret"), root.join("link")).unwrap();
        assert!(recent(&s, &n("link"), &h, false).is_none(), "another file: declined");
        assert!(matches!(look(&s, &n("link"), &h, false, MAX_WHOLE_FILE_BYTES), Err(HttpError::NotFound(_))));
    }
}
