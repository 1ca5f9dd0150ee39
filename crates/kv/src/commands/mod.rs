//! Executing requests against the store, one file per command family (as
//! mini-redis does). Each appends its reply to `out`, byte for byte what
//! memcached 1.6 would answer.

mod arith;
mod delete;
mod flush_all;
mod get;
mod meta;
mod stats;
mod storage;
mod touch;

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::protocol::{Effect, Expiry, Request, absolute};
use crate::stats::KvStats;
use crate::store::{Store, StoreError};

/// What a command needs besides its arguments.
pub struct Ctx<'a> {
    pub store: &'a Arc<Store>,
    pub stats: &'a KvStats,
    /// Unix seconds.
    pub now: u64,
    pub out: &'a mut BytesMut,
    /// Server facts for `stats`.
    pub server: &'a ServerInfo,
    /// Whether this command wrote to the store (fsync mode waits for it).
    pub wrote: bool,
    /// The item size limit (memcached's `-I`).
    pub max_item_bytes: usize,
}

/// Facts `stats` and `version` report.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub version: String,
    pub started_unix: u64,
    pub max_memory: u64,
    pub max_connections: usize,
}

/// What the session does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// `quit`: close after writing what is queued.
    Close,
}

pub fn execute(req: Request, cx: &mut Ctx<'_>) -> Next {
    match req {
        Request::Get { keys, with_cas } => get::get(cx, keys, with_cas, None),
        Request::Gat { exptime, keys, with_cas } => get::get(cx, keys, with_cas, Some(exptime)),
        Request::Store { cmd, key, flags, exptime, data, cas_unique, noreply } => {
            storage::store(cx, cmd, &key, flags, exptime, data, cas_unique, noreply)
        }
        Request::Delete { key, noreply } => delete::delete(cx, &key, noreply),
        Request::Arith { incr, key, delta, noreply } => arith::arith(cx, incr, &key, delta, noreply),
        Request::Touch { key, exptime, noreply } => touch::touch(cx, &key, exptime, noreply),
        Request::FlushAll { delay, noreply } => flush_all::flush_all(cx, delay, noreply),
        Request::Stats { args } => stats::stats(cx, &args),
        Request::Version => {
            cx.out.put_slice(format!("VERSION {}\r\n", cx.server.version).as_bytes());
        }
        Request::Verbosity { noreply, .. } => {
            if !noreply {
                cx.out.put_slice(b"OK\r\n");
            }
        }
        Request::Quit => return Next::Close,
        Request::MetaGet { key, flags } => meta::get(cx, &key, &flags),
        Request::MetaSet { key, data, flags, .. } => meta::set(cx, &key, data, &flags),
        Request::MetaDelete { key, flags } => meta::delete(cx, &key, &flags),
        Request::MetaArith { key, flags } => meta::arith(cx, &key, &flags),
        Request::MetaNoop => crate::protocol::meta::meta_noop(cx.out),
        Request::MetaDebug { key } => meta::debug(cx, &key),
    }
    Next::Continue
}

/// Applies what memcached does to the cache before answering an error ([`Effect`]); returns whether it
/// wrote to the store. A failure here is logged, not answered: the error reply is what the client gets,
/// as from memcached.
pub fn apply_effect(store: &Store, effect: Effect, now: u64) -> bool {
    let result = match effect {
        Effect::None => return false,
        Effect::Touch { exptime, keys } => {
            keys.iter().try_for_each(|k| store.touch(k, expiry(exptime, now), now).map(drop))
        }
    };
    if let Err(e) = result {
        tracing::error!("kv store failure before an error reply: {e}");
    }
    true
}

/// The store's expiry from a wire exptime: 0 never, else an absolute
/// unix time; an already-expired item gets a time in the past.
pub(crate) fn expiry(exptime: i64, now: u64) -> u64 {
    match absolute(exptime, now) {
        Expiry::Never => 0,
        Expiry::At(t) => t,
        Expiry::Expired => 1,
    }
}

/// Writes a classic command's reply: `ok` on success, the store error
/// otherwise, nothing at all with `noreply` (memcached hides errors too).
pub(crate) fn answer(out: &mut BytesMut, noreply: bool, result: Result<&[u8], StoreError>) {
    if noreply {
        return;
    }
    match result {
        Ok(reply) => out.put_slice(reply),
        Err(e) => server_error(out, &e),
    }
}

/// The reply for a store failure (memcached's wording where it has one).
pub(crate) fn server_error(out: &mut BytesMut, e: &StoreError) {
    match e {
        StoreError::OutOfMemory => out.put_slice(b"SERVER_ERROR out of memory storing object\r\n"),
        StoreError::TooLarge => out.put_slice(b"SERVER_ERROR object too large for cache\r\n"),
        StoreError::Io(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
            // Once per 10 s at most: a full disk refuses every write.
            static LAST_WARN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let now = crate::store::unix_now();
            if LAST_WARN.load(std::sync::atomic::Ordering::Relaxed) + 10 <= now {
                LAST_WARN.store(now, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("kv log: the disk is full; refusing writes until there is room");
            }
            out.put_slice(b"SERVER_ERROR out of disk space storing object\r\n")
        }
        other => {
            let msg: String = other.to_string().chars().filter(|c| !c.is_control()).take(200).collect();
            tracing::error!("kv store failure: {msg}");
            out.put_slice(format!("SERVER_ERROR {msg}\r\n").as_bytes());
        }
    }
}
