//! The meta commands `mg`, `ms`, `md`, `ma`, `me` with their common flags
//! (`mn` is answered in `mod.rs`). Flags ferry keeps no data for (`h`
//! fetched-before, `l` last access) are left out of replies, which clients
//! treat as "not known"; recache (`R`) and invalidation (`I`) are accepted
//! and act as plain reads and deletes.

use bytes::{BufMut, Bytes};

use super::{Ctx, expiry, server_error};
use crate::protocol::meta::{
    MetaCmd, MetaDebugInfo, MetaFlags, MetaItem, MetaStatus, meta_debug, meta_line, meta_value,
};
use crate::protocol::{StoreCmd, quiet_hides};
use crate::stats::KvStats;
use crate::store::{Arith, Item, Mode, Outcome};

fn reply(cx: &mut Ctx<'_>, cmd: MetaCmd, status: MetaStatus, flags: &MetaFlags, item: &MetaItem<'_>) {
    if flags.quiet && quiet_hides(cmd, status) {
        return;
    }
    meta_line(cx.out, status, flags, item);
}

fn miss<'a>(key: &'a [u8], flags: &MetaFlags) -> MetaItem<'a> {
    MetaItem { key, key_binary: flags.base64_key, ..MetaItem::default() }
}

fn hit<'a>(key: &'a [u8], flags: &MetaFlags, item: &Item, now: u64) -> MetaItem<'a> {
    MetaItem {
        key,
        key_binary: flags.base64_key,
        cas: Some(item.cas),
        size: Some(item.value.len()),
        ttl: Some(ttl_of(item.exptime, now)),
        client_flags: Some(item.flags),
        token_sent: item.token_sent,
        ..MetaItem::default()
    }
}

/// Walks `t`, `T` and `N` in request order as memcached does: `T` sets the expiry, `N` sets it only on an
/// item this command `created`, `t` reports the expiry as it stands. Starts from `exptime` (the item's
/// before the command, 0 = never) and returns the reported expiry (if `t` was asked) and the final one.
fn ttl_steps(flags: &MetaFlags, mut exptime: u64, created: bool, now: u64) -> (Option<u64>, u64) {
    let mut reported = None;
    for &step in &flags.ttl_steps {
        match step {
            b'T' => exptime = flags.ttl.map_or(exptime, |t| expiry(t, now)),
            b'N' if created => exptime = flags.vivify.map_or(exptime, |t| expiry(t, now)),
            b't' => reported = Some(exptime),
            _ => {}
        }
    }
    (reported, exptime)
}

/// The `t` value for an absolute expiry.
fn ttl_of(exptime: u64, now: u64) -> i64 {
    if exptime == 0 { -1 } else { i64::try_from(exptime.saturating_sub(now)).unwrap_or(i64::MAX) }
}

/// `mg <key> <flags>*`
pub(super) fn get(cx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags) {
    KvStats::add(&cx.stats.cmd_get, 1);
    let Some(item) = cx.store.get(key, cx.now) else {
        KvStats::add(&cx.stats.get_misses, 1);
        if flags.vivify.is_none() {
            return reply(cx, MetaCmd::Get, MetaStatus::En, flags, &miss(key, flags));
        }
        // Create an empty placeholder: this client "won" the right to fill
        // it, and sees it as a hit flagged W (as memcached answers); later
        // hits see Z until the item is replaced.
        let (reported, exptime) = ttl_steps(flags, 0, true, cx.now);
        cx.wrote = true;
        if let Err(e) = cx.store.store(Mode::Add, key, 0, exptime, Bytes::new(), cx.now) {
            return server_error(cx.out, &e);
        }
        let Some(created) = cx.store.mark_token_sent(key, cx.now) else {
            return reply(cx, MetaCmd::Get, MetaStatus::En, flags, &miss(key, flags));
        };
        let mut m = hit(key, flags, &created, cx.now);
        (m.won, m.token_sent) = (true, false);
        m.ttl = reported.map(|x| ttl_of(x, cx.now));
        if flags.return_value {
            return meta_value(cx.out, flags, &m, &created.value);
        }
        return meta_line(cx.out, MetaStatus::Hd, flags, &m);
    };
    KvStats::add(&cx.stats.get_hits, 1);
    let (reported, exptime) = ttl_steps(flags, item.exptime, false, cx.now);
    if flags.ttl.is_some() {
        cx.wrote = true;
        if let Err(e) = cx.store.touch(key, exptime, cx.now) {
            return server_error(cx.out, &e);
        }
    }
    let mut m = hit(key, flags, &item, cx.now);
    m.ttl = reported.map(|x| ttl_of(x, cx.now));
    if flags.return_value {
        meta_value(cx.out, flags, &m, &item.value);
    } else {
        reply(cx, MetaCmd::Get, MetaStatus::Hd, flags, &m);
    }
}

