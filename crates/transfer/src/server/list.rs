//! LIST: every stored file as `ENTRY` lines, then `END`.

use std::sync::Arc;

use ferry_core::Conn;

use super::TransferService;
use super::get::store_code;
use super::session::{Step, fail};
use super::state::Phase;
use crate::command::Reply;
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
