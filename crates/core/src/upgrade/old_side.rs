//! The old process's side of a live upgrade.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener};

use super::channel::{MAX_FDS_PER_MESSAGE, MAX_MESSAGE, UPGRADE_FD_ENV, UpgradeChannel};
use super::handover::{HANDOVER_FORMAT, Handover, HandoverBuilder, ListenerRecord, SessionRecord};
use super::history::UpgradeRecord;
use super::{Message, ReadyInfo, UpgradeReport, now_unix_us};
use crate::listener::ParkedSession;
use crate::pause::PauseReason;
use crate::registry::now_unix_ms;
use crate::server::{Running, Runtime};
use crate::service_table::ServiceEntry;
use crate::version::version;

/// How long sessions get to reach a safe point.
const PAUSE_LIMIT: Duration = Duration::from_secs(10);

/// Everything paused, as plain descriptors: sent to the new process, or
/// restored here on rollback.
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
}

/// Hands every listener and session to `binary`. On success the caller
/// exits; on failure everything has been resumed here and the reason is
/// returned with the new `Running`.
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
        outcome: String::new(),
    };

    // 1. Start the new executable while this one keeps serving.
    let (channel, child) = match start(rt, binary) {
        Ok(started) => started,
        Err(reason) => return Err(fail(rt, record, reason, running)),
    };
    record.new_pid = Some(child.id());
    let channel = Arc::new(channel);

    // 2. It loads its config and prepares its stores, then says INIT.
    let mut child = child;
    match wait_message(&channel, &mut child, deadline).await {
        Ok(Message::Init(v)) => record.new_version = Some(v),
        Ok(Message::Refuse(why)) => {
            kill(&mut child);
            return Err(fail(rt, record, format!("the new process refused to start: {why}"), running));
        }
        Ok(other) => {
            kill(&mut child);
            return Err(fail(rt, record, format!("unexpected message from the new process: {other:?}"), running));
        }
        Err(reason) => {
            kill(&mut child);
            return Err(fail(rt, record, reason, running));
        }
    }

    // 3. Pause every session at a safe point.
    let pause_started = now_unix_us();
    let t_pause = Instant::now();
    let pause_limit = PAUSE_LIMIT.min(deadline.saturating_duration_since(Instant::now()));
    let (listeners, admin, parked, left) = rt.pause_all(running, PauseReason::Upgrade, pause_limit).await;
    let paused_in = t_pause.elapsed();
    let bundle = bundle(listeners, admin, parked);
    if left > 0 {
        kill(&mut child);
        let reason = format!("{left} sessions did not reach a safe point within {pause_limit:?}");
        return Err(rollback(rt, record, reason, bundle));
    }
    record.sessions_moved = bundle.sessions.len();
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
        kill(&mut child);
        return Err(rollback(rt, record, format!("cannot prepare the stores: {reason}"), bundle));
    }

    // 4. Send descriptors and the blob.
    let header = Handover {
        format: HANDOVER_FORMAT,
        old_pid: std::process::id(),
        old_version: version().to_string(),
        pause_started_unix_us: pause_started,
        listeners: vec![],
        sessions: vec![],
        history: rt.history(),
    };
    let (blob, fds) = match encode(&bundle, header) {
        Ok(encoded) => encoded,
        Err(reason) => {
            kill(&mut child);
            return Err(rollback(rt, record, reason, bundle));
        }
    };
    let encoded_in = t_pause.elapsed();
    let blob_len = blob.len();
    let sender = channel.clone();
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let sent = tokio::task::spawn_blocking(move || send_all(&sender, &fds, &blob, remaining)).await;
    let sent_in = t_pause.elapsed();
    if let Err(reason) = sent.map_err(|e| e.to_string()).and_then(|r| r) {
        kill(&mut child);
        return Err(rollback(rt, record, format!("cannot send the handover: {reason}"), bundle));
    }

    // 5. The new process resumes everything and says READY.
    let info = match wait_message(&channel, &mut child, deadline).await {
        Ok(Message::Ready(json)) => match serde_json::from_slice::<ReadyInfo>(&json) {
            Ok(info) => info,
            Err(e) => {
                kill(&mut child);
                return Err(rollback(rt, record, format!("malformed READY: {e}"), bundle));
            }
        },
        Ok(Message::Refuse(why)) => {
            kill(&mut child);
            return Err(rollback(rt, record, format!("the new process refused the handover: {why}"), bundle));
        }
        Ok(other) => {
            kill(&mut child);
            return Err(rollback(rt, record, format!("unexpected message from the new process: {other:?}"), bundle));
        }
        Err(reason) => {
            kill(&mut child);
            return Err(rollback(rt, record, reason, bundle));
        }
    };
    tracing::info!(
        sessions = record.sessions_moved,
        blob_bytes = blob_len,
        paused_us = paused_in.as_micros() as u64,
        encoded_us = encoded_in.as_micros() as u64,
        sent_us = sent_in.as_micros() as u64,
        ready_us = t_pause.elapsed().as_micros() as u64,
        "handover phases (from the pause)"
    );
    // The new process owns everything now; our copies close as we exit.
    drop(bundle);
    Ok(UpgradeReport {
        old_pid: std::process::id(),
        old_version: version().to_string(),
        new_pid: info.pid,
        new_version: info.version,
        pause_gap_us: info.pause_gap_us,
        sessions_moved: info.sessions,
    })
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

