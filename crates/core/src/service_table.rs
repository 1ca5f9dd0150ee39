//! The services a server runs, behind one object-safe interface, so the
//! runtime can start their accept loops and resume their sessions from
//! serialized state without knowing their types (in a new process after a
//! live upgrade, or in the old one after a rollback).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::listener::{LoopCtx, spawn_accept_loop, spawn_session};
use crate::service::{HandoverMode, Service};

/// One service as the runtime sees it.
pub trait ServiceEntry: Send + Sync {
    fn name(&self) -> &'static str;
    /// Configured port (0: any free port).
    fn port(&self) -> u16;
    fn spawn_accept(&self, listener: TcpListener, ctx: LoopCtx) -> JoinHandle<TcpListener>;
    /// Decodes a session's state and checks that this build can continue
    /// it: the typed state that [`ServiceEntry::resume`] takes. Decoding
    /// once serves both the check (before anything is taken over) and the
    /// resume.
    fn decode_state(&self, state: &serde_json::Value) -> Result<DecodedState, String>;
    /// [`ServiceEntry::decode_state`] from the JSON text a parked session holds.
    fn decode_state_json(&self, state: &[u8]) -> Result<DecodedState, String>;
    /// How a live upgrade moves this service's sessions; a service that
    /// brings its own entry keeps them all-at-once unless it says otherwise.
    fn handover_mode(&self) -> HandoverMode {
        HandoverMode::AllAtOnce
    }
    fn prepare_handover(&self) -> Result<(), String>;
    fn resume_after_rollback(&self);
    fn catch_up(&self) -> Result<(), String>;
    /// Resolves once the connections this service lets *drain* instead of
    /// migrating (an HTTP request in progress) have finished, after its
    /// accept loop stopped for a pause. The old process of an upgrade and a
    /// stopping server wait for it (at most `upgrade.drain_secs`). Services
    /// whose sessions all migrate have nothing to drain.
    fn drain(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
    /// The service's own part of `ferry status`, if it has one.
    fn status(&self) -> Option<serde_json::Value>;
    /// Continues a paused session on `stream`, from a state this entry decoded.
    fn resume(
        &self,
        stream: TcpStream,
        state: DecodedState,
        read_buf: Vec<u8>,
        pending_out: Vec<u8>,
        ctx: LoopCtx,
    ) -> Result<(), String>;
}

/// A session state decoded by its service's entry, typed but opaque to the
/// runtime.
pub struct DecodedState(Box<dyn Any + Send>);

impl DecodedState {
    /// Wraps a service's typed state.
    pub fn new<T: Any + Send>(state: T) -> DecodedState {
        DecodedState(Box::new(state))
    }
}

pub struct Entry<S: Service> {
    service: Arc<S>,
    port: u16,
    /// Shared by fresh and resumed sessions, and kept across a rollback.
    limit: Arc<Semaphore>,
    max_connections: usize,
}

impl<S: Service> Entry<S> {
    pub fn new(service: Arc<S>, port: u16, max_connections: usize) -> Entry<S> {
        Entry { service, port, limit: Arc::new(Semaphore::new(max_connections)), max_connections }
    }
}

impl<S: Service> ServiceEntry for Entry<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn spawn_accept(&self, listener: TcpListener, ctx: LoopCtx) -> JoinHandle<TcpListener> {
        spawn_accept_loop(self.service.clone(), listener, self.limit.clone(), self.max_connections, ctx)
    }

    fn decode_state(&self, state: &serde_json::Value) -> Result<DecodedState, String> {
        let state = S::State::deserialize(state).map_err(|e| format!("{}: {e}", S::NAME))?;
        self.service.check_state(&state).map_err(|e| format!("{}: {e}", S::NAME))?;
        Ok(DecodedState(Box::new(state)))
    }

    fn decode_state_json(&self, state: &[u8]) -> Result<DecodedState, String> {
        let state: S::State = serde_json::from_slice(state).map_err(|e| format!("{}: {e}", S::NAME))?;
        self.service.check_state(&state).map_err(|e| format!("{}: {e}", S::NAME))?;
        Ok(DecodedState(Box::new(state)))
    }

    fn handover_mode(&self) -> HandoverMode {
        self.service.handover_mode()
    }

    fn prepare_handover(&self) -> Result<(), String> {
        self.service.prepare_handover()
    }

    fn resume_after_rollback(&self) {
        self.service.resume_after_rollback()
    }

    fn catch_up(&self) -> Result<(), String> {
        self.service.catch_up()
    }

    fn status(&self) -> Option<serde_json::Value> {
        self.service.status()
    }

    fn resume(
        &self,
        stream: TcpStream,
        state: DecodedState,
        read_buf: Vec<u8>,
        pending_out: Vec<u8>,
        ctx: LoopCtx,
    ) -> Result<(), String> {
        let state = state.0.downcast::<S::State>().map_err(|_| format!("{}: a state of another service", S::NAME))?;
        let state = *state;
        // A resumed session keeps its place even if the limit is full.
        let permit = self.limit.clone().try_acquire_owned().ok();
        spawn_session(self.service.clone(), stream, Some((state, read_buf, pending_out)), permit, ctx);
        Ok(())
    }
}
