//! The sync server: the seed's "Multi-threaded Dropbox server" on ferry's runtime.
//!
//! Two services share one [`SyncHub`]: [`SyncUpdateService`] on the update port (7071), where each
//! client sends its uploads, deletes and update requests, and [`SyncPushService`] on the push port
//! (7072), where the server sends each client the other clients' updates. The tokio runtime is the
//! seed's thread pool; each connection is a session the runtime can park and hand to a new process in
//! a live upgrade.

mod client_table;
mod hub;
mod push_session;
mod relay;
mod roster_file;
mod service;
mod staged_upload;
mod state;
mod update_session;

use std::time::Duration;

use ferry_core::Conn;

pub use hub::{HubConfig, HubError, SyncHub};
pub use roster_file::RosterFileError;
pub use service::{SyncPushService, SyncUpdateService};
pub use state::{Expect, PushItemState, PushState, STATE_FORMAT, UpdateState, UploadState};

use crate::message_reader::max_message_len;
use crate::{ClientId, Hello, Limits, Message, PROTOCOL_VERSION, Role};

/// How long a closing connection may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Buffered input past which a session stops reading until it has handled what it has: one whole
/// message of the largest kind, plus room for the start of the next.
pub(crate) fn read_high_water(limits: &Limits) -> usize {
    max_message_len(limits) + 64 * 1024
}

/// The bound on a sync connection's read buffer (one read past the high-water mark).
pub(crate) fn max_read_buffer(limits: &Limits) -> usize {
    read_high_water(limits) + 1024 * 1024
}

pub(crate) fn queue_message(conn: &mut Conn, message: &Message) {
    crate::message_reader::queue(conn, message);
}

/// Checks a connection's first message: a hello of this protocol version
/// for `role` (the port's). A hello of another version is answered with ours,
/// so the client learns what this server speaks; anything else is logged.
/// `Err` closes the connection.
pub(crate) fn accept_hello(message: Message, role: Role, conn: &mut Conn) -> Result<ClientId, ()> {
    let Message::Hello(hello) = message else {
        tracing::debug!("sync: {} before the hello on the {role:?} port; closing", message.message_type().name());
        return Err(());
    };
    if hello.version != PROTOCOL_VERSION {
        queue_message(conn, &Message::Hello(Hello::new(hello.role, hello.client_id)));
        return Err(());
    }
    if hello.role != role {
        tracing::debug!("sync: a {:?} hello on the {role:?} port; closing", hello.role);
        return Err(());
    }
    Ok(hello.client_id)
}

/// Flushes what is queued (briefly) and closes our side.
pub(crate) async fn close_conn(mut conn: Conn) {
    let _ = tokio::time::timeout(CLOSE_FLUSH, conn.shutdown()).await;
}

#[cfg(test)]
mod tests;
