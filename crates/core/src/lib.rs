//! ferry's runtime, shared by every service.
//!
//! A service supplies one thing: how to run a session on a [`Conn`], fresh or
//! from a paused state ([`Service`]). Everything around it lives here: the
//! config, the data directory layout, listeners and their accept loops, the
//! registry of live sessions that `ferry status` reads, the pause signal
//! that stops every session at a safe point, and the admin socket.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod config;
pub mod conn;
pub mod data_dir;
pub mod listener;
pub mod pausable;
pub mod pause;
pub mod registry;
pub mod server;
pub mod service;
pub mod service_table;
pub mod session;
pub mod status;
pub mod upgrade;
pub mod version;

pub use config::Config;
pub use conn::{Conn, ConnParts, IoEvent};
pub use pause::{PauseReason, PauseSignal, PauseTrigger};
pub use registry::{Registry, SessionHandle, TransferKind};
pub use service::{HandoverMode, Service};
pub use session::{Parked, SessionCtx, SessionEnd};
