//! LIST: every stored file as `ENTRY` lines, then `END`; LIST CACHE: the
//! file cache's entries as `CACHED` lines (next victim first), then
//! `CACHEEND` with the totals.

use std::sync::Arc;

use ferry_core::Conn;

use super::TransferService;
use super::get::store_code;
use super::session::{Step, fail};
use super::state::Phase;
use crate::command::{CacheTotals, Reply};
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::queue_frame;

pub(super) async fn run(svc: &Arc<TransferService>, conn: &mut Conn) -> Step {
    let (store, limit) = (svc.store.clone(), svc.config.max_list_entries);
    let entries = match tokio::task::spawn_blocking(move || store.list(limit)).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return fail(conn, store_code(&e), &e.to_string()),
        Err(e) => return fail(conn, ErrorCode::Internal, &format!("list task failed: {e}")),
    };
    let count = entries.len() as u64;
    for e in entries {
        let entry =
            Reply::Entry { name: e.name, size: e.size, modified_unix_ms: e.modified_unix_ms, etag: e.etag.to_string() };
        queue_frame(conn, &Frame::Info(entry.to_string()));
    }
    queue_frame(conn, &Frame::Info(Reply::End { count }.to_string()));
    Step::Next(Phase::Idle, None)
}

pub(super) fn run_cache(svc: &Arc<TransferService>, conn: &mut Conn) -> Step {
    let Some(cache) = svc.cache() else {
        return fail(conn, ErrorCode::NotFound, "this server runs no file cache");
    };
    let snap = cache.snapshot();
    let count = snap.entries.len() as u64;
    for e in snap.entries {
        let line = Reply::Cached { name: e.name, size: e.size, hits: e.hits, age_ms: e.age_ms };
        queue_frame(conn, &Frame::Info(line.to_string()));
    }
    let totals = CacheTotals {
        count,
        policy: snap.policy,
        bytes_held: snap.bytes_held,
        max_bytes: snap.max_bytes,
        hits: snap.hits,
        misses: snap.misses,
        hit_bytes: snap.hit_bytes,
        miss_bytes: snap.miss_bytes,
        evictions: snap.evictions,
    };
    queue_frame(conn, &Frame::Info(Reply::CacheEnd(totals).to_string()));
    Step::Next(Phase::Idle, None)
}
