//! Framing and parsing: bytes in, one [`Parse`] out, exactly as memcached 1.6.18 reads its text protocol.
//!
//! memcached's reading rules, all observable by a client and all copied here:
//!
//! - A command line ends at the first `\n`; one `\r` before it is dropped (unless the line is just `\r`).
//!   The line ends at its first NUL byte (memcached handles it as a C string).
//! - Tokens are separated by runs of spaces only; a key may hold any other byte (tabs, control bytes).
//!   memcached counts at most 23 tokens (then one for "the rest"), which decides `ERROR` for long lines.
//! - A storage command's data block is exactly `<bytes>` + 2 bytes read blind, whatever they contain; if
//!   the last two are not `\r\n` the reply is `CLIENT_ERROR bad data chunk` and the block is consumed
//!   anyway, so `set k 0 0 3\r\nabcd\r\n` answers the error and then `ERROR` for the lone `\n`.
//! - An error found in the command line consumes only the line: the data block, if any, is then read as
//!   commands (usually `ERROR`). Only "too large" (and meta `ms` flag errors) skip the block: see
//!   [`Parse::Error::swallow`].
//! - `noreply` as a classic command's last token hides its errors too (`set k 0 0 x noreply` is silent).
//! - More than `max_line` bytes without a `\n` close the connection, silently, unless they start with
//!   `get `/`gets ` (after at most 100 spaces): memcached grows its buffer for long multigets only.
//!
//! The result depends only on the bytes given, so pipelining is calling [`parse`] again on what follows
//! `consumed` (+ `swallow`); nothing is consumed until a whole request, data block included, is there.
//!
//! # When memcached writes
//!
//! Two errors make memcached throw away the replies it has queued but not yet written: a get-family
//! command with a key over 250 bytes, and the silent close of an over-long line ([`Parse::Error`]'s
//! `drop_unsent`). So in a pipeline `delete a\r\nget <251 bytes>\r\n` the client never sees
//! `NOT_FOUND`. What was queued depends on when memcached writes, which it does (1.6.18, as tested):
//!
//! - after every get/gets/gat/gats/bget that completes (its `END`), after `mn`, and on `quit`
//!   ([`Request::flushes`]);
//! - after every 21st command (parsed request or error) handled in one read event (`reqs_per_event` 20);
//! - when it needs more bytes to complete a command *line*; but not while waiting for the rest of a data
//!   block or for bytes to swallow: `x\r\nset a 0 0 1\r\n` sends nothing, not even the `ERROR`.
//!
//! A session that queues replies and writes them at those points sees the same bytes as memcached's
//! clients do, whatever the pipeline.

use bytes::Bytes;

use super::meta::{self, MetaFlags};
use super::request::{Keys, Request, StoreCmd};
use super::{base64, number, reply};

/// memcached's per-item overhead counted against the item size limit: its 48-byte item header plus the
/// 8-byte cas. An item is too large when `ITEM_HEADER + key + 1 + (4 if flags != 0) + bytes + 2` exceeds
/// [`Limits::max_item_bytes`] (so with 1 MiB and key `k`, 1048516 bytes fit and 1048517 don't).
pub const ITEM_HEADER: usize = 56;

/// Most tokens memcached's tokenizer returns before lumping the rest together (`MAX_TOKENS - 1`).
const MAX_TOKENS: usize = 23;

/// Limits that shape what memcached accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key (fixed by the protocol: 250).
    pub max_key: usize,
    /// memcached's item size limit (`-I`, default 1 MiB), header and key included: see [`ITEM_HEADER`].
    pub max_item_bytes: usize,
    /// Bytes memcached buffers without seeing a `\n` before closing the connection (2048). A line that
    /// arrives whole may be longer, as in memcached: it only checks when a read left no `\n`.
    pub max_line: usize,
    /// memcached's read buffer (16384): a non-multiget line whose `\n` lies further can never be read whole,
    /// so the connection is closed whatever the timing.
    pub read_buffer: usize,
    /// Longest multiget line. memcached has no limit (it grows its buffer without bound); 1 MiB by default.
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key: 250, max_item_bytes: 1 << 20, max_line: 2048, read_buffer: 16384, max_get_line: 1 << 20 }
    }
}

