//! `get`, `gets`, `gat`, `gats`: one `VALUE` block per hit, then `END`.

use bytes::BufMut;

use super::{Ctx, expiry, server_error};
use crate::protocol::Keys;
use crate::stats::KvStats;

/// Values up to this size are copied into the reply under the shard lock (no allocation per hit); larger
/// ones are shared out and copied after the lock is released, so that a big copy holds up no other key.
const COPY_UNDER_LOCK: usize = 16 << 10;

pub(super) fn get(cx: &mut Ctx<'_>, keys: Keys<'_>, with_cas: bool, touch: Option<i64>) {
    // The counters are server-wide atomics that both kv workers add to: one locked add each per request,
    // not per key (a 16-key get made 32).
    let (mut looked, mut hits) = (0u64, 0u64);
    let mut failed = false;
    for key in keys.iter() {
        looked += 1;
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
                cx.wrote = true;
                match cx.store.get_and_touch(key, expiry(exptime, cx.now), cx.now) {
                    Ok(item) => item.map(|item| {
                        put_header(cx.out, key, item.flags, item.value.len(), with_cas.then_some(item.cas));
                        Some(item.value)
                    }),
                    Err(e) => {
                        server_error(cx.out, &e);
                        failed = true;
                        break;
                    }
                }
            }
        };
        if let Some(value) = hit {
            hits += 1;
            if let Some(value) = value {
                cx.out.put_slice(&value);
                cx.out.put_slice(b"\r\n");
            }
        }
    }
    // A key whose touch failed counts as asked for, neither hit nor missed.
    count(cx.stats, looked, hits, looked - hits - u64::from(failed), touch.is_some());
    if !failed {
        cx.out.put_slice(b"END\r\n");
    }
}

/// Adds a get's keys to the counters: `looked` keys asked for, `hits` of them found, `misses` not (those of
/// a `gat` count as touches too).
fn count(stats: &KvStats, looked: u64, hits: u64, misses: u64, touched: bool) {
    let add = |counter, n| {
        if n > 0 {
            KvStats::add(counter, n);
        }
    };
    add(&stats.cmd_get, looked);
    add(&stats.get_hits, hits);
    add(&stats.get_misses, misses);
    if touched {
        add(&stats.cmd_touch, looked);
        add(&stats.touch_hits, hits);
        add(&stats.touch_misses, misses);
    }
}

/// Longest header tail: three 20-digit numbers with their spaces, and `\r\n`.
const MAX_TAIL: usize = 3 * 21 + 2;

/// `VALUE <key> <flags> <bytes> [<cas>]\r\n`: the numbers are put together on the stack and the header
/// goes out in three copies after one reservation (this runs once per hit).
fn put_header(out: &mut bytes::BytesMut, key: &[u8], flags: u32, len: usize, cas: Option<u64>) {
    let mut tail = [0u8; MAX_TAIL];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        tail[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(b" ");
    put(digits(&mut [0; 20], u64::from(flags)));
    put(b" ");
    put(digits(&mut [0; 20], len as u64));
    if let Some(cas) = cas {
        put(b" ");
        put(digits(&mut [0; 20], cas));
    }
    put(b"\r\n");
    out.reserve(6 + key.len() + at);
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    out.put_slice(&tail[..at]);
}

/// `n` in decimal, written at the end of `buf`.
fn digits(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_has_every_field_in_decimal() {
        let mut out = bytes::BytesMut::new();
        put_header(&mut out, b"k:1", 0, 100, None);
        put_header(&mut out, b"x", u32::MAX, 0, Some(u64::MAX));
        put_header(&mut out, b"y", 7, 1_048_576, Some(1));
        assert_eq!(
            &out[..],
            b"VALUE k:1 0 100\r\nVALUE x 4294967295 0 18446744073709551615\r\nVALUE y 7 1048576 1\r\n"
        );
    }

    #[test]
    fn the_longest_header_fits() {
        let key = [b'k'; 250];
        let mut out = bytes::BytesMut::new();
        put_header(&mut out, &key, u32::MAX, usize::MAX, Some(u64::MAX));
        let want = format!("VALUE {} {} {} {}\r\n", "k".repeat(250), u32::MAX, usize::MAX, u64::MAX);
        assert_eq!(&out[..], want.as_bytes());
    }

    #[test]
    fn a_multi_key_get_counts_every_key_once() {
        let store = std::sync::Arc::new(
            crate::store::Store::open(crate::store::StoreConfig {
                durability: crate::store::Durability::Memory,
                ..Default::default()
            })
            .unwrap(),
        );
        let now = crate::store::unix_now();
        for k in ["a", "c"] {
            store.store(crate::store::Mode::Set, k.as_bytes(), 3, 0, bytes::Bytes::from_static(b"vv"), now).unwrap();
        }
        let stats = KvStats::default();
        let server = super::super::ServerInfo {
            version: "1".into(),
            started_unix: now,
            max_memory: 1 << 20,
            max_connections: 1,
        };
        // One request's context, writing into `out`.
        let run = |out: &mut bytes::BytesMut, keys: &[u8], touch: Option<i64>| {
            let mut cx =
                Ctx { store: &store, stats: &stats, now, out, server: &server, wrote: false, max_item_bytes: 1 << 20 };
            get(&mut cx, Keys::new(keys), false, touch);
        };
        let mut out = bytes::BytesMut::new();
        run(&mut out, b"a b c a", None);
        assert_eq!(&out[..], b"VALUE a 3 2\r\nvv\r\nVALUE c 3 2\r\nvv\r\nVALUE a 3 2\r\nvv\r\nEND\r\n");
        let g = |c| KvStats::get(c);
        assert_eq!((g(&stats.cmd_get), g(&stats.get_hits), g(&stats.get_misses)), (4, 3, 1));
        assert_eq!(g(&stats.cmd_touch), 0);
        let mut out = bytes::BytesMut::new();
        run(&mut out, b"x c", Some(0));
        assert_eq!(&out[..], b"VALUE c 3 2\r\nvv\r\nEND\r\n");
        assert_eq!((g(&stats.cmd_get), g(&stats.get_hits), g(&stats.get_misses)), (6, 4, 2));
        assert_eq!((g(&stats.cmd_touch), g(&stats.touch_hits), g(&stats.touch_misses)), (2, 1, 1));
    }
}
