//! Base64 for binary meta keys (the `b` flag), bug-for-bug with memcached's `base64.c`.
//!
//! memcached's decoder is lenient in ways a client can observe, so this copies it rather than a strict
//! RFC 4648 decoder: bytes outside the alphabet are skipped (`b@@TE=` decodes like `bTE=`); the count of
//! alphabet bytes (`=` included) must be a non-zero multiple of four; decoding stops after the first
//! quad holding a `=`, wherever in the quad it sits, and one or two `=` drop one or two output bytes while
//! three or four are an error. An empty result is an error too.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// Decodes a base64 key as memcached does; `None` where memcached reports a decoding failure.
pub fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&b| sextet(b).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let (mut quad, mut n, mut pad) = ([0u8; 4], 0, 0);
    for &b in src {
        let Some(v) = sextet(b) else { continue };
        pad += usize::from(b == b'=');
        quad[n] = v;
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[quad[0] << 2 | quad[1] >> 4, quad[1] << 4 | quad[2] >> 2, quad[2] << 6 | quad[3]]);
            n = 0;
            if pad > 0 {
                if pad > 2 {
                    return None;
                }
                out.truncate(out.len() - pad);
                break;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Appends the padded base64 of `src` (how memcached echoes a binary key after `k`).
pub fn encode_into(out: &mut Vec<u8>, src: &[u8]) {
    for chunk in src.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let idx = [b[0] >> 2, (b[0] & 3) << 4 | b[1] >> 4, (b[1] & 0xf) << 2 | b[2] >> 6, b[2] & 0x3f];
        for (i, &x) in idx.iter().enumerate() {
            out.push(if i <= chunk.len() { ALPHABET[usize::from(x)] } else { b'=' });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(src: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_into(&mut v, src);
        v
    }

    #[test]
    fn round_trips() {
        for src in [&b"m"[..], b"mk", b"mk1", b"hello world", &[0, 255, 10, 13, 32]] {
            assert_eq!(decode(&enc(src)).as_deref(), Some(src));
        }
        assert_eq!(enc(b"mk"), b"bWs=");
        assert_eq!(enc(b"m1"), b"bTE=");
        assert_eq!(enc(b"\0"), b"AA==");
    }

    /// Each case was sent to memcached 1.6.18 as `mg <key> b k`; the echoed `k` shows what it decoded.
    #[test]
    fn lenient_like_memcached() {
        assert_eq!(decode(b"b@@TE=").as_deref(), Some(&b"m1"[..]));
        assert_eq!(decode(b"b@TE=x"), None);
        assert_eq!(decode(b"AA==").as_deref(), Some(&[0u8][..]));
        assert_eq!(decode(b"AAA=").as_deref(), Some(&[0u8, 0][..]));
        assert_eq!(decode(b"A==="), None);
        assert_eq!(decode(b"===="), None);
        assert_eq!(decode(b"=AAA").as_deref(), Some(&[0u8, 0][..]));
        assert_eq!(decode(b"AAAAAAAA").as_deref(), Some(&[0u8; 6][..]));
        assert_eq!(decode(b"AA==AAAA").as_deref(), Some(&[0u8][..]));
        assert_eq!(decode(b"mk"), None);
        assert_eq!(decode(b"!!!!"), None);
        assert_eq!(decode(b""), None);
    }
}
