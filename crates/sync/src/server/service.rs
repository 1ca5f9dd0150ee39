//! The two sync services as the runtime sees them. Both share one [`SyncHub`]; the hub's part in a live
//! upgrade (saving and taking over the roster and queues) hangs on the update service alone, so it runs
//! once.

use std::sync::Arc;

use ferry_core::{Conn, Service, SessionCtx, SessionEnd};

use super::hub::SyncHub;
use super::state::{PushState, STATE_FORMAT, UpdateState};
use super::{close_conn, max_read_buffer, push_session, update_session};

/// The update connection's service (port 7071, `sync` in listen.json).
pub struct SyncUpdateService {
    hub: Arc<SyncHub>,
}

/// The push connection's service (port 7072, `sync_push` in listen.json).
pub struct SyncPushService {
    hub: Arc<SyncHub>,
}

impl SyncUpdateService {
    pub fn new(hub: Arc<SyncHub>) -> Arc<SyncUpdateService> {
        Arc::new(SyncUpdateService { hub })
    }
}

impl SyncPushService {
    pub fn new(hub: Arc<SyncHub>) -> Arc<SyncPushService> {
        Arc::new(SyncPushService { hub })
    }
}

fn check_format(format: u32) -> Result<(), String> {
    if format > STATE_FORMAT {
        return Err(format!("sync state format {format} is newer than this build reads ({STATE_FORMAT})"));
    }
    Ok(())
}

impl Service for SyncUpdateService {
    type State = UpdateState;
    const NAME: &'static str = "sync";

    fn max_read_buffer(&self) -> usize {
        max_read_buffer(self.hub.limits())
    }

    fn run(
        self: Arc<Self>,
        conn: Conn,
        resume: Option<UpdateState>,
        ctx: SessionCtx,
    ) -> impl Future<Output = SessionEnd<UpdateState>> + Send {
        update_session::run(self.hub.clone(), conn, resume, ctx)
    }

    fn check_state(&self, state: &UpdateState) -> Result<(), String> {
        check_format(state.format)
    }

    fn prepare_handover(&self) -> Result<(), String> {
        self.hub.prepare_handover()
    }

    fn resume_after_rollback(&self) {
        self.hub.resume_after_rollback()
    }

    fn catch_up(&self) -> Result<(), String> {
        self.hub.catch_up()
    }

    async fn refuse(&self, conn: Conn, reason: String) {
        // The seed has no message for a refused connection: the client sees it close, and retries.
        tracing::warn!("sync: refusing a connection: {reason}");
        close_conn(conn).await;
    }
}

impl Service for SyncPushService {
    type State = PushState;
    const NAME: &'static str = "sync_push";

    fn max_read_buffer(&self) -> usize {
        max_read_buffer(self.hub.limits())
    }

    fn run(
        self: Arc<Self>,
        conn: Conn,
        resume: Option<PushState>,
        ctx: SessionCtx,
    ) -> impl Future<Output = SessionEnd<PushState>> + Send {
        push_session::run(self.hub.clone(), conn, resume, ctx)
    }

    fn check_state(&self, state: &PushState) -> Result<(), String> {
        check_format(state.format)
    }

    async fn refuse(&self, conn: Conn, reason: String) {
        tracing::warn!("sync: refusing a push connection: {reason}");
        close_conn(conn).await;
    }
}
