//! Classic replies, byte for byte as memcached writes them, and every error line the parser can answer.
//!
//! Errors are constants because the parser hands them out as `&'static [u8]` and tests compare them
//! verbatim: a client (or a differential test) sees exactly these bytes.

use std::fmt::Display;

use bytes::{BufMut, BytesMut};

/// Unknown command, or a known one with the wrong number of tokens.
pub const ERROR: &[u8] = b"ERROR\r\n";
pub const CLIENT_ERROR_BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const CLIENT_ERROR_BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const SERVER_ERROR_TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const CLIENT_ERROR_BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
pub const CLIENT_ERROR_BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
pub const CLIENT_ERROR_DELETE_USAGE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
pub const CLIENT_ERROR_NON_NUMERIC: &[u8] = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
/// `shutdown`, which memcached refuses unless started with `-A`.
pub const ERROR_SHUTDOWN: &[u8] = b"ERROR: shutdown not enabled\r\n";
pub const CLIENT_ERROR_DUPLICATE_FLAG: &[u8] = b"CLIENT_ERROR duplicate flag\r\n";
pub const CLIENT_ERROR_INVALID_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
pub const CLIENT_ERROR_BAD_TOKEN: &[u8] = b"CLIENT_ERROR bad token in command line format\r\n";
pub const CLIENT_ERROR_DECODING_KEY: &[u8] = b"CLIENT_ERROR error decoding key\r\n";
pub const CLIENT_ERROR_M_LENGTH: &[u8] = b"CLIENT_ERROR incorrect length for M token\r\n";
pub const CLIENT_ERROR_INITIAL: &[u8] = b"CLIENT_ERROR invalid numeric initial value\r\n";
pub const CLIENT_ERROR_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta value\r\n";
/// mg's wording; ms, md and ma say [`CLIENT_ERROR_FLAGS_TOO_LONG`].
pub const CLIENT_ERROR_FLAGS_ARE_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags are too long\r\n";
pub const CLIENT_ERROR_FLAGS_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";
pub const CLIENT_ERROR_OPAQUE_TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";
/// md's and ma's answer to any flag error.
pub const CLIENT_ERROR_INVALID_OR_DUPLICATE: &[u8] = b"CLIENT_ERROR invalid or duplicate flag\r\n";
pub const CLIENT_ERROR_MS_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ms M token\r\n";
pub const CLIENT_ERROR_MA_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ma M token\r\n";

pub const END: &[u8] = b"END\r\n";
pub const STORED: &[u8] = b"STORED\r\n";
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
pub const EXISTS: &[u8] = b"EXISTS\r\n";
pub const NOT_FOUND: &[u8] = b"NOT_FOUND\r\n";
pub const DELETED: &[u8] = b"DELETED\r\n";
pub const TOUCHED: &[u8] = b"TOUCHED\r\n";
pub const OK: &[u8] = b"OK\r\n";
/// `stats reset`.
pub const RESET: &[u8] = b"RESET\r\n";

/// Appends one of the constant lines above.
pub fn line(out: &mut BytesMut, line: &[u8]) {
    out.put_slice(line);
}

/// Appends `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n` (one `get` hit; `cas` for gets/gats).
pub fn value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    let head = match cas {
        Some(cas) => format!(" {flags} {} {cas}\r\n", data.len()),
        None => format!(" {flags} {}\r\n", data.len()),
    };
    out.put_slice(head.as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends the result of `incr`/`decr`: the new value in decimal.
pub fn number(out: &mut BytesMut, n: u64) {
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends `VERSION <v>\r\n`.
pub fn version(out: &mut BytesMut, v: &str) {
    out.put_slice(b"VERSION ");
    out.put_slice(v.as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends `STAT <name> <value>\r\n`; end the list with [`END`].
pub fn stat(out: &mut BytesMut, name: &str, value: impl Display) {
    out.put_slice(format!("STAT {name} {value}\r\n").as_bytes());
}

/// Appends `CLIENT_ERROR <msg>\r\n` (for messages the executor produces, e.g. `stats detail` usage).
pub fn client_error(out: &mut BytesMut, msg: &str) {
    out.put_slice(format!("CLIENT_ERROR {msg}\r\n").as_bytes());
}

/// Appends `SERVER_ERROR <msg>\r\n` (e.g. `out of memory storing object`).
pub fn server_error(out: &mut BytesMut, msg: &str) {
    out.put_slice(format!("SERVER_ERROR {msg}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    /// Each expectation is what memcached 1.6.18 sent.
    #[test]
    fn like_memcached() {
        assert_eq!(encoded(|o| value(o, b"k", 0, b"abc", None)), b"VALUE k 0 3\r\nabc\r\n");
        assert_eq!(encoded(|o| value(o, b"k", 4294967295, b"x", Some(4))), b"VALUE k 4294967295 1 4\r\nx\r\n");
        assert_eq!(encoded(|o| value(o, b"a\tb", 0, b"", None)), b"VALUE a\tb 0 0\r\n\r\n");
        assert_eq!(encoded(|o| number(o, u64::MAX)), b"18446744073709551615\r\n");
        assert_eq!(encoded(|o| number(o, 0)), b"0\r\n");
        assert_eq!(encoded(|o| version(o, "1.6.18")), b"VERSION 1.6.18\r\n");
        assert_eq!(encoded(|o| stat(o, "pid", 2152)), b"STAT pid 2152\r\n");
        assert_eq!(
            encoded(|o| client_error(o, "usage: stats detail on|off|dump")),
            b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"
        );
        assert_eq!(encoded(|o| server_error(o, "out of memory")), b"SERVER_ERROR out of memory\r\n");
        assert_eq!(encoded(|o| line(o, END)), b"END\r\n");
    }
}
