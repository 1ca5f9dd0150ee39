//! The one thing a service supplies: how to run a session.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conn::Conn;
use crate::session::{SessionCtx, SessionEnd};

/// A network service whose sessions can pause and resume.
///
/// `run` drives one connection from start to end. It is called with
/// `resume: None` for a fresh connection and with the state a previous
/// `run` returned in [`SessionEnd::Paused`] to continue one, in this process
/// or in a new executable. The runtime owns listeners, the pause signal,
/// serialization of `State`, and moving sockets.
pub trait Service: Send + Sync + 'static {
    /// Everything needed to continue a paused session, minus the socket and
    /// its buffers (which [`crate::Parked`] carries). Must stay decodable by
    /// the next release: add fields with defaults, never change meanings.
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// Name used in `listen.json`, status, and handover records.
    const NAME: &'static str;

    /// Upper bound on a connection's read buffer.
    fn max_read_buffer(&self) -> usize;

    fn run(
        self: Arc<Self>,
        conn: Conn,
        resume: Option<Self::State>,
        ctx: SessionCtx,
    ) -> impl Future<Output = SessionEnd<Self::State>> + Send;

    /// Whether this build can continue a session from `state` (e.g. its
    /// format is not newer than this build writes). Checked for every
    /// session before a new process accepts a handover, so a state it cannot
    /// continue rolls the upgrade back instead of failing the session.
    fn check_state(&self, state: &Self::State) -> Result<(), String> {
        let _ = state;
        Ok(())
    }

    /// How a live upgrade moves this service's sessions (see
    /// [`HandoverMode`]). Asked once per upgrade, before anything pauses.
    fn handover_mode(&self) -> HandoverMode {
        HandoverMode::AllAtOnce
    }

    /// Old process, live upgrade: every session is parked; flush and stop
    /// writing any store, so the new process can take over its files.
    fn prepare_handover(&self) -> Result<(), String> {
        Ok(())
    }

    /// Old process: the upgrade failed after `prepare_handover`; resume
    /// writing.
    fn resume_after_rollback(&self) {}

    /// New process, live upgrade: the old process has stopped writing;
    /// catch stores up with what it wrote since this process opened them.
    /// Runs before any session resumes; an error refuses the handover.
    fn catch_up(&self) -> Result<(), String> {
        Ok(())
    }

    /// What this service adds to `ferry status` beyond the sessions and
    /// transfers the runtime already reports (the transfer service lists
    /// its backup nodes). Shown under `services.<NAME>` in
    /// `ferry status --json`; `None` adds nothing. Called on the admin
    /// socket's task for every status request, so it must be quick.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Where this service's session tasks run. `None` (the default): on
    /// the runtime that accepted the connection (or resumed the session).
    /// A service may return a runtime of its own instead, such as one of
    /// several current-thread runtimes that each serve their connections
    /// on one OS thread; the socket is then moved to that runtime's I/O
    /// driver before the session starts. Asked once per session.
    fn session_runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }

    /// Tells a connection that arrived over the connection limit why it is
    /// being closed, in the protocol's own form.
    fn refuse(&self, conn: Conn, reason: String) -> impl Future<Output = ()> + Send;
}

/// How a live upgrade moves a service's sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverMode {
    /// A few sessions at a time while the others keep serving, its listener
    /// first: each session's pause is short, but for a while some sessions
    /// run in the old process and some in the new. Only for a service whose
    /// sessions share nothing that one process writes and the other would
    /// read stale (files on disk, which both processes see, are fine).
    Streamed,
    /// In the final group, with the listener, after every such session has
    /// paused and `prepare_handover` has run: for a service whose sessions
    /// share a writer (a store's log, a hub's queues).
    AllAtOnce,
}
