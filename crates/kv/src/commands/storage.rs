//! `set`, `add`, `replace`, `append`, `prepend`, `cas`.

use bytes::{BufMut, Bytes};

use super::{Ctx, expiry, server_error};
use crate::protocol::StoreCmd;
use crate::stats::KvStats;
use crate::store::{Mode, Outcome};

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