/// The outcome of parsing the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // returned and matched at once, never stored
pub enum Parse<'a> {
    /// No complete request yet: read more and call again with the same bytes plus the new ones.
    Incomplete,
    /// A request, and how many bytes it took (line and data block).
    Request { req: Request<'a>, consumed: usize },
    /// memcached answers `reply` without running anything: write it (it is empty when `noreply` hid it),
    /// drop `consumed` bytes, then also drop the next `swallow` bytes, which may not have arrived yet (the
    /// data block of a refused storage command: memcached skips it rather than reading it as commands).
    ///
    /// With `close`, close the connection (`reply` is empty). With `drop_unsent`, first throw away every
    /// reply not yet written to the socket, as memcached does (see "When memcached writes" in the module
    /// docs); `close` implies it. Before all that, apply `effect` to the cache (memcached changes it on
    /// one error).
    Error { reply: &'static [u8], consumed: usize, swallow: usize, close: bool, drop_unsent: bool, effect: Effect },
}

/// What memcached does to the cache before it answers an error. (It also unlinks the current item of a
/// `set` or `ms` refused as too large; ferry does not, so that a refused request loses nothing stored.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Effect {
    #[default]
    None,
    /// `gat`/`gats` touches (with this exptime) each key before the one over 250 bytes that fails it.
    Touch { exptime: i64, keys: Vec<Bytes> },
}

/// Parses the request at the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parse<'a> {
    let multiget = is_multiget(buf);
    // memchr: the scans below look at every byte of every request, and memchr looks at many at a time.
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        let limit = if multiget { limits.max_get_line } else { limits.max_line };
        return if buf.len() > limit { close(buf.len()) } else { Parse::Incomplete };
    };
    if nl >= if multiget { limits.max_get_line } else { limits.read_buffer } {
        return close(nl + 1);
    }
    let mut line = &buf[..if nl > 1 && buf[nl - 1] == b'\r' { nl - 1 } else { nl }];
    if let Some(nul) = memchr::memchr(0, line) {
        line = &line[..nul];
    }
    let mut few = [&[][..]; FEW_TOKENS];
    let mut many = Vec::new();
    let t = tokenize(line, &mut few, &mut many);
    let n = t.len().min(MAX_TOKENS) + 1;
    Line { line, n, t, consumed: nl + 1, rest: &buf[nl + 1..], limits }.dispatch()
}

/// Tokens of a line that fit in an array on the stack: every command but a long multiget, so the common
/// request allocates nothing to be tokenized.
const FEW_TOKENS: usize = 24;

/// The space-separated tokens of `line`, in `few` while they fit and in `many` (all of them) past that.
fn tokenize<'t, 'a>(
    line: &'a [u8],
    few: &'t mut [&'a [u8]; FEW_TOKENS],
    many: &'t mut Vec<&'a [u8]>,
) -> &'t [&'a [u8]] {
    let mut tokens = Tokens::new(line);
    let mut count = 0;
    for token in tokens.by_ref() {
        few[count] = token;
        count += 1;
        if count == FEW_TOKENS {
            break;
        }
    }
    if count < FEW_TOKENS {
        return &few[..count];
    }
    many.extend_from_slice(&few[..]);
    many.extend(tokens);
    many
}

/// The tokens of a line: what lies between runs of spaces.
pub(super) struct Tokens<'a> {
    rest: &'a [u8],
}

