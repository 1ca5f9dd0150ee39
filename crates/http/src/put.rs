//! `PUT /files/<path>`: an atomic whole-file upload.
//!
//! The body goes to a staging file in the store's uploads directory, which
//! [`ferry_files::FileStore::commit`] fsyncs and renames over the name (and
//! fsyncs the directory): readers see the old file or the new one, never a
//! part. If the body ends early, is too large, or the client goes away, the
//! staging file is removed and the name is untouched.

use std::os::unix::fs::FileExt;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferry_files::StoreError;
use http_body_util::BodyExt;

use crate::blocking::run_blocking;
use crate::conditional::etag_header;
use crate::error::HttpError;
use crate::path::name_from_path;
use crate::state::HttpState;
use crate::temp_upload::TempUpload;
use crate::transfers::TransferKind;

/// Body bytes gathered before one positional write on the blocking pool.
const WRITE_BATCH: usize = 1 << 20;

pub async fn put_file(
    State(state): State<HttpState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let name = name_from_path(uri.path())?;
    if headers.contains_key(CONTENT_RANGE) {
        return Err(HttpError::BadRequest("partial PUT (Content-Range) is not supported; send the whole file".into()));
    }
    let limit = state.limits().max_upload_bytes;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(HttpError::TooLarge { limit });
    }

    // Refuse a bad target before reading a byte of the body.
    let store = state.store().clone();
    let probe = name.clone();
    let existed = match run_blocking(move || store.stat(&probe)).await? {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => return Err(HttpError::from_write(e)),
    };

    let store = state.store().clone();
    let mut temp = run_blocking(move || TempUpload::create(store.uploads_dir()))
        .await?
        .map_err(|e| HttpError::Internal(format!("create a staging file for {name}: {e}")))?;
    let transfer = state.metrics().transfers().begin(TransferKind::Upload, name.as_str(), declared);

    let mut body = body;
    let mut written = 0u64;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(HttpError::BadRequest(format!("upload of {name} cut short: {e}"))),
            None => break,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we keep
        };
        if written + (batched + data.len()) as u64 > limit {
            return Err(HttpError::TooLarge { limit });
        }
        transfer.add(data.len() as u64);
        batched += data.len();
        batch.push(data);
        if batched >= WRITE_BATCH {
            written += write_batch(&temp, std::mem::take(&mut batch), written).await?;
            batched = 0;
        }
    }
    written += write_batch(&temp, batch, written).await?;
    debug_assert_eq!(written, transfer.done());

    let store = state.store().clone();
    let (tmp_path, commit_name) = (temp.path().to_owned(), name.clone());
    let meta = run_blocking(move || store.commit(&tmp_path, &commit_name)).await?.map_err(HttpError::from_write)?;
    temp.committed();
    if let Some(cache) = state.cache() {
        cache.invalidate(name.as_str());
    }
    assert_eq!(meta.size, written, "committed file is not what was received");

    let status = if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED };
    let etag = HeaderValue::from_str(&etag_header(&meta.etag))
        .map_err(|e| HttpError::Internal(format!("etag of {name} is not a header value: {e}")))?;
    Ok((status, [(ETAG, etag)]).into_response())
}

/// Writes `batch` at `offset` on the blocking pool; returns the bytes written.
async fn write_batch(temp: &TempUpload, batch: Vec<Bytes>, offset: u64) -> Result<u64, HttpError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let file = temp.file().clone();
    let written = run_blocking(move || {
        let mut at = offset;
        for piece in &batch {
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        Ok::<u64, std::io::Error>(at - offset)
    })
    .await?;
    written.map_err(|e| match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => HttpError::NoSpace,
        _ => HttpError::Internal(format!("write an upload: {e}")),
    })
}
