//! `get`, `gets`, `gat`, `gats`: one `VALUE` block per hit, then `END`.

use bytes::BufMut;

use super::{Ctx, expiry, server_error};
use crate::stats::KvStats;

/// Values up to this size are copied into the reply under the shard lock (no allocation per hit); larger
/// ones are shared out and copied after the lock is released, so that a big copy holds up no other key.
const COPY_UNDER_LOCK: usize = 16 << 10;

pub(super) fn get(cx: &mut Ctx<'_>, keys: &[bytes::Bytes], with_cas: bool, touch: Option<i64>) {
    for key in keys {
        KvStats::add(&cx.stats.cmd_get, 1);
        let hit = match touch {
            None => {
                let out = &mut *cx.out;
                cx.store.get_with(key, cx.now, |item| {
                    put_header(out, key, item.flags(), item.value().len(), with_cas.then(|| item.cas()));
                    if item.value().len() <= COPY_UNDER_LOCK {
                        out.put_slice(item.value());
                        out.put_slice(b"\r\n");
                        None
                    } else {
                        Some(item.share_value())
                    }
                })
            }
            Some(exptime) => {
                KvStats::add(&cx.stats.cmd_touch, 1);
                cx.wrote = true;
                match cx.store.get_and_touch(key, expiry(exptime, cx.now), cx.now) {
                    Ok(item) => item.map(|item| {
                        put_header(cx.out, key, item.flags, item.value.len(), with_cas.then_some(item.cas));
                        Some(item.value)
                    }),
                    Err(e) => {
                        server_error(cx.out, &e);
                        return;
                    }
                }
            }
        };
        match hit {
            Some(value) => {
                KvStats::add(&cx.stats.get_hits, 1);
                if touch.is_some() {
                    KvStats::add(&cx.stats.touch_hits, 1);
                }
                if let Some(value) = value {
                    cx.out.put_slice(&value);
                    cx.out.put_slice(b"\r\n");
                }
            }
            None => {
                KvStats::add(&cx.stats.get_misses, 1);
                if touch.is_some() {
                    KvStats::add(&cx.stats.touch_misses, 1);
                }
            }
        }
    }
    cx.out.put_slice(b"END\r\n");
}

/// `VALUE <key> <flags> <bytes> [<cas>]\r\n`
fn put_header(out: &mut bytes::BytesMut, key: &[u8], flags: u32, len: usize, cas: Option<u64>) {
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_u8(b' ');
    put_number(out, u64::from(flags));
    out.put_u8(b' ');
    put_number(out, len as u64);
    if let Some(cas) = cas {
        out.put_u8(b' ');
        put_number(out, cas);
    }
    out.put_slice(b"\r\n");
}

/// Decimal digits without an allocation (once per hit on the hot path).
fn put_number(out: &mut bytes::BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}
