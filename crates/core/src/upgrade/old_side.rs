//! The old process's side of a live upgrade.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::task::JoinHandle;

use super::batches::{BATCH_SESSIONS, BATCH_TRANSFERRING, MAX_BATCHES, next_batch};
use super::channel::{MAX_FDS_PER_MESSAGE, MAX_MESSAGE, UPGRADE_FD_ENV, UpgradeChannel};
use super::handover::{HANDOVER_FORMAT, Handover, HandoverBuilder, ListenerRecord, SessionRecord};
use super::history::UpgradeRecord;
use super::{Message, ReadyInfo, UpgradeReport, now_unix_us};
use crate::listener::ParkedSession;
use crate::pause::PauseReason;
use crate::registry::now_unix_ms;
use crate::server::{AcceptLoop, Running, Runtime};
use crate::service::HandoverMode;
use crate::service_table::ServiceEntry;
use crate::version::version;

/// How long the sessions of one batch (or of the final group) get to reach
/// a safe point.
const PAUSE_LIMIT: Duration = Duration::from_secs(10);

/// Paused listeners and sessions as plain descriptors: sent to the new
/// process, and kept here until `READY` so that a rollback can resume them.
#[derive(Default)]
struct Bundle {
    listeners: Vec<(Arc<dyn ServiceEntry>, OwnedFd, String)>,
    admin: Option<OwnedFd>,
    sessions: Vec<BundledSession>,
}

struct BundledSession {
    service: &'static str,
    fd: OwnedFd,
    state: serde_json::Value,
    read_buf: Vec<u8>,
    pending_out: Vec<u8>,
    paused_mono_us: u64,
}

/// The new process, as the old one drives it.
struct Peer {
    channel: Arc<UpgradeChannel>,
    child: Child,
    deadline: Instant,
}

