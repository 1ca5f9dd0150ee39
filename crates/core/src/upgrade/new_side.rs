//! The new process's side of a live upgrade: announce readiness, then
//! take the handover a batch at a time — check every session of a batch,
//! adopt its listeners (accepting at once), resume its sessions — and say
//! READY after the last batch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener};

use super::batches::refused_batch;
use super::channel::UpgradeChannel;
use super::gaps::{GapLog, ResumeStamp};
use super::handover::{DecodedHandover, MAX_HANDOVER_BYTES};
use super::history::UpgradeRecord;
use super::{Message, ReadyInfo, now_unix_us, sd_notify};
use crate::registry::now_unix_ms;
use crate::server::{Running, Runtime};
use crate::version::version;

/// Set in the environment of a build under test to make it refuse every
/// handover, at the first batch that carries sessions (or the last), so
/// that sessions have paused and nothing has run here yet: how the
/// rollback path is exercised end to end.
pub const REFUSE_HANDOVER_ENV: &str = "FERRY_TEST_REFUSE_HANDOVER";
/// Set to `N` in the environment of a build under test to make it refuse
/// batch `N` of a streamed handover (0: the listeners), after it has
/// resumed the batches before it: how a rollback in mid-stream is
/// exercised end to end.
pub const REFUSE_BATCH_ENV: &str = "FERRY_TEST_REFUSE_BATCH";
/// How long a refusing process waits for the old one to read the refusal.
const LINGER: Duration = Duration::from_secs(3);
/// How long READY waits for the last resumed sessions to record their gap.
const GAP_WAIT: Duration = Duration::from_secs(2);

