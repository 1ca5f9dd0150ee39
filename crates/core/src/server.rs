//! The server process: binds (or, after a live upgrade, inherits) its
//! listeners, publishes where it listens, runs accept loops and the admin
//! socket, hands everything to a new executable on `ferry upgrade` or
//! SIGUSR2, and stops gracefully on SIGTERM, SIGINT or an admin `shutdown`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminHandler, AdminRequest, UpgradeTicket};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::listener::{LoopCtx, ParkedSession};
use crate::pausable::PausableSessions;
use crate::pause::{PauseReason, PauseTrigger};
use crate::registry::{Registry, unix_ms};
use crate::service::Service;
use crate::service_table::{Entry, ServiceEntry};
use crate::status::Status;
use crate::upgrade::channel::UpgradeChannel;
use crate::upgrade::history::UpgradeRecord;
use crate::upgrade::{self, UpgradeReport, sd_notify};
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
    #[error("live upgrade: {0}")]
    Adopt(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// A server being assembled: services are added, then `run` binds (or
/// inherits) their listeners, publishes the addresses and serves.
pub struct Server {
    config: Config,
    data: DataDir,
    services: Vec<Arc<dyn ServiceEntry>>,
    /// Set when this process was started by a live upgrade.
    upgrade: Option<UpgradeChannel>,
}

/// Where an upgrade's outcome goes, and how the requester says it has it.
type UpgradeReply = (oneshot::Sender<Result<UpgradeReport, String>>, oneshot::Receiver<()>);

/// A request from the admin socket or SIGUSR2 to upgrade.
pub(crate) struct UpgradeRequest {
    binary: Option<PathBuf>,
    reply: Option<UpgradeReply>,
}

/// The running server's shared parts, used by the run loop and by both
/// sides of a live upgrade.
pub(crate) struct Runtime {
    pub config: Config,
    pub data: DataDir,
    pub pause: PauseTrigger,
    pub ctx: LoopCtx,
    pub parked: mpsc::UnboundedReceiver<ParkedSession>,
    pub services: Vec<Arc<dyn ServiceEntry>>,
    pub admin: Arc<AdminState>,
    /// The executable and arguments this process was started with: what a
    /// SIGUSR2 upgrade starts again.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// Accept loops and the admin loop while they run; each hands its listener
/// back when paused.
pub(crate) struct Running {
    pub loops: Vec<AcceptLoop>,
    pub admin: JoinHandle<UnixListener>,
}

/// One service's accept loop.
pub(crate) struct AcceptLoop {
    pub entry: Arc<dyn ServiceEntry>,
    /// Hands the listener back once stopped.
    pub task: JoinHandle<TcpListener>,
    /// Stops this loop alone (a streamed upgrade moves its listener first).
    pub stop: PauseTrigger,
}

impl Server {
    /// Validates the config and creates the data directory. Refuses to start
    /// if another server answers on the admin socket — unless this process
    /// is that server's live upgrade.
    pub async fn new(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        raise_fd_limit();
        let data = DataDir::new(config.data.clone());
        data.create().map_err(io_err(format!("cannot create data directory {}", config.data.display())))?;
        let upgrade = match UpgradeChannel::from_env() {
            Some(Ok(channel)) => Some(channel),
            Some(Err(e)) => return Err(ServerError::Adopt(e.to_string())),
            None => None,
        };
        let socket = data.socket();
        if upgrade.is_none() && socket.exists() {
            if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                let pid = std::fs::read_to_string(data.pid_file()).unwrap_or_default().trim().to_string();
                return Err(ServerError::AlreadyRunning { pid, data: config.data.display().to_string() });
            }
            // A stale socket from a server that died.
            let _ = std::fs::remove_file(&socket);
        }
        Ok(Server { config, data, services: Vec::new(), upgrade })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this process is taking over from a running server.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Adds a service on `port` (0: any free port, reported in listen.json).
    pub fn add_service<S: Service>(&mut self, service: Arc<S>, port: u16, max_connections: usize) {
        self.services.push(Arc::new(Entry::new(service, port, max_connections)));
    }

    /// Adds a service that brings its own [`ServiceEntry`]: one whose
    /// connections drain in the old process instead of migrating (HTTP).
    pub fn add_entry(&mut self, entry: Arc<dyn ServiceEntry>) {
        self.services.push(entry);
    }

    /// Serves until told to stop (or until a live upgrade hands everything
    /// to a new process).
    pub async fn run(self) -> Result<(), ServerError> {
        let started = SystemTime::now();
        let (parked_tx, parked_rx) = mpsc::unbounded_channel();
        let registry = Registry::new();
        let pause = PauseTrigger::new();
        let (upgrade_tx, mut upgrade_rx) = mpsc::channel::<UpgradeRequest>(4);
        let stop = Arc::new(Notify::new());
        let admin_state = Arc::new(AdminState {
            config: self.config.clone(),
            registry: registry.clone(),
            listeners: Mutex::new(BTreeMap::new()),
            started,
            stop: stop.clone(),
            upgrades: upgrade_tx,
            history: Mutex::new(Vec::new()),
            services: self.services.clone(),
        });
        let ctx = LoopCtx {
            registry: registry.clone(),
            pause: pause.signal(),
            stop_accepting: pause.signal(),
            sessions: PausableSessions::new(),
            handover: None,
            parked: parked_tx,
            live: Arc::new(AtomicUsize::new(0)),
            status: {
                let admin = Arc::downgrade(&admin_state);
                Arc::new(move || match admin.upgrade() {
                    Some(admin) => admin.status(),
                    None => admin_gone_status(),
                })
            },
        };
        let mut rt = Runtime {
            config: self.config.clone(),
            data: self.data.clone(),
            pause,
            ctx,
            parked: parked_rx,
            services: self.services,
            admin: admin_state,
            exe: started_from().map_err(io_err("cannot find this executable"))?,
            args: std::env::args_os().skip(1).collect(),
        };

        // Handlers first: readiness is announced below, and a SIGUSR2 or
        // SIGTERM that arrives right after must not meet default actions.
        let mut term = signal(SignalKind::terminate()).map_err(io_err("cannot install SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io_err("cannot install SIGINT handler"))?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(io_err("cannot install SIGUSR2 handler"))?;
        let mut running = match self.upgrade {
            Some(channel) => upgrade::adopt(&mut rt, channel).await.map_err(ServerError::Adopt)?,
            None => rt.start_fresh().await?,
        };
        let pid = std::process::id();
        tracing::info!(pid, version = %version(), data = %rt.config.data.display(), "ferry serving");
        loop {
            let request = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                _ = stop.notified() => { tracing::info!("admin shutdown"); break; }
                _ = usr2.recv() => {
                    tracing::info!("SIGUSR2: upgrading to {}", rt.exe.display());
                    UpgradeRequest { binary: None, reply: None }
                }
                Some(request) = upgrade_rx.recv() => request,
                Some(straggler) = rt.parked.recv() => {
                    // A session that parked after a pause was lifted (an
                    // upgrade that timed out waiting for it): carry on here.
                    rt.resume_parked(straggler);
                    continue;
                }
            };
            let binary = request.binary.clone().unwrap_or_else(|| rt.exe.clone());
            match upgrade::hand_over(&mut rt, running, &binary).await {
                Ok(report) => {
                    tracing::info!(
                        new_pid = report.new_pid,
                        new_version = %report.new_version,
                        gap_us = report.pause_gap_us,
                        sessions = report.sessions_moved,
                        cpu_us = process_cpu_us(),
                        "handed over to the new process; exiting"
                    );
                    if let Some((reply, delivered)) = request.reply {
                        let _ = reply.send(Ok(report));
                        let _ = tokio::time::timeout(Duration::from_secs(5), delivered).await;
                    }
                    rt.drain().await;
                    return Ok(());
                }
                Err((reason, resumed)) => {
                    tracing::warn!("upgrade failed, still serving: {reason}");
                    running = resumed;
                    if let Some((reply, _)) = request.reply {
                        let _ = reply.send(Err(reason));
                    }
                }
            }
        }
        rt.shutdown(running).await;
        Ok(())
    }
}

impl Runtime {
    /// A fresh start: bind every service and the admin socket, publish.
    async fn start_fresh(&mut self) -> Result<Running, ServerError> {
        let mut loops = Vec::new();
        let mut listen = BTreeMap::new();
        for entry in self.services.clone() {
            let addr = SocketAddr::new(self.config.bind, entry.port());
            let listener = TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
                service: entry.name().into(),
                addr,
                source,
            })?;
            let local = listener.local_addr().map_err(io_err("cannot read bound address"))?;
            listen.insert(entry.name().to_string(), local.to_string());
            loops.push(self.spawn_accept(entry, listener));
        }
        let admin_listener = UnixListener::bind(self.data.socket())
            .map_err(io_err(format!("cannot bind admin socket {}", self.data.socket().display())))?;
        let admin = self.spawn_admin(admin_listener);
        self.publish(&listen)?;
        sd_notify::notify("READY=1");
        Ok(Running { loops, admin })
    }

    /// Starts `entry`'s accept loop on `listener`, stoppable on its own.
    pub(crate) fn spawn_accept(&self, entry: Arc<dyn ServiceEntry>, listener: TcpListener) -> AcceptLoop {
        let stop = PauseTrigger::new();
        let mut ctx = self.ctx.clone();
        ctx.stop_accepting = self.ctx.stop_accepting.with_own(&stop);
        let task = entry.spawn_accept(listener, ctx);
        AcceptLoop { entry, task, stop }
    }

    pub(crate) fn spawn_admin(&self, listener: UnixListener) -> JoinHandle<UnixListener> {
        let handler: Arc<dyn AdminHandler> = self.admin.clone();
        tokio::spawn(admin::serve(listener, handler, self.pause.signal()))
    }

    /// Writes listen.json and the pid file (before anyone is told we serve).
    pub(crate) fn publish(&self, listen: &BTreeMap<String, String>) -> Result<(), ServerError> {
        for (name, addr) in listen {
            tracing::info!("{name} listening on {addr}");
        }
        *self.admin.listeners.lock().unwrap_or_else(|p| p.into_inner()) = listen.clone();
        self.data.write_listen(listen).map_err(io_err("cannot write listen.json"))?;
        self.data.write_pid(std::process::id()).map_err(io_err("cannot write ferry.pid"))
    }

    /// Pauses every session and collects their states, waiting at most
    /// `limit`. Returns the listeners and the parked sessions, or (on
    /// timeout) how many sessions were still running.
    pub(crate) async fn pause_all(
        &mut self,
        running: Running,
        reason: PauseReason,
        limit: Duration,
    ) -> (Vec<(Arc<dyn ServiceEntry>, TcpListener)>, Option<UnixListener>, Vec<ParkedSession>, usize) {
        self.pause.pause(reason);
        let mut listeners = Vec::new();
        for accept in running.loops {
            match accept.task.await {
                Ok(listener) => listeners.push((accept.entry, listener)),
                Err(e) => tracing::error!("accept loop of {} failed: {e}", accept.entry.name()),
            }
        }
        let admin = running.admin.await.ok();
        let mut parked = Vec::new();
        let deadline = Instant::now() + limit;
        while self.ctx.live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::select! {
                Some(p) = self.parked.recv() => parked.push(p),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        while let Ok(p) = self.parked.try_recv() {
            parked.push(p);
        }
        let still_running = self.ctx.live.load(Ordering::SeqCst);
        (listeners, admin, parked, still_running)
    }

    /// Graceful stop: every session reaches a safe point (a PUT's last
    /// write lands), then the process exits.
    async fn shutdown(&mut self, running: Running) {
        let grace = Duration::from_secs(self.config.upgrade.shutdown_grace_secs);
        let (_, _, _, left) = self.pause_all(running, PauseReason::Shutdown, grace).await;
        if left > 0 {
            tracing::warn!("{left} sessions did not reach a safe point within {grace:?}");
        }
        self.drain().await;
        self.data.remove_published(std::process::id());
    }

    /// Waits (at most `upgrade.drain_secs`) for the connections that drain
    /// rather than migrate to finish, once every accept loop has stopped.
    async fn drain(&self) {
        let limit = Duration::from_secs(self.config.upgrade.drain_secs);
        let drains: Vec<_> = self.services.iter().map(|e| e.drain()).collect();
        // In turn is enough: the wait ends when the slowest is done either way.
        let all = async {
            for drain in drains {
                drain.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("connections still draining after {limit:?}; closing them");
        }
    }

    /// Continues a parked session in this process.
    pub(crate) fn resume_parked(&self, parked: ParkedSession) {
        let Some(entry) = self.services.iter().find(|e| e.name() == parked.service) else { return };
        let resumed = entry.decode_state_json(&parked.state).and_then(|state| {
            entry.resume(parked.conn.stream, state, parked.conn.read_buf, parked.conn.pending_out, self.ctx.clone())
        });
        if let Err(e) = resumed {
            tracing::error!("cannot resume a parked {} session: {e}", parked.service);
        }
    }

    pub(crate) fn push_history(&self, record: UpgradeRecord) {
        let mut history = self.admin.history.lock().unwrap_or_else(|p| p.into_inner());
        upgrade::history::push(&mut history, record);
    }

    pub(crate) fn history(&self) -> Vec<UpgradeRecord> {
        self.admin.history.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_history(&self, history: Vec<UpgradeRecord>) {
        *self.admin.history.lock().unwrap_or_else(|p| p.into_inner()) = history;
    }
}

/// The admin socket's view of the server.
pub(crate) struct AdminState {
    config: Config,
    registry: Arc<Registry>,
    pub listeners: Mutex<BTreeMap<String, String>>,
    started: SystemTime,
    stop: Arc<Notify>,
    upgrades: mpsc::Sender<UpgradeRequest>,
    pub history: Mutex<Vec<UpgradeRecord>>,
    /// Asked for their own part of the status.
    services: Vec<Arc<dyn ServiceEntry>>,
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
            listeners: self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            connections: self.registry.session_count(),
            sessions: self.registry.sessions(),
            transfers: self.registry.transfers(),
            recent_transfers: self.registry.recent_transfers(),
            counters: self.registry.counters(),
            upgrades: self.history.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            services: self.services.iter().filter_map(|s| Some((s.name().to_string(), s.status()?))).collect(),
        }
    }

    fn shutdown(&self) {
        self.stop.notify_one();
    }

    fn upgrade(&self, binary: Option<PathBuf>) -> Option<UpgradeTicket> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (delivered_tx, delivered_rx) = oneshot::channel();
        let request = UpgradeRequest { binary, reply: Some((reply_tx, delivered_rx)) };
        self.upgrades.try_send(request).ok()?;
        Some(UpgradeTicket { result: reply_rx, delivered: delivered_tx })
    }
}

/// The path this executable was started by, made absolute: what SIGUSR2
/// starts again. `argv[0]` keeps a symlink a symlink (so repointing it, or
/// replacing the file, picks up the new build); a bare command name found
/// through PATH falls back to the resolved executable.
fn started_from() -> io::Result<PathBuf> {
    match std::env::args_os().next().map(PathBuf::from) {
        Some(path) if path.components().count() > 1 => std::path::absolute(path),
        _ => std::env::current_exe(),
    }
}

/// CPU time (user and system) this process has used, µs: logged as it
/// exits after an upgrade, so that a benchmark can sum what each
/// generation cost whatever else runs on the machine.
fn process_cpu_us() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let micros = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec()).unwrap_or(0)
    };
    getrusage(UsageWho::RUSAGE_SELF).map(|u| micros(u.user_time()) + micros(u.system_time())).unwrap_or(0)
}

