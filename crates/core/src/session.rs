//! What a session is handed when it starts and what it hands back when it
//! ends.

use std::sync::Arc;

use crate::conn::ConnParts;
use crate::pause::PauseSignal;
use crate::registry::{Registry, SessionHandle};

/// Everything a running session needs from the runtime.
pub struct SessionCtx {
    /// Its entry in the registry (progress for `ferry status`); dropping it
    /// unregisters the session.
    pub handle: SessionHandle,
    /// Checked at every safe point.
    pub pause: PauseSignal,
    /// Shared counters and recent transfers.
    pub registry: Arc<Registry>,
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd<S> {
    /// The connection is finished (closed by either side, or failed).
    Closed,
    /// Stopped at a safe point; `state` plus the connection's parts are all
    /// that is needed to continue it.
    Paused(Parked<S>),
}

/// A paused session: its connection taken apart and its state.
#[derive(Debug)]
pub struct Parked<S> {
    pub conn: ConnParts,
    pub state: S,
}