fn bundle(
    listeners: Vec<(Arc<dyn ServiceEntry>, TcpListener)>,
    admin: Option<UnixListener>,
    parked: Vec<ParkedSession>,
) -> Bundle {
    let mut bundle = Bundle { listeners: Vec::new(), admin: None, sessions: Vec::new() };
    for (entry, listener) in listeners {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        match listener.into_std() {
            Ok(std) => bundle.listeners.push((entry, OwnedFd::from(std), addr)),
            Err(e) => tracing::error!("cannot detach the {} listener: {e}", entry.name()),
        }
    }
    if let Some(admin) = admin {
        match admin.into_std() {
            Ok(std) => bundle.admin = Some(OwnedFd::from(std)),
            Err(e) => tracing::error!("cannot detach the admin listener: {e}"),
        }
    }
    for p in parked {
        let state = match serde_json::from_slice(&p.state) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!("{} session state is not JSON: {e}", p.service);
                continue;
            }
        };
        match p.conn.stream.into_std() {
            Ok(std) => bundle.sessions.push(BundledSession {
                service: p.service,
                fd: OwnedFd::from(std),
                state,
                read_buf: p.conn.read_buf,
                pending_out: p.conn.pending_out,
            }),
            Err(e) => tracing::error!("cannot detach a {} connection: {e}", p.service),
        }
    }
    bundle
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

/// The upgrade failed after sessions paused: resume everything here.
fn rollback(rt: &mut Runtime, mut record: UpgradeRecord, reason: String, bundle: Bundle) -> (String, Running) {
    tracing::warn!("rolling back the upgrade: {reason}");
    for entry in &rt.services {
        entry.resume_after_rollback();
    }
    rt.pause.resume();
    // Sessions that parked after the pause deadline are resumed by the run
    // loop as stragglers.
    let mut loops = Vec::new();
    for (entry, fd, _) in bundle.listeners {
        let std = std::net::TcpListener::from(fd);
        match TcpListener::from_std(std) {
            Ok(listener) => loops.push((entry.clone(), entry.spawn_accept(listener, rt.ctx.clone()))),
            Err(e) => tracing::error!("cannot restore the {} listener: {e}", entry.name()),
        }
    }
    let admin_listener = bundle
        .admin
        .and_then(|fd| UnixListener::from_std(std::os::unix::net::UnixListener::from(fd)).ok())
        .or_else(|| {
            let _ = std::fs::remove_file(rt.data.socket());
            UnixListener::bind(rt.data.socket()).ok()
        });
    let admin = match admin_listener {
        Some(listener) => rt.spawn_admin(listener),
        None => {
            tracing::error!("the admin socket could not be restored");
            tokio::spawn(std::future::pending())
        }
    };
    for s in bundle.sessions {
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