/// Hands every listener and session to `binary`, streamed (module docs).
/// On success the caller exits; on failure everything has been resumed
/// here and the reason is returned with the new `Running`.
pub(crate) async fn hand_over(
    rt: &mut Runtime,
    running: Running,
    binary: &Path,
) -> Result<UpgradeReport, (String, Running)> {
    let limit = Duration::from_secs(rt.config.upgrade.timeout_secs);
    let deadline = Instant::now() + limit;
    let mut record = UpgradeRecord {
        unix_ms: now_unix_ms(),
        old_pid: std::process::id(),
        old_version: version().to_string(),
        new_pid: None,
        new_version: None,
        binary: binary.display().to_string(),
        pause_gap_us: None,
        sessions_moved: 0,
        session_gap: None,
        outcome: String::new(),
    };

    // 1. Start the new executable while this one keeps serving.
    let (channel, child) = match start(rt, binary) {
        Ok(started) => started,
        Err(reason) => return Err(fail(rt, record, reason, running)),
    };
    record.new_pid = Some(child.id());
    let mut peer = Peer { channel: Arc::new(channel), child, deadline };

    // 2. It loads its config and prepares its stores, then says INIT.
    match wait_message(&peer.channel, &mut peer.child, deadline).await {
        Ok(Message::Init(v)) => record.new_version = Some(v),
        Ok(Message::Refuse(why)) => {
            kill(&mut peer.child);
            return Err(fail(rt, record, format!("the new process refused to start: {why}"), running));
        }
        Ok(other) => {
            kill(&mut peer.child);
            return Err(fail(rt, record, format!("unexpected message from the new process: {other:?}"), running));
        }
        Err(reason) => {
            kill(&mut peer.child);
            return Err(fail(rt, record, reason, running));
        }
    }

    // 3. Batch 0: the streamed services stop accepting and their listeners
    //    go first, so the new process accepts from now on (same sockets:
    //    nothing is refused meanwhile).
    let pause_started = now_unix_us();
    let t_pause = Instant::now();
    let streamed: BTreeSet<&'static str> =
        rt.services.iter().filter(|e| e.handover_mode() == HandoverMode::Streamed).map(|e| e.name()).collect();
    let header = |batch: u32, last: bool| Handover {
        format: HANDOVER_FORMAT,
        old_pid: std::process::id(),
        old_version: version().to_string(),
        pause_started_unix_us: pause_started,
        listeners: vec![],
        sessions: vec![],
        history: vec![],
        batch,
        last,
        session_services: vec![],
    };
    let Running { loops, admin } = running;
    let (early, rest): (Vec<AcceptLoop>, Vec<AcceptLoop>) =
        loops.into_iter().partition(|l| streamed.contains(l.entry.name()));
    for accept in &early {
        accept.stop.pause(PauseReason::Upgrade);
    }
    let mut first = Bundle::default();
    for accept in early {
        match accept.task.await {
            Ok(listener) => first.add_listener(accept.entry, listener),
            Err(e) => tracing::error!("accept loop of {} failed: {e}", accept.entry.name()),
        }
    }
    let mut held = Bundle::default();
    let mut h0 = header(0, false);
    h0.session_services = rt.ctx.sessions.services().into_iter().map(str::to_string).collect();
    held.append(first);
    let sent = match send_batch(&peer, &held, h0).await {
        Ok(()) => peer.taken(0).await,
        Err(reason) => Err(reason),
    };
    if let Err(reason) = sent {
        return Err(rollback(rt, record, reason, Some(peer), held, rest, Some(admin)));
    }

    // 4. The streamed services' sessions, a batch at a time, transferring
    //    ones first; the others keep serving meanwhile.
    let mut asked = BTreeSet::new();
    let mut batch = 0u32;
    loop {
        let running_ids = rt.ctx.sessions.ids_where(|s| streamed.contains(s));
        let transferring: BTreeSet<u64> = rt.ctx.registry.transfers().iter().map(|t| t.session).collect();
        let ids = next_batch(&running_ids, &transferring, &asked, BATCH_TRANSFERRING, BATCH_SESSIONS);
        if ids.is_empty() {
            break;
        }
        batch += 1;
        if batch >= MAX_BATCHES {
            let reason = format!("sessions kept appearing: more than {MAX_BATCHES} batches");
            return Err(rollback(rt, record, reason, Some(peer), held, rest, Some(admin)));
        }
        asked.extend(ids.iter().copied());
        let t_batch = Instant::now();
        rt.ctx.sessions.pause(&ids, PauseReason::Upgrade);
        let pause_limit = PAUSE_LIMIT.min(peer.left());
        let (parked, left) = collect(rt, &ids, pause_limit).await;
        let mut this = Bundle::default();
        this.add_sessions(parked);
        record.sessions_moved += this.sessions.len();
        if left > 0 {
            held.append(this);
            let reason = format!("{left} sessions did not reach a safe point within {pause_limit:?}");
            return Err(rollback(rt, record, reason, Some(peer), held, rest, Some(admin)));
        }
        if this.sessions.is_empty() {
            // They all closed instead of pausing.
            batch -= 1;
            continue;
        }
        let parked_in = t_batch.elapsed();
        let sent = send_batch(&peer, &this, header(batch, false)).await;
        let sent_in = t_batch.elapsed();
        let sent = match sent {
            Ok(()) => peer.taken(batch).await,
            Err(reason) => Err(reason),
        };
        tracing::debug!(
            batch,
            sessions = this.sessions.len(),
            parked_us = parked_in.as_micros() as u64,
            sent_us = sent_in.as_micros() as u64,
            taken_us = t_batch.elapsed().as_micros() as u64,
            "sent a handover batch"
        );
        held.append(this);
        if let Err(reason) = sent {
            return Err(rollback(rt, record, reason, Some(peer), held, rest, Some(admin)));
        }
    }
    let streamed_in = t_pause.elapsed();

    // 5. The final group: every other session (the all-at-once services',
    //    and any straggler) pauses at once, the stores stop writing, and
    //    the remaining listeners and the admin socket go with them.
    let pause_limit = PAUSE_LIMIT.min(peer.left());
    let (listeners, admin, parked, left) =
        rt.pause_all(Running { loops: rest, admin }, PauseReason::Upgrade, pause_limit).await;
    let mut last = Bundle::default();
    for (entry, listener) in listeners {
        last.add_listener(entry, listener);
    }
    if let Some(admin) = admin {
        match admin.into_std() {
            Ok(std) => last.admin = Some(OwnedFd::from(std)),
            Err(e) => tracing::error!("cannot detach the admin listener: {e}"),
        }
    }
    last.add_sessions(parked);
    record.sessions_moved += last.sessions.len();
    if left > 0 {
        held.append(last);
        let reason = format!("{left} sessions did not reach a safe point within {pause_limit:?}");
        return Err(rollback(rt, record, reason, Some(peer), held, vec![], None));
    }
    // Stores stop writing so the new process can take over their files.
    let prepared: Vec<Arc<dyn ServiceEntry>> = rt.services.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        for entry in &prepared {
            entry.prepare_handover().map_err(|e| format!("{}: {e}", entry.name()))?;
        }
        Ok::<_, String>(())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(reason) = flushed {
        held.append(last);
        return Err(rollback(
            rt,
            record,
            format!("cannot prepare the stores: {reason}"),
            Some(peer),
            held,
            vec![],
            None,
        ));
    }
    batch += 1;
    let mut final_header = header(batch, true);
    final_header.history = rt.history();
    let sent = send_batch(&peer, &last, final_header).await;
    let final_sessions = last.sessions.len();
    held.append(last);
    if let Err(reason) = sent {
        return Err(rollback(rt, record, reason, Some(peer), held, vec![], None));
    }
    let sent_in = t_pause.elapsed();

    // 6. The new process resumes the last batch and says READY.
    let info = match wait_message(&peer.channel, &mut peer.child, deadline).await {
        Ok(Message::Ready(json)) => match serde_json::from_slice::<ReadyInfo>(&json) {
            Ok(info) => info,
            Err(e) => {
                let reason = format!("malformed READY: {e}");
                return Err(rollback(rt, record, reason, Some(peer), held, vec![], None));
            }
        },
        Ok(Message::Refuse(why)) => {
            let reason = format!("the new process refused the handover: {why}");
            return Err(rollback(rt, record, reason, Some(peer), held, vec![], None));
        }
        Ok(other) => {
            let reason = format!("unexpected message from the new process: {other:?}");
            return Err(rollback(rt, record, reason, Some(peer), held, vec![], None));
        }
        Err(reason) => return Err(rollback(rt, record, reason, Some(peer), held, vec![], None)),
    };
    tracing::info!(
        sessions = record.sessions_moved,
        batches = batch + 1,
        final_sessions,
        streamed_us = streamed_in.as_micros() as u64,
        sent_us = sent_in.as_micros() as u64,
        ready_us = t_pause.elapsed().as_micros() as u64,
        "handover phases (from the first pause)"
    );
    // The new process owns everything now; our copies close as we exit.
    drop(held);
    Ok(UpgradeReport {
        old_pid: std::process::id(),
        old_version: version().to_string(),
        new_pid: info.pid,
        new_version: info.version,
        pause_gap_us: info.pause_gap_us,
        sessions_moved: info.sessions,
        session_gap: info.session_gap,
        batches: info.batches,
        session_gaps_us: info.session_gaps_us,
    })
}