impl<'a> Tokens<'a> {
    pub(super) fn new(line: &'a [u8]) -> Tokens<'a> {
        Tokens { rest: line }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| b != b' ')?;
        let rest = &self.rest[start..];
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// memcached's test for a line allowed to exceed its buffer: `get ` or `gets ` after at most 100 spaces.
fn is_multiget(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    spaces <= 100 && (buf[spaces..].starts_with(b"get ") || buf[spaces..].starts_with(b"gets "))
}

fn bad_chunk(reply: &'static [u8], consumed: usize) -> Parse<'static> {
    Parse::Error { reply, consumed, swallow: 0, close: false, drop_unsent: false, effect: Effect::None }
}

fn close(consumed: usize) -> Parse<'static> {
    Parse::Error { reply: b"", consumed, swallow: 0, close: true, drop_unsent: true, effect: Effect::None }
}

/// One command line (of a buffer living for `'a`), tokenized into an array living for `'t`.
struct Line<'t, 'a> {
    /// The command line, without its line end: every token is a slice of it.
    line: &'a [u8],
    /// Every token (memcached reads the ones past 23 only for get and friends).
    t: &'t [&'a [u8]],
    /// memcached's `ntokens`: up to 23 tokens plus its terminal one.
    n: usize,
    consumed: usize,
    /// What follows the line: the data block, if any.
    rest: &'a [u8],
    limits: &'t Limits,
}

impl<'a> Line<'_, 'a> {
    fn req(&self, req: Request<'a>) -> Parse<'a> {
        Parse::Request { req, consumed: self.consumed }
    }

    fn err(&self, reply: &'static [u8]) -> Parse<'a> {
        self.err_swallow(reply, 0)
    }

    fn err_swallow(&self, reply: &'static [u8], swallow: usize) -> Parse<'a> {
        Parse::Error { reply, consumed: self.consumed, swallow, close: false, drop_unsent: false, effect: Effect::None }
    }

    /// An error hidden by `noreply`.
    fn err_nr(&self, reply: &'static [u8], noreply: bool) -> Parse<'a> {
        self.err(if noreply { b"" } else { reply })
    }

    /// memcached's `set_noreply_maybe`: the last counted token is `noreply`.
    fn noreply(&self) -> bool {
        self.t[self.n - 2] == b"noreply"
    }

    fn key(&self, i: usize) -> Bytes {
        Bytes::copy_from_slice(self.t[i])
    }

    /// memcached's `process_command_ascii`: a wrong token count is `ERROR` before anything else is checked.
    fn dispatch(&self) -> Parse<'a> {
        let Some(&cmd) = self.t.first().filter(|c| c.len() >= 2) else { return self.err(reply::ERROR) };
        if cmd[0] == b'm' && cmd.len() == 2 {
            return match cmd[1] {
                b'g' => self.meta_get(),
                b's' => self.meta_set(),
                b'd' => self.meta_delete_or_arith(false),
                b'a' => self.meta_delete_or_arith(true),
                b'n' => self.req(Request::MetaNoop),
                b'e' => self.meta_debug(),
                _ => self.err(reply::ERROR),
            };
        }
        let n = self.n;
        let (ok, run): (bool, fn(&Self) -> Parse<'a>) = match cmd {
            b"get" | b"bget" => (n >= 3, |l| l.get(false, false)),
            b"gets" => (n >= 3, |l| l.get(true, false)),
            b"gat" => (n >= 3, |l| l.get(false, true)),
            b"gats" => (n >= 3, |l| l.get(true, true)),
            b"set" => (n == 6 || n == 7, |l| l.store(StoreCmd::Set)),
            b"add" => (n == 6 || n == 7, |l| l.store(StoreCmd::Add)),
            b"replace" => (n == 6 || n == 7, |l| l.store(StoreCmd::Replace)),
            b"append" => (n == 6 || n == 7, |l| l.store(StoreCmd::Append)),
            b"prepend" => (n == 6 || n == 7, |l| l.store(StoreCmd::Prepend)),
            b"cas" => (n == 7 || n == 8, |l| l.store(StoreCmd::Cas)),
            b"incr" => (n == 4 || n == 5, |l| l.arith(true)),
            b"decr" => (n == 4 || n == 5, |l| l.arith(false)),
            b"touch" => (n == 4 || n == 5, Self::touch),
            b"delete" => ((3..=5).contains(&n), Self::delete),
            b"flush_all" => ((2..=4).contains(&n), Self::flush_all),
            b"verbosity" => (n == 3 || n == 4, Self::verbosity),
            b"version" => (true, |l| l.req(Request::Version)),
            b"quit" => (true, |l| l.req(Request::Quit)),
            b"stats" => (true, |l| {
                let args = l.t[1..].iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                l.req(Request::Stats { args })
            }),
            b"shutdown" => (true, |l| l.err(reply::ERROR_SHUTDOWN)),
            // Not offered: memcached's admin commands (slabs, lru, lru_crawler, watch, cache_memlimit, ...).
            _ => (false, |l| l.err(reply::ERROR)),
        };
        if ok { run(self) } else { self.err(reply::ERROR) }
    }

    fn get(&self, with_cas: bool, touch: bool) -> Parse<'a> {
        let mut first_key = 1;
        let mut exptime = 0;
        if touch {
            let Some(t) = number::strtol(self.t[1]) else { return self.err(reply::CLIENT_ERROR_BAD_EXPTIME) };
            exptime = i64::from(t);
            first_key = 2;
        }
        let keys = &self.t[first_key..];
        // memcached answers only the error, dropping the hits before the long key and every unsent reply.
        if let Some(long) = keys.iter().position(|k| k.len() > self.limits.max_key) {
            let effect = if touch && long > 0 {
                Effect::Touch { exptime, keys: keys[..long].iter().map(|k| Bytes::copy_from_slice(k)).collect() }
            } else {
                Effect::None
            };
            return Parse::Error {
                reply: reply::CLIENT_ERROR_BAD_FORMAT,
                consumed: self.consumed,
                swallow: 0,
                close: false,
                drop_unsent: true,
                effect,
            };
        }
        let keys = key_span(self.line, keys);
        self.req(if touch { Request::Gat { exptime, keys, with_cas } } else { Request::Get { keys, with_cas } })
    }

    fn store(&self, cmd: StoreCmd) -> Parse<'a> {
        let noreply = self.noreply();
        let bad = || self.err_nr(reply::CLIENT_ERROR_BAD_FORMAT, noreply);
        if self.t[1].len() > self.limits.max_key {
            return bad();
        }
        let (Some(flags), Some(exptime), Some(len)) =
            (number::strtoul(self.t[2]), number::strtol(self.t[3]), number::strtol(self.t[4]))
        else {
            return bad();
        };
        let cas_unique = match cmd {
            StoreCmd::Cas => match number::strtoull(self.t[5]) {
                Some(c) => c,
                None => return bad(),
            },
            _ => 0,
        };
        let Some(block) = self.block_len(len) else { return bad() };
        if self.too_large(self.t[1].len(), flags, block) {
            // memcached also unlinks the key's current item here (for `set`); ferry keeps it: nothing
            // already stored is lost to a refused request.
            return self.err_swallow(if noreply { b"" } else { reply::SERVER_ERROR_TOO_LARGE }, block);
        }
        match self.block(block) {
            None => Parse::Incomplete,
            Some(Err(consumed)) => bad_chunk(if noreply { b"" } else { reply::CLIENT_ERROR_BAD_CHUNK }, consumed),
            Some(Ok((data, consumed))) => {
                let (key, exptime) = (self.key(1), i64::from(exptime));
                Parse::Request { req: Request::Store { cmd, key, flags, exptime, data, cas_unique, noreply }, consumed }
            }
        }
    }

    /// A data block's length with its `\r\n`, if memcached accepts `<bytes>` (0 ..= i32::MAX - 2).
    fn block_len(&self, len: i32) -> Option<usize> {
        (0..=i32::MAX - 2).contains(&len).then(|| len as usize + 2)
    }

    fn too_large(&self, key_len: usize, flags: u32, block: usize) -> bool {
        let flags_len = if flags == 0 { 0 } else { 4 };
        ITEM_HEADER + key_len + 1 + flags_len + block > self.limits.max_item_bytes
    }

    /// The data block after the line: `None` until all of it is there, then the data and the bytes consumed
    /// (line and block), or `Err(consumed)` if it doesn't end in `\r\n`.
    fn block(&self, block: usize) -> Option<Result<(Bytes, usize), usize>> {
        let bytes = self.rest.get(..block)?;
        let consumed = self.consumed + block;
        Some(if bytes.ends_with(b"\r\n") {
            Ok((Bytes::copy_from_slice(&bytes[..block - 2]), consumed))
        } else {
            Err(consumed)
        })
    }

    fn arith(&self, incr: bool) -> Parse<'a> {
        let noreply = self.noreply();
        if self.t[1].len() > self.limits.max_key {
            return self.err_nr(reply::CLIENT_ERROR_BAD_FORMAT, noreply);
        }
        match number::strtoull(self.t[2]) {
            Some(delta) => self.req(Request::Arith { incr, key: self.key(1), delta, noreply }),
            None => self.err_nr(reply::CLIENT_ERROR_BAD_DELTA, noreply),
        }
    }

