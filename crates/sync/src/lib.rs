//! ferry's sync service: the seed's binary sync protocol byte for byte ([`wire`]), the server's file
//! roster with per-file lock leases ([`roster`]), per-upload chunk checking ([`upload_tracker`]), each
//! client's pending-update queue ([`update_queue`]), and the client's connect-time reconciliation
//! ([`mod@reconcile`]) with conflicted-copy naming ([`conflict_name`]).
//!
//! Those pieces do no I/O: every rule of the protocol is testable without sockets or disks. The
//! networked [`server`] (two services on ferry's runtime) and the `ferry sync` [`client`] drive them.
//! The wire format is specified in `docs/sync-protocol.md`, the operator's view in `docs/sync.md`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod chunk_digests;
pub mod client;
pub mod client_id;
pub mod conflict_name;
pub mod local_metadata;
pub mod md5sum;
pub mod message_reader;
pub mod reconcile;
pub mod roster;
pub mod server;
pub mod twin_md5;
pub mod update_queue;
pub mod upload_tracker;
pub mod wire;

pub use client_id::{ClientId, ClientIdError, MAX_CLIENT_ID_LEN};
pub use conflict_name::{ConflictNameError, conflicted_copy_name};
pub use local_metadata::{LocalEntry, LocalFile, LocalMetadata, Synced};
pub use md5sum::Md5Sum;
pub use reconcile::{Action, reconcile};
pub use roster::{Lease, LeaseError, LeaseKind, Refusal, Roster, RosterError};
pub use update_queue::{Enqueued, QueueFull, QueuedUpdate, UpdateKind, UpdateQueue};
pub use upload_tracker::{ChunkVerdict, FinishVerdict, MAX_STRIKES, UploadTracker, UploadTrackerState};
pub use wire::{
    DecodeError, EntryState, Hello, Limits, Message, MessageType, MetaEntry, Metadata, PROTOCOL_VERSION, Role,
    StatusCode, WireError,
};