/// `ms <key> <datalen> <flags>*`
pub(super) fn set(cx: &mut Ctx<'_>, key: &[u8], data: Bytes, flags: &MetaFlags) {
    KvStats::add(&cx.stats.cmd_set, 1);
    let cmd = flags.store_cmd();
    let mode = match cmd {
        StoreCmd::Set => Mode::Set,
        StoreCmd::Add => Mode::Add,
        StoreCmd::Replace => Mode::Replace,
        StoreCmd::Append => Mode::Append,
        StoreCmd::Prepend => Mode::Prepend,
        StoreCmd::Cas => Mode::Cas(flags.compare_cas.unwrap_or(0)),
    };
    // C0 means "no cas given" here, as memcached checks a cas only when it is not 0.
    if let Some(expected) = flags.compare_cas.filter(|&c| c != 0 && matches!(cmd, StoreCmd::Append | StoreCmd::Prepend))
    {
        // Append and prepend keep their mode and check the cas themselves
        // (a miss is NS, as for any append).
        let m = MetaItem { key, key_binary: flags.base64_key, cas: Some(0), ..MetaItem::default() };
        match cx.store.get(key, cx.now) {
            None => return reply(cx, MetaCmd::Set, MetaStatus::Ns, flags, &m),
            Some(item) if item.cas != expected => return reply(cx, MetaCmd::Set, MetaStatus::Ex, flags, &m),
            Some(_) => {}
        }
    }
    let exptime = expiry(flags.ttl.unwrap_or(0), cx.now);
    cx.wrote = true;
    let (outcome, cas) = match cx.store.store(mode, key, flags.client_flags.unwrap_or(0), exptime, data, cx.now) {
        Ok(done) => done,
        Err(e) => return server_error(cx.out, &e),
    };
    let status = match outcome {
        Outcome::Stored => MetaStatus::Hd,
        Outcome::NotStored => MetaStatus::Ns,
        Outcome::Exists => MetaStatus::Ex,
        Outcome::NotFound => MetaStatus::Nf,
    };
    let m = MetaItem { key, key_binary: flags.base64_key, cas: Some(cas), ..MetaItem::default() };
    reply(cx, MetaCmd::Set, status, flags, &m);
}

/// `md <key> <flags>*`
pub(super) fn delete(cx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags) {
    let m = miss(key, flags);
    if let Some(expected) = flags.compare_cas {
        match cx.store.get(key, cx.now) {
            None => return reply(cx, MetaCmd::Delete, MetaStatus::Nf, flags, &m),
            Some(item) if item.cas != expected => return reply(cx, MetaCmd::Delete, MetaStatus::Ex, flags, &m),
            Some(_) => {}
        }
    }
    cx.wrote = true;
    match cx.store.delete(key, cx.now) {
        Ok(true) => {
            KvStats::add(&cx.stats.delete_hits, 1);
            reply(cx, MetaCmd::Delete, MetaStatus::Hd, flags, &m);
        }
        Ok(false) => {
            KvStats::add(&cx.stats.delete_misses, 1);
            reply(cx, MetaCmd::Delete, MetaStatus::Nf, flags, &m);
        }
        Err(e) => server_error(cx.out, &e),
    }
}

/// `ma <key> <flags>*`
pub(super) fn arith(cx: &mut Ctx<'_>, key: &[u8], flags: &MetaFlags) {
    let incr = flags.incr();
    let delta = flags.delta.unwrap_or(1);
    let existing = cx.store.get(key, cx.now);
    // C0 means "no cas given"; a value that is not a number is reported
    // before a cas mismatch, as memcached does.
    if let Some(expected) = flags.compare_cas.filter(|&c| c != 0)
        && let Some(item) = &existing
    {
        if !is_counter(&item.value) {
            return cx.out.put_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
        }
        if item.cas != expected {
            return reply(cx, MetaCmd::Arith, MetaStatus::Ex, flags, &miss(key, flags));
        }
    }
    let created = existing.is_none() && flags.vivify.is_some();
    let start = existing.as_ref().map_or(0, |i| i.exptime);
    let (reported, exptime) = ttl_steps(flags, start, created, cx.now);
    let autoviv = flags.vivify.map(|_| (flags.initial.unwrap_or(0), exptime));
    cx.wrote = true;
    let (result, cas) = match cx.store.arith(key, incr, delta, cx.now, autoviv) {
        Ok(done) => done,
        Err(e) => return server_error(cx.out, &e),
    };
    match result {
        Arith::Value(v) => {
            let counter = if incr { &cx.stats.incr_hits } else { &cx.stats.decr_hits };
            KvStats::add(counter, 1);
            if flags.ttl.is_some() && !created {
                let _ = cx.store.touch(key, exptime, cx.now);
            }
            let m = MetaItem {
                key,
                key_binary: flags.base64_key,
                cas: Some(cas),
                ttl: reported.map(|x| ttl_of(x, cx.now)),
                ..MetaItem::default()
            };
            // Quiet hides a successful reply, but not one for an item N
            // just created (memcached answers that one).
            if flags.quiet && !created {
                return;
            }
            if flags.return_value {
                meta_value(cx.out, flags, &m, v.to_string().as_bytes());
            } else {
                meta_line(cx.out, MetaStatus::Hd, flags, &m);
            }
        }
        Arith::NotFound => {
            let counter = if incr { &cx.stats.incr_misses } else { &cx.stats.decr_misses };
            KvStats::add(counter, 1);
            reply(cx, MetaCmd::Arith, MetaStatus::Nf, flags, &miss(key, flags));
        }
        Arith::NonNumeric => cx.out.put_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
    }
}

/// `me <key>`: a debug line about the item, or `EN`.
pub(super) fn debug(cx: &mut Ctx<'_>, key: &[u8]) {
    match cx.store.get(key, cx.now) {
        Some(item) => {
            let exp = if item.exptime == 0 { -1 } else { cx.now as i64 - item.exptime as i64 };
            let info = MetaDebugInfo {
                exp,
                last_access: 0,
                cas: item.cas,
                fetched: false,
                class: 1,
                size: (key.len() + item.value.len() + 56) as u64,
            };
            meta_debug(cx.out, key, false, &info);
        }
        None => cx.out.put_slice(b"EN\r\n"),
    }
}

/// Whether a value reads as a number for incr/decr (digits, maybe padded).
fn is_counter(value: &[u8]) -> bool {
    let trimmed = value.iter().position(|&b| b == 0).map_or(value, |n| &value[..n]);
    let text = trimmed.trim_ascii();
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}
