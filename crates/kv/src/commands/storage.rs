//! `set`, `add`, `replace`, `append`, `prepend`, `cas`.

use bytes::Bytes;

use super::{Ctx, answer, expiry};
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
        return answer(cx.out, noreply, Ok(b"NOT_STORED\r\n"));
    }
    cx.wrote = true;
    let result = match cx.store.store(mode, key, flags, expiry(exptime, cx.now), data, cx.now) {
        Ok((Outcome::Stored, _)) => {
            if cmd == StoreCmd::Cas {
                KvStats::add(&cx.stats.cas_hits, 1);
            }
            Ok(&b"STORED\r\n"[..])
        }
        Ok((Outcome::NotStored, _)) => Ok(&b"NOT_STORED\r\n"[..]),
        Ok((Outcome::Exists, _)) => {
            KvStats::add(&cx.stats.cas_badval, 1);
            Ok(&b"EXISTS\r\n"[..])
        }
        Ok((Outcome::NotFound, _)) => {
            KvStats::add(&cx.stats.cas_misses, 1);
            Ok(&b"NOT_FOUND\r\n"[..])
        }
        Err(StoreError::TooLarge) if matches!(cmd, StoreCmd::Append | StoreCmd::Prepend) => Ok(&b"NOT_STORED\r\n"[..]),
        Err(e) => Err(e),
    };
    answer(cx.out, noreply, result);
}

/// memcached's item size rule: header, key, flags and value with its CRLF
/// must fit the item limit.
pub(super) fn fits(max_item_bytes: usize, key: &[u8], flags: u32, value_len: usize) -> bool {
    let flags_len = if flags != 0 { 4 } else { 0 };
    ITEM_HEADER + key.len() + 1 + flags_len + value_len + 2 <= max_item_bytes
}