impl Bundle {
    fn add_listener(&mut self, entry: Arc<dyn ServiceEntry>, listener: TcpListener) {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        match listener.into_std() {
            Ok(std) => self.listeners.push((entry, OwnedFd::from(std), addr)),
            Err(e) => tracing::error!("cannot detach the {} listener: {e}", entry.name()),
        }
    }

    fn add_sessions(&mut self, parked: Vec<ParkedSession>) {
        for p in parked {
            let state = match serde_json::from_slice(&p.state) {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!("{} session state is not JSON: {e}", p.service);
                    continue;
                }
            };
            match p.conn.stream.into_std() {
                Ok(std) => self.sessions.push(BundledSession {
                    service: p.service,
                    fd: OwnedFd::from(std),
                    state,
                    read_buf: p.conn.read_buf,
                    pending_out: p.conn.pending_out,
                    paused_mono_us: p.paused_mono_us,
                }),
                Err(e) => tracing::error!("cannot detach a {} connection: {e}", p.service),
            }
        }
    }

    fn append(&mut self, mut other: Bundle) {
        self.listeners.append(&mut other.listeners);
        if other.admin.is_some() {
            debug_assert!(self.admin.is_none(), "the admin socket is sent once");
            self.admin = other.admin;
        }
        self.sessions.append(&mut other.sessions);
    }
}

