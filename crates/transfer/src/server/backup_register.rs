//! `BACKUP node=ID files=N`: a backup node announces itself, then sends its
//! inventory, one `HAVE` line per file it holds. Once all `N` are in, the
//! connection becomes the node's feed ([`super::backup_feed`]).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Conn, SessionCtx};
use ferry_files::SafeName;
use tokio::time::Instant;

use super::TransferService;
use super::session::{Step, announce_resume, fail, frame_error, park_transfer, wait_for_input};
use super::state::{FeedState, Phase, RegisterState};
use crate::backup::line::NodeLine;
use crate::backup::node_id::NodeId;
use crate::command::MAX_COMMAND_BYTES;
use crate::error_code::ErrorCode;
use crate::frame::Frame;
use crate::wire::take_frame;

/// Checks `BACKUP` and starts receiving the inventory.
pub(super) fn start(svc: &Arc<TransferService>, conn: &mut Conn, node: String, files: u64) -> Step {
    let max_backups = svc.backups.config().max_backups;
    if max_backups == 0 {
        return fail(conn, ErrorCode::Busy, "this server takes no backup nodes (backup.max_backups = 0)");
    }
    if NodeId::parse(&node).is_none() {
        return fail(conn, ErrorCode::BadCommand, &format!("invalid node id {node:?} (32 hex digits)"));
    }
    let max = svc.backups.max_files();
    if files > max as u64 {
        return fail(conn, ErrorCode::TooLarge, &format!("an inventory of {files} files is over the limit of {max}"));
    }
    let state = RegisterState { node, expected: files, held: Default::default() };
    Step::Next(Phase::BackupRegister(state), None)
}

/// Receives `HAVE` lines until the inventory is complete.
pub(super) async fn run(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    mut st: RegisterState,
    resumed: bool,
) -> Step {
    if resumed {
        announce_resume(conn);
    }
    let max_frame = svc.config.max_frame_bytes;
    let idle_for = Duration::from_secs(svc.config.idle_timeout_secs);
    let mut deadline = Instant::now() + idle_for;
    loop {
        if st.held.len() as u64 >= st.expected {
            let feed = FeedState {
                node: st.node,
                since_unix_ms: ferry_core::registry::now_unix_ms(),
                held: st.held,
                awaiting: Vec::new(),
                files_mirrored: 0,
                bytes_mirrored: 0,
            };
            return Step::Next(Phase::Backup(feed), None);
        }
        if let Some(reason) = ctx.pause.requested() {
            return park_transfer(conn, Phase::BackupRegister(st), reason);
        }
        match take_frame(conn, max_frame) {
            Ok(Some(Frame::Info(line))) => {
                if line.len() > MAX_COMMAND_BYTES {
                    return fail(conn, ErrorCode::BadCommand, &format!("line longer than {MAX_COMMAND_BYTES} bytes"));
                }
                match NodeLine::parse(&line) {
                    Ok(NodeLine::Have { name, held }) => {
                        let name = match SafeName::parse(&name, svc.config.max_name_bytes) {
                            Ok(name) => name,
                            Err(e) => return fail(conn, ErrorCode::BadName, &e.to_string()),
                        };
                        if st.held.insert(name.as_str().to_string(), held).is_some() {
                            return fail(conn, ErrorCode::BadCommand, &format!("HAVE {name} twice"));
                        }
                    }
                    Ok(_) => {
                        let msg = format!("expected {} more HAVE lines", st.expected - st.held.len() as u64);
                        return fail(conn, ErrorCode::BadCommand, &msg);
                    }
                    Err(e) => return fail(conn, ErrorCode::BadCommand, &e.0),
                }
                continue;
            }
            Ok(Some(Frame::Error(msg))) => {
                tracing::debug!("backup node sent ERROR: {msg}");
                return Step::Close;
            }
            Ok(Some(other)) => {
                let msg = format!("expected HAVE lines (INFO), got {:?} frame", other.frame_type());
                return fail(conn, ErrorCode::BadCommand, &msg);
            }
            Ok(None) => {}
            Err(e) => return frame_error(conn, e),
        }
        if let Err(step) = wait_for_input(conn, ctx, &mut deadline, idle_for, "inventory").await {
            return step;
        }
    }
}
