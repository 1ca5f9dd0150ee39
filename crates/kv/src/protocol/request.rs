//! A client request, fully parsed and checked: whatever memcached would refuse before touching the cache
//! never becomes a [`Request`] (it is a [`Parse::Error`](super::Parse::Error) with memcached's reply).
//!
//! Numbers carry the value memcached would use, quirks included (see the `number` module): `flags` and
//! `exptime` are already truncated to 32 bits. Times are still as the client sent them; turn them into
//! deadlines with [`exptime::absolute`](super::exptime::absolute).

use bytes::Bytes;

use super::meta::MetaFlags;

/// Which classic storage command stored the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCmd {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent (`NOT_STORED` otherwise).
    Add,
    /// Store only if the key is present (`NOT_STORED` otherwise).
    Replace,
    /// Append the data to the existing value, keeping its flags and exptime (`NOT_STORED` if absent).
    Append,
    /// Prepend the data to the existing value (`NOT_STORED` if absent).
    Prepend,
    /// Store only if the item's cas unique is `cas_unique` (`EXISTS` if not, `NOT_FOUND` if absent).
    Cas,
}

/// One request. A get-family request borrows its keys from the buffer it was parsed from
/// ([`Keys`]); every other request owns what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `get`/`bget` (`with_cas: false`) or `gets`: a `VALUE` line per hit, then `END`. Never empty.
    Get { keys: Keys<'a>, with_cas: bool },
    /// `gat`/`gats`: touch then get. `keys` may be empty (`gat 10` answers a bare `END`).
    Gat { exptime: i64, keys: Keys<'a>, with_cas: bool },
    /// `set`/`add`/`replace`/`append`/`prepend`/`cas`. `cas_unique` is 0 except for `cas`.
    Store { cmd: StoreCmd, key: Bytes, flags: u32, exptime: i64, data: Bytes, cas_unique: u64, noreply: bool },
    /// `delete <key> [0] [noreply]`.
    Delete { key: Bytes, noreply: bool },
    /// `incr`/`decr`: the new value as a decimal line, `NOT_FOUND`, or `CLIENT_ERROR cannot increment or
    /// decrement non-numeric value`.
    Arith { incr: bool, key: Bytes, delta: u64, noreply: bool },
    /// `touch <key> <exptime> [noreply]`: `TOUCHED` or `NOT_FOUND`.
    Touch { key: Bytes, exptime: i64, noreply: bool },
    /// `flush_all [delay] [noreply]`: `OK`. A delay `<= 0` flushes now, otherwise it is an exptime.
    FlushAll { delay: i64, noreply: bool },
    /// `stats [args...]`; `args` are the tokens after `stats` (lossy UTF-8).
    Stats { args: Vec<String> },
    /// `version`: `VERSION <v>`.
    Version,
    /// `verbosity <level> [noreply]`: `OK`.
    Verbosity { level: u32, noreply: bool },
    /// `quit`: close without a reply.
    Quit,
    /// `mg <key> <flags>*`.
    MetaGet { key: Bytes, flags: MetaFlags },
    /// `ms <key> <datalen> <flags>*` and its data block.
    MetaSet { key: Bytes, datalen: usize, data: Bytes, flags: MetaFlags },
    /// `md <key> <flags>*`.
    MetaDelete { key: Bytes, flags: MetaFlags },
    /// `ma <key> <flags>*`.
    MetaArith { key: Bytes, flags: MetaFlags },
    /// `mn`: `MN`, and flush everything queued so far.
    MetaNoop,
    /// `me <key> [b]`: `ME <key> <debug fields>` or `EN`.
    MetaDebug { key: Bytes },
}

impl Request<'_> {
    /// Whether memcached writes out every queued reply after this request (get family, `mn`, `quit`);
    /// see the `parse` module's "When memcached writes".
    pub fn flushes(&self) -> bool {
        matches!(self, Request::Get { .. } | Request::Gat { .. } | Request::MetaNoop | Request::Quit)
    }

    /// Whether every reply to this request is suppressed on success (`noreply`). Meta `q` is finer grained:
    /// see [`quiet_hides`](super::meta::quiet_hides).
    pub fn noreply(&self) -> bool {
        match self {
            Request::Store { noreply, .. }
            | Request::Delete { noreply, .. }
            | Request::Arith { noreply, .. }
            | Request::Touch { noreply, .. }
            | Request::FlushAll { noreply, .. }
            | Request::Verbosity { noreply, .. } => *noreply,
            _ => false,
        }
    }
}

/// The keys of a get-family request: the part of its command line that holds them, borrowed from the read
/// buffer and split on spaces as they are read. A get is the most frequent request and the keys live only
/// until its reply is built, so carrying them costs no allocation and no copy (a copied key and the vector
/// holding it were the two allocations left per get).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Keys<'a> {
    /// Keys separated by runs of spaces, nothing else (no command, no line end).
    span: &'a [u8],
}

impl<'a> Keys<'a> {
    /// The keys in `span`: the tokens of a command line from the first key to the line's end.
    pub fn new(span: &'a [u8]) -> Keys<'a> {
        debug_assert!(!span.contains(&b'\n'), "a key span holds one line");
        Keys { span }
    }

    /// The keys in order, as the client sent them.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        super::parse::Tokens::new(self.span)
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl std::fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|k| String::from_utf8_lossy(k))).finish()
    }
}