/// Every connection is a descriptor, and during a live upgrade both
/// processes hold them: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open file limit: {e}"),
    }
}

/// Asks a running server for its status over the admin socket.
pub async fn query_status(data: &std::path::Path) -> io::Result<Status> {
    match admin_request(data, &AdminRequest::Status).await? {
        admin::AdminResponse::Status(status) => Ok(*status),
        admin::AdminResponse::Error { message } => Err(io::Error::other(message)),
        other => Err(io::Error::other(format!("unexpected admin reply: {other:?}"))),
    }
}

/// Asks a running server to upgrade itself; resolves once the new process
/// serves (or the upgrade failed and the old one still does).
pub async fn request_upgrade(
    data: &std::path::Path,
    binary: Option<PathBuf>,
) -> io::Result<Result<UpgradeReport, String>> {
    match admin_request(data, &AdminRequest::Upgrade { binary }).await? {
        admin::AdminResponse::Upgraded(report) => Ok(Ok(report)),
        admin::AdminResponse::Error { message } => Ok(Err(message)),
        other => Err(io::Error::other(format!("unexpected admin reply: {other:?}"))),
    }
}

async fn admin_request(data: &std::path::Path, req: &AdminRequest) -> io::Result<admin::AdminResponse> {
    let socket = DataDir::new(data).socket();
    // A status request that meets a live upgrade may be accepted by the old
    // process as it exits, which closes the connection unanswered; asking
    // again reaches the new one. Only requests that change nothing are
    // repeated.
    let attempts = if matches!(req, AdminRequest::Status) { 5 } else { 1 };
    let mut attempt = 1;
    loop {
        match admin::request(&socket, req).await {
            Err(e) if attempt < attempts && is_cut_short(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => {
                return result.map_err(|e| {
                    io::Error::new(e.kind(), format!("no ferry server answers at {} ({e})", socket.display()))
                });
            }
        }
    }
}

/// Whether an admin exchange failed because the server closed the
/// connection under it (rather than because no server listens).
fn is_cut_short(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof)
}

/// What a status request answers while the server is being torn down.
fn admin_gone_status() -> Status {
    Status {
        pid: std::process::id(),
        version: version().to_string(),
        started_unix_ms: 0,
        uptime_secs: 0,
        data_dir: String::new(),
        root: String::new(),
        listeners: BTreeMap::new(),
        connections: 0,
        sessions: Vec::new(),
        transfers: Vec::new(),
        recent_transfers: Vec::new(),
        counters: Default::default(),
        upgrades: Vec::new(),
        services: BTreeMap::new(),
    }
}