    fn touch(&self) -> Parse<'a> {
        let noreply = self.noreply();
        if self.t[1].len() > self.limits.max_key {
            return self.err_nr(reply::CLIENT_ERROR_BAD_FORMAT, noreply);
        }
        match number::strtol(self.t[2]) {
            Some(t) => self.req(Request::Touch { key: self.key(1), exptime: i64::from(t), noreply }),
            None => self.err_nr(reply::CLIENT_ERROR_BAD_EXPTIME, noreply),
        }
    }

    /// `delete <key> [0] [noreply]`: memcached 1.6 still accepts a hold time, if it is exactly `0`.
    fn delete(&self) -> Parse<'a> {
        let mut noreply = false;
        if self.n > 3 {
            let zero = self.t[2] == b"0";
            noreply = self.noreply();
            let valid = (self.n == 4 && (zero || noreply)) || (self.n == 5 && zero && noreply);
            if !valid {
                return self.err_nr(reply::CLIENT_ERROR_DELETE_USAGE, noreply);
            }
        }
        if self.t[1].len() > self.limits.max_key {
            return self.err_nr(reply::CLIENT_ERROR_BAD_FORMAT, noreply);
        }
        self.req(Request::Delete { key: self.key(1), noreply })
    }

    fn flush_all(&self) -> Parse<'a> {
        let noreply = self.noreply();
        let mut delay = 0;
        if self.n != if noreply { 3 } else { 2 } {
            match number::strtol(self.t[1]) {
                Some(d) => delay = i64::from(d),
                None => return self.err_nr(reply::CLIENT_ERROR_BAD_EXPTIME, noreply),
            }
        }
        self.req(Request::FlushAll { delay, noreply })
    }

    fn verbosity(&self) -> Parse<'a> {
        let noreply = self.noreply();
        match number::strtoul(self.t[1]) {
            Some(level) => self.req(Request::Verbosity { level, noreply }),
            None => self.err_nr(reply::CLIENT_ERROR_BAD_FORMAT, noreply),
        }
    }

    /// The checks mg, ms, md and ma share, in memcached's order (before any flag is looked at): the error
    /// line, if one fails.
    fn meta_common(&self, too_long: &'static [u8], min_tokens: usize) -> Option<&'static [u8]> {
        if self.n < 3 {
            Some(reply::ERROR)
        } else if self.t[1].len() > self.limits.max_key || self.n < min_tokens {
            Some(reply::CLIENT_ERROR_BAD_FORMAT)
        } else if self.n > 20 {
            Some(too_long)
        } else {
            None
        }
    }

    fn meta_get(&self) -> Parse<'a> {
        if let Some(e) = self.meta_common(reply::CLIENT_ERROR_FLAGS_ARE_TOO_LONG, 0) {
            return self.err(e);
        }
        match meta::parse_flags(&self.t[2..], self.t[1]) {
            Err(e) => self.err(e),
            Ok((flags, _)) if flags.opaque_too_long() => self.err(reply::CLIENT_ERROR_OPAQUE_TOO_LONG),
            Ok((flags, key)) => self.req(Request::MetaGet { key, flags }),
        }
    }

    fn meta_set(&self) -> Parse<'a> {
        if let Some(e) = self.meta_common(reply::CLIENT_ERROR_FLAGS_TOO_LONG, 4) {
            return self.err(e);
        }
        let Some(block) = number::strtol(self.t[2]).and_then(|len| self.block_len(len)) else {
            return self.err(reply::CLIENT_ERROR_BAD_FORMAT);
        };
        // From here on memcached knows the block's size and skips it after an error.
        let (flags, key) = match meta::parse_flags(&self.t[3..], self.t[1]) {
            Ok(parsed) => parsed,
            Err(e) => return self.err_swallow(e, block),
        };
        if !matches!(flags.mode, None | Some(b'E' | b'A' | b'P' | b'R' | b'S')) {
            return self.err_swallow(reply::CLIENT_ERROR_MS_MODE, block);
        }
        if flags.opaque_too_long() {
            return self.err_swallow(reply::CLIENT_ERROR_OPAQUE_TOO_LONG, block);
        }
        if self.too_large(key.len(), flags.client_flags.unwrap_or(0), block) {
            // As for `set`, ferry keeps the current item (memcached unlinks it).
            return self.err_swallow(reply::SERVER_ERROR_TOO_LARGE, block);
        }
        match self.block(block) {
            None => Parse::Incomplete,
            // Never hidden by `q`.
            Some(Err(consumed)) => bad_chunk(reply::CLIENT_ERROR_BAD_CHUNK, consumed),
            Some(Ok((data, consumed))) => {
                Parse::Request { req: Request::MetaSet { key, datalen: block - 2, data, flags }, consumed }
            }
        }
    }

    /// md and ma answer every flag error with the same message.
    fn meta_delete_or_arith(&self, arith: bool) -> Parse<'a> {
        if let Some(e) = self.meta_common(reply::CLIENT_ERROR_FLAGS_TOO_LONG, 0) {
            return self.err(e);
        }
        let (flags, key): (MetaFlags, Bytes) = match meta::parse_flags(&self.t[2..], self.t[1]) {
            Ok(parsed) => parsed,
            Err(_) => return self.err(reply::CLIENT_ERROR_INVALID_OR_DUPLICATE),
        };
        if arith && !matches!(flags.mode, None | Some(b'I' | b'+' | b'D' | b'-')) {
            return self.err(reply::CLIENT_ERROR_MA_MODE);
        }
        if flags.opaque_too_long() {
            return self.err(reply::CLIENT_ERROR_OPAQUE_TOO_LONG);
        }
        self.req(if arith { Request::MetaArith { key, flags } } else { Request::MetaDelete { key, flags } })
    }

    /// `me <key> [b]`: only an exact `b` right after the key decodes it; other tokens are ignored.
    fn meta_debug(&self) -> Parse<'a> {
        if self.n < 3 || self.t[1].len() > self.limits.max_key {
            return self.err(reply::CLIENT_ERROR_BAD_FORMAT);
        }
        let key = if self.n >= 4 && self.t[2] == b"b" {
            match base64::decode(self.t[1]) {
                Some(k) => Bytes::from(k),
                None => return self.err(reply::CLIENT_ERROR_BAD_FORMAT),
            }
        } else {
            self.key(1)
        };
        self.req(Request::MetaDebug { key })
    }
}

/// The keys of a get-family line: the part of `line` from its first key (a token of that line) to its end,
/// where every token is a key. Nothing is copied: the request borrows the read buffer.
fn key_span<'a>(line: &'a [u8], keys: &[&'a [u8]]) -> Keys<'a> {
    let Some(first) = keys.first() else { return Keys::new(&[]) };
    let start =
        (first.as_ptr() as usize).checked_sub(line.as_ptr() as usize).filter(|&o| o + first.len() <= line.len());
    match start {
        Some(start) => Keys::new(&line[start..]),
        None => {
            // Unreachable: tokens are slices of their line. Fall back to the first key alone rather than panic.
            debug_assert!(false, "keys are not tokens of the line");
            Keys::new(first)
        }
    }
}
