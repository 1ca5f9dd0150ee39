//! The gateway as one of the runtime's services.
//!
//! HTTP connections *drain* rather than migrate in a live upgrade: a request
//! is short and there is no state between requests worth carrying, so the
//! old process finishes the requests in progress while the new one accepts
//! every new connection. What moves is the listening socket. The runtime
//! hands this entry a listener, and the entry gives [`serve`] a duplicate
//! of its descriptor: at a pause the accept loop hands the original back at
//! once (still open, still queueing connections in the kernel), while
//! `serve` stops accepting on its copy and drains in the background, which
//! [`ServiceEntry::drain`] waits for.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ferry_core::listener::LoopCtx;
use ferry_core::service_table::{DecodedState, ServiceEntry};
use ferry_files::{FileCache, FileStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::serve::serve;
use crate::state::{HttpLimits, HttpState, StatusSource};

/// Adds fields to the status JSON the gateway shows (the cache snapshot).
pub type ExtraStatus = Arc<dyn Fn(&mut serde_json::Map<String, serde_json::Value>) + Send + Sync>;

/// The `http` service.
pub struct HttpEntry {
    port: u16,
    store: Arc<FileStore>,
    limits: HttpLimits,
    cache: Option<Arc<FileCache>>,
    extra: Option<ExtraStatus>,
    /// Built at the first start (it needs the runtime's status) and kept
    /// across rollbacks, so metrics keep counting.
    state: OnceLock<HttpState>,
    /// `serve` tasks started so far; the ones still draining are awaited by
    /// [`ServiceEntry::drain`].
    serving: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
}

impl HttpEntry {
    /// `cache`: whole-file reads go through it (shared with the native
    /// GET). `extra`: adds fields to the status the gateway shows.
    pub fn new(
        port: u16,
        store: Arc<FileStore>,
        limits: HttpLimits,
        cache: Option<Arc<FileCache>>,
        extra: Option<ExtraStatus>,
    ) -> HttpEntry {
        HttpEntry { port, store, limits, cache, extra, state: OnceLock::new(), serving: Mutex::new(Vec::new()) }
    }

    /// The gateway's shared state (metrics included), once it has started.
    pub fn state(&self) -> Option<&HttpState> {
        self.state.get()
    }

    fn state_for(&self, ctx: &LoopCtx) -> HttpState {
        self.state
            .get_or_init(|| {
                let status = ctx.status.clone();
                let extra = self.extra.clone();
                let source: StatusSource = Arc::new(move || {
                    let mut value = serde_json::to_value(status()).unwrap_or_default();
                    if let (Some(extra), Some(map)) = (&extra, value.as_object_mut()) {
                        extra(map);
                    }
                    value
                });
                HttpState::with_cache(self.store.clone(), self.limits.clone(), source, self.cache.clone())
            })
            .clone()
    }
}

impl ServiceEntry for HttpEntry {
    fn name(&self) -> &'static str {
        "http"
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn spawn_accept(&self, listener: TcpListener, ctx: LoopCtx) -> JoinHandle<TcpListener> {
        let state = self.state_for(&ctx);
        match duplicate(&listener) {
            Ok(copy) => {
                let mut pause = ctx.pause.clone();
                let stop = async move {
                    pause.wait().await;
                };
                let task = tokio::spawn(serve(copy, state, stop));
                let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
                serving.retain(|t| !t.is_finished());
                serving.push(task);
            }
            Err(e) => tracing::error!("http: cannot duplicate the listening socket, not serving: {e}"),
        }
        let mut pause = ctx.pause.clone();
        tokio::spawn(async move {
            pause.wait().await;
            listener
        })
    }

    fn status(&self) -> Option<serde_json::Value> {
        let state = self.state.get()?;
        serde_json::to_value(state.metrics().snapshot()).ok()
    }

    fn decode_state(&self, _state: &serde_json::Value) -> Result<DecodedState, String> {
        Err("http connections drain in the old process; there are no sessions to continue".into())
    }

    fn decode_state_json(&self, _state: &[u8]) -> Result<DecodedState, String> {
        Err("http connections drain in the old process; there are no sessions to continue".into())
    }

    fn prepare_handover(&self) -> Result<(), String> {
        Ok(())
    }

    fn resume_after_rollback(&self) {}

    fn catch_up(&self) -> Result<(), String> {
        Ok(())
    }

    fn drain(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let tasks = std::mem::take(&mut *self.serving.lock().unwrap_or_else(PoisonError::into_inner));
        Box::pin(async move {
            for task in tasks {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("http: the gateway stopped with an error: {e}"),
                    Err(e) => tracing::warn!("http: the gateway task failed: {e}"),
                }
            }
        })
    }

    fn resume(
        &self,
        _stream: TcpStream,
        _state: DecodedState,
        _read_buf: Vec<u8>,
        _pending_out: Vec<u8>,
        _ctx: LoopCtx,
    ) -> Result<(), String> {
        Err("http connections do not migrate".into())
    }
}

/// A second descriptor for the same listening socket, registered with the
/// runtime on its own.
fn duplicate(listener: &TcpListener) -> std::io::Result<TcpListener> {
    let fd = listener.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}
