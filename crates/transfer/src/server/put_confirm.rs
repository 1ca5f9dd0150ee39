//! The end of a PUT with `backup.ack = "all"`: the file is stored, and
//! `STORED` waits until every backup node that was in sync holds it, or
//! until `backup.timeout_ms` has passed (then the nodes still missing are
//! marked behind and `STORED` goes anyway). The wait can pause and resume
//! in a new process like any other phase; its deadline is wall-clock time.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::registry::now_unix_ms;
use ferry_core::{Conn, SessionCtx};
use tokio::time::Instant;

use super::TransferService;
use super::session::{Step, announce_resume, park_transfer};
use super::state::{ConfirmState, Phase};
use crate::backup::node_id::NodeId;
use crate::frame::Frame;
use crate::wire::queue_frame;

pub(super) async fn run(
    svc: &Arc<TransferService>,
    conn: &mut Conn,
    ctx: &mut SessionCtx,
    mut st: ConfirmState,
    resumed: bool,
) -> Step {
    if resumed {
        announce_resume(conn);
    }
    let backups = svc.backups.clone();
    let mut progress = backups.subscribe();
    let left = Duration::from_millis(st.deadline_unix_ms.saturating_sub(now_unix_ms()));
    let deadline = Instant::now() + left;
    loop {
        if let Some(reason) = ctx.pause.requested() {
            return park_transfer(conn, Phase::PutConfirm(st), reason);
        }
        progress.borrow_and_update();
        st.nodes.retain(|id| NodeId::parse(id).is_some_and(|id| backups.waits_for(&id, &st.name, &st.blake3)));
        if st.nodes.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let late: Vec<NodeId> = st.nodes.iter().filter_map(|id| NodeId::parse(id)).collect();
            tracing::warn!(name = %st.name, nodes = late.len(), "backup nodes did not confirm in time");
            backups.mark_behind(&late);
            break;
        }
        tokio::select! {
            biased;
            _ = ctx.pause.wait() => {}
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            // The client sends nothing until STORED; this only notices it
            // going away (what it may send is read once the PUT is over).
            event = conn.pump(false), if conn.has_output() => {
                if let Err(e) = event {
                    tracing::debug!("PUT {}: connection failed while waiting for backups: {e}", st.name);
                    return Step::Close;
                }
            }
        }
    }
    queue_frame(conn, &Frame::Info(st.stored));
    Step::Next(Phase::Idle, None)
}