/// Takes over from the process that started this one.
pub(crate) async fn adopt(rt: &mut Runtime, channel: UpgradeChannel) -> Result<Running, String> {
    let limit = Duration::from_secs(rt.config.upgrade.timeout_secs);
    let deadline = Instant::now() + limit;
    channel.send(&Message::Init(version().to_string()).encode(), &[]).map_err(|e| format!("cannot send INIT: {e}"))?;
    let channel = Arc::new(channel);
    let refuse = {
        let channel = channel.clone();
        move |reason: String| {
            let _ = channel.send(&Message::Refuse(reason.clone()).encode(), &[]);
            linger(&channel);
            reason
        }
    };
    let refuse_at = refused_batch(std::env::var_os(REFUSE_BATCH_ENV));
    let gaps = GapLog::new();
    let mut loops = Vec::new();
    let mut listen = BTreeMap::new();
    let mut admin_fd: Option<OwnedFd> = None;
    let mut sessions = 0usize;
    let mut stamped = 0usize;
    let mut batches = 0u32;
    let last = loop {
        let receiver = channel.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let (blob, fds) = tokio::task::spawn_blocking(move || receive(&receiver, left))
            .await
            .map_err(|e| format!("receive task failed: {e}"))??;
        let t_received = Instant::now();
        let received_mono = super::clock::monotonic_us();
        let handover = DecodedHandover::decode(&blob, fds.len()).map_err(|e| refuse(e.to_string()))?;
        let header = &handover.header;
        let carries_sessions = !header.sessions.is_empty() || header.last;
        if carries_sessions && std::env::var_os(REFUSE_HANDOVER_ENV).is_some() {
            return Err(refuse(format!("refused by {REFUSE_HANDOVER_ENV}")));
        }
        if refuse_at == Some(header.batch) {
            return Err(refuse(format!("batch {} refused by {REFUSE_BATCH_ENV}", header.batch)));
        }
        // Every service that will send sessions must exist here: known
        // from batch 0, before any session moves.
        for name in &header.session_services {
            if !rt.services.iter().any(|e| e.name() == name) {
                return Err(refuse(format!("this build has no {name} service")));
            }
        }
        // Decode and check every session of the batch before touching any:
        // a refusal leaves the old process free to resume all of them.
        let mut states = Vec::with_capacity(header.sessions.len());
        for s in &header.sessions {
            let entry = rt
                .services
                .iter()
                .find(|e| e.name() == s.service)
                .ok_or_else(|| refuse(format!("this build has no {} service", s.service)))?;
            let state = entry.decode_state(&s.state).map_err(|e| refuse(format!("cannot continue a session: {e}")))?;
            states.push((entry.clone(), state));
        }

        if header.last {
            // The old process has stopped writing: catch stores up with its
            // tail.
            let services = rt.services.clone();
            tokio::task::spawn_blocking(move || {
                for entry in &services {
                    entry.catch_up().map_err(|e| format!("{}: {e}", entry.name()))?;
                }
                Ok::<_, String>(())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|e| refuse(format!("cannot catch up the stores: {e}")))?;
        }

        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut take = |index: usize| fds.get_mut(index).and_then(Option::take);
        // Prepare the batch's listeners before touching its sessions: up to
        // here a failure can still be refused.
        let mut prepared = Vec::new();
        for l in &header.listeners {
            let Some(fd) = take(l.fd) else { continue };
            if l.name == "admin" {
                admin_fd = Some(fd);
                continue;
            }
            match rt.services.iter().find(|e| e.name() == l.name).cloned() {
                Some(entry) => {
                    let listener = TcpListener::from_std(std::net::TcpListener::from(fd))
                        .map_err(|e| refuse(format!("cannot adopt the {} listener: {e}", entry.name())))?;
                    prepared.push((entry, listener));
                }
                None => tracing::warn!("closing the {} listener: this build has no such service", l.name),
            }
        }
        let mut admin_listener = None;
        if header.last {
            for entry in rt.services.clone() {
                let known = listen.contains_key(entry.name()) || prepared.iter().any(|(e, _)| e.name() == entry.name());
                if known {
                    continue;
                }
                // A service the old process did not run.
                let addr = SocketAddr::new(rt.config.bind, entry.port());
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| refuse(format!("cannot bind {} on {addr}: {e}", entry.name())))?;
                prepared.push((entry, listener));
            }
            admin_listener = Some(match admin_fd.take() {
                Some(fd) => UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
                    .map_err(|e| refuse(format!("cannot adopt the admin socket: {e}")))?,
                None => {
                    let _ = std::fs::remove_file(rt.data.socket());
                    UnixListener::bind(rt.data.socket())
                        .map_err(|e| refuse(format!("cannot bind the admin socket: {e}")))?
                }
            });
        }

        // This batch's sessions run here from now on.
        for (s, (entry, state)) in header.sessions.iter().zip(states) {
            let Some(fd) = take(s.fd) else { continue };
            let read_buf = handover.slice(s.read_buf).map(<[u8]>::to_vec).unwrap_or_default();
            let pending_out = handover.slice(s.pending_out).map(<[u8]>::to_vec).unwrap_or_default();
            let mut ctx = rt.ctx.clone();
            ctx.handover = Some(ResumeStamp { paused_mono_us: s.paused_mono_us, log: gaps.clone() });
            let resumed = TcpStream::from_std(std::net::TcpStream::from(fd))
                .map_err(|e| e.to_string())
                .and_then(|stream| entry.resume(stream, state, read_buf, pending_out, ctx));
            match resumed {
                Ok(()) => {
                    sessions += 1;
                    stamped += usize::from(s.paused_mono_us > 0);
                }
                Err(e) => tracing::error!("cannot resume a {} session: {e}", s.service),
            }
        }
        for (entry, listener) in prepared {
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            listen.insert(entry.name().to_string(), addr);
            loops.push(rt.spawn_accept(entry, listener));
        }
        batches += 1;
        let first_paused = header.sessions.iter().map(|s| s.paused_mono_us).filter(|&t| t > 0).min();
        tracing::debug!(
            batch = header.batch,
            sessions = header.sessions.len(),
            listeners = header.listeners.len(),
            received_after_first_pause_us = first_paused.map(|t| received_mono.saturating_sub(t)),
            resumed_us = t_received.elapsed().as_micros() as u64,
            "took a handover batch"
        );
        if !header.last {
            channel
                .send(&Message::Took(header.batch).encode(), &[])
                .map_err(|e| format!("cannot acknowledge batch {}: {e}", header.batch))?;
        }
        if header.last {
            let Some(admin_listener) = admin_listener else {
                return Err(refuse("the last batch left no admin socket".to_string()));
            };
            break (handover, admin_listener);
        }
    };
    let (handover, admin_listener) = last;
    let admin = rt.spawn_admin(admin_listener);
    if let Err(e) = rt.publish(&listen) {
        tracing::error!("serving, but cannot publish the listen and pid files: {e}");
    }
    let gap = now_unix_us().saturating_sub(handover.header.pause_started_unix_us);

    // Every resumed task records its own gap as it first runs; the last
    // ones may still be queued.
    let waited = Instant::now() + GAP_WAIT;
    while gaps.count() < stamped && Instant::now() < waited {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (session_gap, session_gaps_us) = gaps.summary();
    let pid = std::process::id();
    let mut history = handover.header.history.clone();
    super::history::push(
        &mut history,
        UpgradeRecord {
            unix_ms: now_unix_ms(),
            old_pid: handover.header.old_pid,
            old_version: handover.header.old_version.clone(),
            new_pid: Some(pid),
            new_version: Some(version().to_string()),
            binary: rt.exe.display().to_string(),
            pause_gap_us: Some(gap),
            sessions_moved: sessions,
            session_gap: Some(session_gap),
            outcome: "ok".into(),
        },
    );
    rt.set_history(history);
    sd_notify::notify(&format!("MAINPID={pid}\nREADY=1"));
    let info = ReadyInfo {
        pid,
        version: version().to_string(),
        pause_gap_us: gap,
        sessions,
        session_gap,
        batches,
        session_gaps_us,
    };
    let json = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
    if let Err(e) = channel.send(&Message::Ready(json).encode(), &[]) {
        tracing::warn!("cannot tell the old process we are ready: {e}");
    }
    tracing::info!(
        sessions,
        batches,
        handover_us = gap,
        session_gap_p50_us = session_gap.p50_us,
        session_gap_p99_us = session_gap.p99_us,
        session_gap_max_us = session_gap.max_us,
        old_pid = handover.header.old_pid,
        "took over from the old process"
    );
    Ok(Running { loops, admin })
}

/// After a refusal: keep the channel open, reading and dropping whatever
/// the old process still sends, until it closes the channel (it kills this
/// process once it has read the refusal) or [`LINGER`] passes. Exiting at
/// once, with its batches unread, would reset the channel, and the old
/// process could see the reset before the refusal and report that instead.
fn linger(channel: &UpgradeChannel) {
    let until = Instant::now() + LINGER;
    while Instant::now() < until {
        match channel.recv(Duration::from_millis(50)) {
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

/// Receives descriptor batches and the blob, up to `END`.
fn receive(channel: &UpgradeChannel, limit: Duration) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    let deadline = Instant::now() + limit;
    let mut fds = Vec::new();
    let mut blob: Option<(usize, Vec<u8>)> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the old process did not send the handover in time".into());
        }
        let Some((bytes, mut received)) = channel.recv(left).map_err(|e| e.to_string())? else { continue };
        match Message::decode(&bytes)? {
            Message::Fds => fds.append(&mut received),
            Message::Blob(len) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_HANDOVER_BYTES {
                    return Err(format!("handover of {len} bytes is over the limit"));
                }
                blob = Some((len, Vec::with_capacity(len)));
            }
            Message::Chunk(chunk) => {
                let (len, data) = blob.as_mut().ok_or("blob data before its header")?;
                if data.len() + chunk.len() > *len {
                    return Err("blob longer than announced".into());
                }
                data.extend_from_slice(&chunk);
            }
            Message::End => {
                let (len, data) = blob.ok_or("END before the blob")?;
                if data.len() != len {
                    return Err(format!("blob of {} bytes, {len} announced", data.len()));
                }
                return Ok((data, fds));
            }
            other => return Err(format!("unexpected message during handover: {other:?}")),
        }
    }
}
