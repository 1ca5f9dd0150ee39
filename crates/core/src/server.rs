//! The server process: binds listeners, publishes where it listens, runs
//! accept loops and the admin socket, and stops gracefully on SIGTERM,
//! SIGINT or an admin `shutdown`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminHandler, AdminRequest};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::listener::{LoopCtx, ParkedSession, spawn_accept_loop};
use crate::pause::{PauseReason, PauseTrigger};
use crate::registry::{Registry, unix_ms};
use crate::service::Service;
use crate::status::Status;
use crate::version::version;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("another ferry (pid {pid}) is serving from {data}")]
    AlreadyRunning { pid: String, data: String },
    #[error("cannot bind {service} on {addr}: {source}")]
    Bind { service: String, addr: SocketAddr, source: io::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

type Starter = Box<dyn FnOnce(LoopCtx) -> JoinHandle<TcpListener> + Send>;

/// A server being assembled: services are bound first, then `run` publishes
/// the addresses and starts accepting.
pub struct Server {
    config: Config,
    data: DataDir,
    registry: Arc<Registry>,
    pause: PauseTrigger,
    listeners: BTreeMap<String, SocketAddr>,
    starters: Vec<Starter>,
    started: SystemTime,
}

impl Server {
    /// Validates the config, creates the data directory and refuses to start
    /// if another server already answers on its admin socket.
    pub async fn new(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        let data = DataDir::new(config.data.clone());
        data.create().map_err(io_err(format!("cannot create data directory {}", config.data.display())))?;
        let socket = data.socket();
        if socket.exists() {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                let pid = std::fs::read_to_string(data.pid_file()).unwrap_or_default().trim().to_string();
                return Err(ServerError::AlreadyRunning { pid, data: config.data.display().to_string() });
            }
            // A stale socket from a server that died.
            let _ = std::fs::remove_file(&socket);
        }
        Ok(Server {
            config,
            data,
            registry: Registry::new(),
            pause: PauseTrigger::new(),
            listeners: BTreeMap::new(),
            starters: Vec::new(),
            started: SystemTime::now(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Binds `service`'s listener on the configured address; port 0 picks
    /// a free port, reported in `listen.json`.
    pub async fn bind(&mut self, service: &str, port: u16) -> Result<TcpListener, ServerError> {
        let addr = SocketAddr::new(self.config.bind, port);
        let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
            service: service.into(),
            addr,
            source,
        })?;
        let local = listener.local_addr().map_err(io_err("cannot read bound address"))?;
        self.listeners.insert(service.to_string(), local);
        Ok(listener)
    }

    /// Registers a service to accept on `listener` once the server runs.
    pub fn add_service<S: Service>(&mut self, listener: TcpListener, service: Arc<S>, max_connections: usize) {
        self.starters.push(Box::new(move |ctx| spawn_accept_loop(service, listener, max_connections, ctx)));
    }

    pub fn listeners(&self) -> &BTreeMap<String, SocketAddr> {
        &self.listeners
    }

    /// Publishes listen.json and the pid file, serves until told to stop,
    /// then pauses every session (so in-flight writes complete) and exits.
    pub async fn run(self) -> Result<(), ServerError> {
        let pid = std::process::id();
        let listen: BTreeMap<String, String> = self.listeners.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        let admin_listener = UnixListener::bind(self.data.socket())
            .map_err(io_err(format!("cannot bind admin socket {}", self.data.socket().display())))?;
        self.data.write_listen(&listen).map_err(io_err("cannot write listen.json"))?;
        self.data.write_pid(pid).map_err(io_err("cannot write ferry.pid"))?;

        let (parked_tx, mut parked_rx) = mpsc::channel::<ParkedSession>(64);
        let ctx = LoopCtx { registry: self.registry.clone(), pause: self.pause.signal(), parked: parked_tx };
        let loops: Vec<JoinHandle<TcpListener>> = self.starters.into_iter().map(|start| start(ctx.clone())).collect();

        let stop = Arc::new(Notify::new());
        let handler = Arc::new(AdminState {
            config: self.config.clone(),
            registry: self.registry.clone(),
            listeners: listen.clone(),
            started: self.started,
            stop: stop.clone(),
        });
        let admin_task = tokio::spawn(admin::serve(admin_listener, handler));
        for (name, addr) in &listen {
            tracing::info!("{name} listening on {addr}");
        }
        tracing::info!(pid, version = %version(), data = %self.config.data.display(), "ferry serving");

        let mut term = signal(SignalKind::terminate()).map_err(io_err("cannot install SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io_err("cannot install SIGINT handler"))?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = stop.notified() => tracing::info!("admin shutdown"),
        }

        // Stop accepting and ask every session to reach a safe point, so a
        // PUT's last write lands before the process exits.
        self.pause.pause(PauseReason::Shutdown);
        let grace = Duration::from_secs(self.config.upgrade.shutdown_grace_secs);
        let deadline = Instant::now() + grace;
        while self.registry.session_count() > 0 && Instant::now() < deadline {
            tokio::select! {
                _ = parked_rx.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let left = self.registry.session_count();
        if left > 0 {
            tracing::warn!("{left} sessions did not reach a safe point within {grace:?}");
        }
        for handle in loops {
            handle.abort();
        }
        admin_task.abort();
        self.data.remove_published(pid);
        Ok(())
    }
}

/// The admin socket's view of the server.
struct AdminState {
    config: Config,
    registry: Arc<Registry>,
    listeners: BTreeMap<String, String>,
    started: SystemTime,
    stop: Arc<Notify>,
}

impl AdminHandler for AdminState {
    fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            version: version().to_string(),
            started_unix_ms: unix_ms(self.started),
            uptime_secs: self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            data_dir: self.config.data.display().to_string(),
            root: self.config.root_dir().display().to_string(),
            listeners: self.listeners.clone(),
            connections: self.registry.session_count(),
            sessions: self.registry.sessions(),
            transfers: self.registry.transfers(),
            recent_transfers: self.registry.recent_transfers(),
            counters: self.registry.counters(),
        }
    }

    fn shutdown(&self) {
        self.stop.notify_one();
    }
}

/// Asks a running server for its status over the admin socket.
pub async fn query_status(data: &std::path::Path) -> io::Result<Status> {
    let socket = DataDir::new(data).socket();
    match admin::request(&socket, &AdminRequest::Status).await {
        Ok(admin::AdminResponse::Status(status)) => Ok(*status),
        Ok(admin::AdminResponse::Error { message }) => Err(io::Error::other(message)),
        Ok(other) => Err(io::Error::other(format!("unexpected admin reply: {other:?}"))),
        Err(e) => Err(io::Error::new(e.kind(), format!("no ferry server answers at {} ({e})", socket.display()))),
    }
}
