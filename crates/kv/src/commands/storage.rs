//! `set`, `add`, `replace`, `append`, `prepend`, `cas`.

use bytes::{BufMut, Bytes};

use super::{Ctx, expiry, server_error};
use crate::protocol::StoreCmd;
use crate::protocol::parse::ITEM_HEADER;
use crate::stats::KvStats;
use crate::store::{Mode, Outcome, StoreError};

#[allow(clippy::too_many_arguments)]
pub(super) fn store(
    cx: &mut Ctx<'_>,
    cmd: StoreCmd,
    key: &[u8],
    flags: u32,
    exptime: i64,
    data: Bytes,
    cas_unique: u64,
    noreply: bool,
) {
    KvStats::add(&cx.stats.cmd_set, 1);
    let mode = match cmd {
        StoreCmd::Set => Mode::Set,
        StoreCmd::Add => Mode::Add,
        StoreCmd::Replace => Mode::Replace,
        StoreCmd::Append => Mode::Append,
        StoreCmd::Prepend => Mode::Prepend,
        StoreCmd::Cas => Mode::Cas(cas_unique),
    };
    if matches!(cmd, StoreCmd::Append | StoreCmd::Prepend)
        && let Some(old) = cx.store.get(key, cx.now)
        && !fits(cx.max_item_bytes, key, old.flags, old.value.len() + data.len())
    {
        // memcached refuses to grow an item past its limit this way.
        if !noreply {
            cx.out.put_slice(b"NOT_STORED\r\n");
        }
        return;
    }
    cx.wrote = true;
    let reply: &[u8] = match cx.store.store(mode, key, flags, expiry(exptime, cx.now), data, cx.now) {
        Ok((Outcome::Stored, _)) => {
            if cmd == StoreCmd::Cas {
                KvStats::add(&cx.stats.cas_hits, 1);
            }
            b"STORED\r\n"
        }
        Ok((Outcome::NotStored, _)) => b"NOT_STORED\r\n",
        Ok((Outcome::Exists, _)) => {
            KvStats::add(&cx.stats.cas_badval, 1);
            b"EXISTS\r\n"
        }
        Ok((Outcome::NotFound, _)) => {
            KvStats::add(&cx.stats.cas_misses, 1);
            b"NOT_FOUND\r\n"
        }
        Err(StoreError::TooLarge) if matches!(cmd, StoreCmd::Append | StoreCmd::Prepend) => b"NOT_STORED\r\n",
        Err(e) => {
            if !noreply {
                server_error(cx.out, &e);
            }
            return;
        }
    };
    if !noreply {
        cx.out.put_slice(reply);
    }
}

/// memcached's item size rule: header, key, flags and value with its CRLF
/// must fit the item limit.
pub(super) fn fits(max_item_bytes: usize, key: &[u8], flags: u32, value_len: usize) -> bool {
    let flags_len = if flags != 0 { 4 } else { 0 };
    ITEM_HEADER + key.len() + 1 + flags_len + value_len + 2 <= max_item_bytes
}