impl Peer {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits until the new process has resumed `batch` (or dies, refuses,
    /// or runs out of time): one batch in flight at a time, so that no
    /// batch waits in the channel while its sessions are paused.
    async fn taken(&mut self, batch: u32) -> Result<(), String> {
        match wait_message(&self.channel, &mut self.child, self.deadline).await? {
            Message::Took(b) if b == batch => Ok(()),
            Message::Refuse(why) => Err(format!("the new process refused the handover: {why}")),
            other => Err(format!("unexpected message from the new process: {other:?}")),
        }
    }
}

/// Waits until each of `ids` has parked (and been delivered) or ended, at
/// most `limit`. Returns the parked sessions and how many are still running.
async fn collect(rt: &mut Runtime, ids: &[u64], limit: Duration) -> (Vec<ParkedSession>, usize) {
    let deadline = Instant::now() + limit;
    let mut parked: Vec<ParkedSession> = Vec::with_capacity(ids.len());
    loop {
        while let Ok(p) = rt.parked.try_recv() {
            parked.push(p);
        }
        // A session leaves the table only after delivering itself, so one
        // gone from it is either in `parked` by now or closed.
        let running = ids.iter().filter(|id| !parked.iter().any(|p| p.id == **id) && rt.ctx.sessions.contains(**id));
        let left = running.count();
        if left == 0 {
            while let Ok(p) = rt.parked.try_recv() {
                parked.push(p);
            }
            return (parked, 0);
        }
        if Instant::now() >= deadline {
            return (parked, left);
        }
        tokio::select! {
            Some(p) = rt.parked.recv() => parked.push(p),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
}

/// Encodes `bundle` under `header` and sends its descriptors and blob.
async fn send_batch(peer: &Peer, bundle: &Bundle, header: Handover) -> Result<(), String> {
    let (blob, fds) = encode(bundle, header)?;
    let sender = peer.channel.clone();
    let remaining = peer.left().max(Duration::from_millis(100));
    tokio::task::spawn_blocking(move || send_all(&sender, &fds, &blob, remaining))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| format!("cannot send the handover: {e}"))
}

fn start(rt: &Runtime, binary: &Path) -> Result<(UpgradeChannel, Child), String> {
    let (channel, child_end) = UpgradeChannel::pair().map_err(|e| format!("cannot create the upgrade channel: {e}"))?;
    // Its own process group, so a rollback can stop it and anything it
    // started (a wrapper script's children).
    let child = Command::new(binary)
        .args(&rt.args)
        .env(UPGRADE_FD_ENV, child_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    drop(child_end);
    Ok((channel, child))
}

/// Waits for the next message, noticing at once if the new process dies.
async fn wait_message(channel: &Arc<UpgradeChannel>, child: &mut Child, deadline: Instant) -> Result<Message, String> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the new process exited ({status}) before it was ready"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the new process did not become ready in time (upgrade.timeout_secs)".to_string());
        }
        let ch = channel.clone();
        let slice = left.min(Duration::from_millis(50));
        let got = tokio::task::spawn_blocking(move || ch.recv(slice)).await.map_err(|e| e.to_string())?;
        match got {
            Ok(Some((bytes, _))) => return Message::decode(&bytes),
            Ok(None) => continue,
            Err(e) => {
                // Usually the process is exiting: report its status if it
                // comes within a moment.
                for _ in 0..50 {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("the new process exited ({status}) before it was ready"));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Err(format!("the new process closed the upgrade channel: {e}"));
            }
        }
    }
}

/// Stops the new process and its process group, and reaps it.
fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The upgrade failed before anything paused.
fn fail(rt: &Runtime, mut record: UpgradeRecord, reason: String, running: Running) -> (String, Running) {
    record.outcome = format!("failed: {reason}");
    rt.push_history(record);
    (reason, running)
}

