//! Backup nodes (`ferry backup`): every uploaded file mirrored to other
//! directories, on this machine or others, and caught up after an outage.
//!
//! A node is a client connection that sends `BACKUP` with its inventory and
//! then stays open as the server's *backup feed* to it. Two paths fill the
//! feed:
//!
//! - **live**: a PUT hands each batch it writes to every connected node's
//!   bounded [`queue::FeedQueue`] ([`mirror::PutMirror`]), so the node
//!   receives the file while it arrives and commits it when the PUT does;
//! - **catch-up**: anything the live path missed (a node that connected
//!   later, was too slow, lost a transfer in an upgrade, or a file changed
//!   outside ferry) is found by comparing the store with what the node
//!   holds ([`plan`]) and sent from the stored file.
//!
//! The live path is an optimisation; the catch-up path is what makes a node
//! end up with every stored file at its current version. The server-side
//! session code is in `server::backup_feed`; the node's side in
//! `client::backup`. Wire format: docs/protocol.md §10.

pub mod held;
pub mod line;
pub mod mirror;
pub mod node_id;
pub mod plan;
pub mod queue;
pub mod registry;

/// Most transfers a server keeps open on one node connection (BACKUPINFO
/// sent, neither BACKUPDONE nor BACKUPABORT yet). Nodes refuse more.
pub const MAX_OPEN_TRANSFERS: usize = 128;

/// Live uploads mirrored to one node at once; further concurrent uploads
/// reach it through catch-up. Below [`MAX_OPEN_TRANSFERS`], which also
/// leaves room for the catch-up transfer.
pub const MAX_LIVE_TRANSFERS: usize = 64;
