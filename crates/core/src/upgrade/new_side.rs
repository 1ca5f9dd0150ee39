//! The new process's side of a live upgrade: announce readiness, receive
//! the descriptors and the blob, check that every session can be
//! continued, then take over listeners and sessions and say READY.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener};

use super::channel::UpgradeChannel;
use super::handover::{DecodedHandover, MAX_HANDOVER_BYTES};
use super::history::UpgradeRecord;
use super::{Message, ReadyInfo, now_unix_us, sd_notify};
use crate::registry::now_unix_ms;
use crate::server::{Running, Runtime};
use crate::version::version;

/// Set in the environment of a build under test to make it refuse every
/// handover (how the rollback path is exercised end to end).
pub const REFUSE_HANDOVER_ENV: &str = "FERRY_TEST_REFUSE_HANDOVER";

/// Takes over from the process that started this one.
pub(crate) async fn adopt(rt: &mut Runtime, channel: UpgradeChannel) -> Result<Running, String> {
    let limit = Duration::from_secs(rt.config.upgrade.timeout_secs);
    channel.send(&Message::Init(version().to_string()).encode(), &[]).map_err(|e| format!("cannot send INIT: {e}"))?;
    let channel = std::sync::Arc::new(channel);
    let receiver = channel.clone();
    let received = tokio::task::spawn_blocking(move || receive(&receiver, limit))
        .await
        .map_err(|e| format!("receive task failed: {e}"))??;
    let (blob, fds) = received;
    let t_received = Instant::now();
    let refuse = |reason: String| {
        let _ = channel.send(&Message::Refuse(reason.clone()).encode(), &[]);
        reason
    };
    let handover = DecodedHandover::decode(&blob, fds.len()).map_err(|e| refuse(e.to_string()))?;
    if std::env::var_os(REFUSE_HANDOVER_ENV).is_some() {
        return Err(refuse(format!("refused by {REFUSE_HANDOVER_ENV}")));
    }
    // Decode and check every session before touching any: a refusal must
    // leave the old process free to resume all of them.
    let mut states = Vec::with_capacity(handover.header.sessions.len());
    for s in &handover.header.sessions {
        let entry = rt
            .services
            .iter()
            .find(|e| e.name() == s.service)
            .ok_or_else(|| refuse(format!("this build has no {} service", s.service)))?;
        let state = entry.decode_state(&s.state).map_err(|e| refuse(format!("cannot continue a session: {e}")))?;
        states.push((entry.clone(), state));
    }

    // The old process has stopped writing: catch stores up with its tail.
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

    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |index: usize| fds.get_mut(index).and_then(Option::take);
    let mut inherited: BTreeMap<String, OwnedFd> = BTreeMap::new();
    let mut admin_fd = None;
    for l in &handover.header.listeners {
        if let Some(fd) = take(l.fd) {
            if l.name == "admin" {
                admin_fd = Some(fd);
            } else {
                inherited.insert(l.name.clone(), fd);
            }
        }
    }

    // Prepare every listener before touching any session: up to here a
    // failure can still be refused, and the old process resumes everything.
    let mut prepared = Vec::new();
    for entry in rt.services.clone() {
        let listener = match inherited.remove(entry.name()) {
            Some(fd) => TcpListener::from_std(std::net::TcpListener::from(fd))
                .map_err(|e| refuse(format!("cannot adopt the {} listener: {e}", entry.name())))?,
            None => {
                // A service the old process did not run.
                let addr = SocketAddr::new(rt.config.bind, entry.port());
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| refuse(format!("cannot bind {} on {addr}: {e}", entry.name())))?
            }
        };
        prepared.push((entry, listener));
    }
    for name in inherited.keys() {
        tracing::warn!("closing the {name} listener: this build has no such service");
    }
    let admin_listener = match admin_fd {
        Some(fd) => UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
            .map_err(|e| refuse(format!("cannot adopt the admin socket: {e}")))?,
        None => {
            let _ = std::fs::remove_file(rt.data.socket());
            UnixListener::bind(rt.data.socket()).map_err(|e| refuse(format!("cannot bind the admin socket: {e}")))?
        }
    };

    let prepared_in = t_received.elapsed();
    // The point of no return: sessions run here from now on.
    let sessions = handover.header.sessions.len();
    for (s, (entry, state)) in handover.header.sessions.iter().zip(states) {
        let Some(fd) = take(s.fd) else { continue };
        let read_buf = handover.slice(s.read_buf).map(<[u8]>::to_vec).unwrap_or_default();
        let pending_out = handover.slice(s.pending_out).map(<[u8]>::to_vec).unwrap_or_default();
        let std = std::net::TcpStream::from(fd);
        let resumed = TcpStream::from_std(std)
            .map_err(|e| e.to_string())
            .and_then(|stream| entry.resume(stream, state, read_buf, pending_out, rt.ctx.clone()));
        if let Err(e) = resumed {
            tracing::error!("cannot resume a {} session: {e}", s.service);
        }
    }
    let mut loops = Vec::new();
    let mut listen = BTreeMap::new();
    for (entry, listener) in prepared {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        listen.insert(entry.name().to_string(), addr);
        loops.push((entry.clone(), entry.spawn_accept(listener, rt.ctx.clone())));
    }
    let resumed_in = t_received.elapsed();
    let admin = rt.spawn_admin(admin_listener);
    if let Err(e) = rt.publish(&listen) {
        tracing::error!("serving, but cannot publish the listen and pid files: {e}");
    }

    let gap = now_unix_us().saturating_sub(handover.header.pause_started_unix_us);
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
            outcome: "ok".into(),
        },
    );
    rt.set_history(history);
    sd_notify::notify(&format!("MAINPID={pid}\nREADY=1"));
    let info = ReadyInfo { pid, version: version().to_string(), pause_gap_us: gap, sessions };
    let json = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
    if let Err(e) = channel.send(&Message::Ready(json).encode(), &[]) {
        tracing::warn!("cannot tell the old process we are ready: {e}");
    }
    tracing::info!(
        sessions,
        gap_us = gap,
        old_pid = handover.header.old_pid,
        prepared_us = prepared_in.as_micros() as u64,
        resumed_us = resumed_in.as_micros() as u64,
        published_us = t_received.elapsed().as_micros() as u64,
        "took over from the old process (phases from receipt of the handover)"
    );
    Ok(Running { loops, admin })
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