fn encode(bundle: &Bundle, mut header: Handover) -> Result<(Vec<u8>, Vec<RawFd>), String> {
    let mut fds = Vec::new();
    let mut raw = HandoverBuilder::default();
    for (entry, fd, addr) in &bundle.listeners {
        header.listeners.push(ListenerRecord { name: entry.name().to_string(), addr: addr.clone(), fd: fds.len() });
        fds.push(fd.as_raw_fd());
    }
    if let Some(fd) = &bundle.admin {
        header.listeners.push(ListenerRecord { name: "admin".into(), addr: String::new(), fd: fds.len() });
        fds.push(fd.as_raw_fd());
    }
    for s in &bundle.sessions {
        header.sessions.push(SessionRecord {
            service: s.service.to_string(),
            fd: fds.len(),
            state: s.state.clone(),
            read_buf: raw.bytes(&s.read_buf),
            pending_out: raw.bytes(&s.pending_out),
            paused_mono_us: s.paused_mono_us,
        });
        fds.push(s.fd.as_raw_fd());
    }
    let blob = raw.finish(&header).map_err(|e| e.to_string())?;
    Ok((blob, fds))
}

fn send_all(channel: &UpgradeChannel, fds: &[RawFd], blob: &[u8], timeout: Duration) -> Result<(), String> {
    channel.set_send_timeout(timeout).map_err(|e| e.to_string())?;
    let err = |e: std::io::Error| e.to_string();
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        channel.send(&Message::Fds.encode(), batch).map_err(err)?;
    }
    channel.send(&Message::Blob(blob.len() as u64).encode(), &[]).map_err(err)?;
    for chunk in blob.chunks(MAX_MESSAGE - 1) {
        channel.send(&Message::Chunk(chunk.to_vec()).encode(), &[]).map_err(err)?;
    }
    channel.send(&Message::End.encode(), &[]).map_err(err)
}

/// The upgrade failed after something paused: stop the new process, then
/// resume here every session and listener — those not yet sent, and those
/// sent, from the copies and states kept since (docs/upgrade.md, Rollback).
/// `loops` and `admin` are what still runs here.
fn rollback(
    rt: &mut Runtime,
    mut record: UpgradeRecord,
    reason: String,
    peer: Option<Peer>,
    held: Bundle,
    loops: Vec<AcceptLoop>,
    admin: Option<JoinHandle<UnixListener>>,
) -> (String, Running) {
    tracing::warn!("rolling back the upgrade: {reason}");
    // First: once it is gone, no other process can touch these sockets.
    if let Some(mut peer) = peer {
        kill(&mut peer.child);
    }
    for entry in &rt.services {
        entry.resume_after_rollback();
    }
    rt.pause.resume();
    rt.ctx.sessions.resume_all();
    // Sessions that parked after their deadline are resumed by the run
    // loop as stragglers.
    let mut loops = loops;
    for (entry, fd, _) in held.listeners {
        let std = std::net::TcpListener::from(fd);
        match TcpListener::from_std(std) {
            Ok(listener) => loops.push(rt.spawn_accept(entry, listener)),
            Err(e) => tracing::error!("cannot restore the {} listener: {e}", entry.name()),
        }
    }
    let admin = match (admin, held.admin) {
        (Some(running), _) => running,
        (None, fd) => {
            let admin_listener = fd
                .and_then(|fd| UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).ok())
                .or_else(|| {
                    let _ = std::fs::remove_file(rt.data.socket());
                    UnixListener::bind(rt.data.socket()).ok()
                });
            match admin_listener {
                Some(listener) => rt.spawn_admin(listener),
                None => {
                    tracing::error!("the admin socket could not be restored");
                    tokio::spawn(std::future::pending())
                }
            }
        }
    };
    for s in held.sessions {
        let Some(entry) = rt.services.iter().find(|e| e.name() == s.service).cloned() else { continue };
        let std = std::net::TcpStream::from(s.fd);
        let resumed = TcpStream::from_std(std).map_err(|e| e.to_string()).and_then(|stream| {
            let state = entry.decode_state(&s.state)?;
            entry.resume(stream, state, s.read_buf, s.pending_out, rt.ctx.clone())
        });
        if let Err(e) = resumed {
            tracing::error!("cannot resume a {} session after rollback: {e}", s.service);
        }
    }
    // The new process may have published its own pid before it failed.
    let listen = rt.admin.listeners.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Err(e) = rt.publish(&listen) {
        tracing::error!("cannot republish the listen and pid files: {e}");
    }
    super::sd_notify::notify(&format!("MAINPID={}", std::process::id()));
    record.outcome = format!("rolled back: {reason}");
    rt.push_history(record);
    (reason, Running { loops, admin })
}
