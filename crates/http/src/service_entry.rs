//! The gateway as one of the runtime's services.
//!
//! HTTP connections *drain* rather than migrate in a live upgrade: a request
//! is short and there is no state between requests worth carrying, so the
//! old process finishes the requests in progress while the new one accepts
//! every new connection. What moves is the listening socket. The runtime
//! hands this entry a listener, and the entry starts the gateway's worker
//! threads ([`crate::workers`]), each on its own duplicate of the
//! descriptor: at a pause the accept task hands the original back at once
//! (still open, still queueing connections in the kernel), while the
//! workers stop accepting on their copies and drain, which
//! [`ServiceEntry::drain`] waits for.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ferry_core::listener::LoopCtx;
use ferry_core::service_table::{DecodedState, ServiceEntry};
use ferry_files::{FileCache, FileStore};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::{HttpLimits, HttpState, StatusSource};
use crate::workers::{Worker, start_workers, worker_count};

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
    /// Worker threads started at each (re)start of the service.
    workers: usize,
    /// Workers started so far; the ones still draining are awaited by
    /// [`ServiceEntry::drain`].
    serving: Mutex<Vec<Worker>>,
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
        let workers = worker_count(0);
        HttpEntry {
            port,
            store,
            limits,
            cache,
            extra,
            state: OnceLock::new(),
            workers,
            serving: Mutex::new(Vec::new()),
        }
    }

    /// Serves with `configured` worker threads (`http.workers`; 0: one per
    /// CPU, the default).
    pub fn with_workers(mut self, configured: usize) -> HttpEntry {
        self.workers = worker_count(configured);
        self
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
        let stop = CancellationToken::new();
        match start_workers(&listener, &state, self.workers, &stop) {
            Ok(started) => {
                let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
                serving.retain(|w| !w.is_finished());
                serving.extend(started);
            }
            Err(e) => tracing::error!("http: cannot start the gateway's workers, not serving: {e}"),
        }
        // Registered with this runtime, the listener would wake one of its
        // threads for every new connection, for nothing: the workers accept.
        // Kept as a plain descriptor until the pause hands it back.
        let kept = match duplicate(&listener) {
            Ok(kept) => Kept::Plain(kept),
            Err(e) => {
                tracing::debug!("http: keeping the listener registered ({e})");
                Kept::Registered(listener)
            }
        };
        let mut pause = ctx.pause.clone();
        tokio::spawn(async move {
            // Also if this task is dropped without a pause: the workers drain.
            let _stop = stop.drop_guard();
            pause.wait().await;
            kept.into_listener().await
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
            for worker in tasks {
                if let Err(e) = worker.finished().await {
                    tracing::warn!("http: a gateway worker stopped with an error: {e}");
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

/// The runtime's own descriptor of the listening socket while the workers
/// serve.
enum Kept {
    Plain(std::net::TcpListener),
    Registered(TcpListener),
}

/// Between tries to register the listener again, which fails only when the
/// process cannot register descriptors at all (out of memory).
const REGISTER_RETRY: Duration = Duration::from_millis(10);

impl Kept {
    async fn into_listener(self) -> TcpListener {
        let plain = match self {
            Kept::Registered(listener) => return listener,
            Kept::Plain(plain) => plain,
        };
        let mut warned = false;
        loop {
            match plain.try_clone().and_then(TcpListener::from_std) {
                Ok(listener) => return listener,
                Err(e) if !warned => {
                    warned = true;
                    tracing::error!("http: cannot register the listening socket again, retrying: {e}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(REGISTER_RETRY).await;
        }
    }
}

/// A second descriptor for the same listening socket, not registered with
/// any runtime.
fn duplicate(listener: &TcpListener) -> std::io::Result<std::net::TcpListener> {
    let copy = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    copy.set_nonblocking(true)?;
    Ok(copy)
}
