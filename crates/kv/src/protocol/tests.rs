//! Whole-protocol tests: request streams as memcached 1.6.18 handled them, and property tests that the
//! parser never panics, always makes progress and reads a pipeline the same however it is split.
//!
//! Each `run` expectation lists what memcached did with each request in turn: a request ferry must execute
//! (written compactly, e.g. `set k 0 0 "abc"`), memcached's error line (without `\r\n`), `-` for an error
//! `noreply` hid, `CLOSE` for a dropped connection, `…` for bytes left waiting. The comment beside each gives
//! memcached's full reply where it helps.

use proptest::prelude::*;

use super::parse::{Limits, Parse, parse};
use super::request::{Keys, Request};

fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn brief(req: &Request) -> String {
    let keys = |ks: &Keys<'_>| ks.iter().map(esc).collect::<Vec<_>>().join(" ");
    let nr = |n: &bool| if *n { " noreply" } else { "" };
    match req {
        Request::Get { keys: ks, with_cas } => format!("get{} {}", if *with_cas { "s" } else { "" }, keys(ks)),
        Request::Gat { exptime, keys: ks, with_cas } => {
            format!("gat{} {exptime} {}", if *with_cas { "s" } else { "" }, keys(ks)).trim_end().to_string()
        }
        Request::Store { cmd, key, flags, exptime, data, cas_unique, noreply } => {
            let cas = if *cas_unique == 0 { String::new() } else { format!(" cas={cas_unique}") };
            let cmd = format!("{cmd:?}").to_lowercase();
            format!("{cmd} {} {flags} {exptime} \"{}\"{cas}{}", esc(key), esc(data), nr(noreply))
        }
        Request::Delete { key, noreply } => format!("delete {}{}", esc(key), nr(noreply)),
        Request::Arith { incr, key, delta, noreply } => {
            format!("{} {} {delta}{}", if *incr { "incr" } else { "decr" }, esc(key), nr(noreply))
        }
        Request::Touch { key, exptime, noreply } => format!("touch {} {exptime}{}", esc(key), nr(noreply)),
        Request::FlushAll { delay, noreply } => format!("flush_all {delay}{}", nr(noreply)),
        Request::Stats { args } => format!("stats {}", args.join(" ")).trim_end().to_string(),
        Request::Version => "version".into(),
        Request::Verbosity { level, noreply } => format!("verbosity {level}{}", nr(noreply)),
        Request::Quit => "quit".into(),
        Request::MetaGet { key, .. } => format!("mg {}", esc(key)),
        Request::MetaSet { key, data, .. } => format!("ms {} \"{}\"", esc(key), esc(data)),
        Request::MetaDelete { key, .. } => format!("md {}", esc(key)),
        Request::MetaArith { key, .. } => format!("ma {}", esc(key)),
        Request::MetaNoop => "mn".into(),
        Request::MetaDebug { key } => format!("me {}", esc(key)),
    }
}

/// Parses a whole stream as a session would, skipping swallowed bytes.
fn run_with(input: &[u8], limits: &Limits) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        match parse(&input[pos..], limits) {
            Parse::Incomplete => {
                out.push("…".to_string());
                break;
            }
            Parse::Request { req, consumed } => {
                out.push(brief(&req));
                pos += consumed;
            }
            Parse::Error { close: true, .. } => {
                out.push("CLOSE".to_string());
                break;
            }
            Parse::Error { reply, consumed, swallow, .. } => {
                let text = String::from_utf8_lossy(reply.strip_suffix(b"\r\n").unwrap_or(reply)).into_owned();
                out.push(if text.is_empty() { "-".to_string() } else { text });
                pos += consumed + swallow;
            }
        }
    }
    out
}

fn run(input: &[u8]) -> Vec<String> {
    run_with(input, &Limits::default())
}

#[track_caller]
fn check(input: &[u8], expected: &[&str]) {
    assert_eq!(run(input), expected, "input: {}", esc(input));
}

const BAD: &str = "CLIENT_ERROR bad command line format";
const CHUNK: &str = "CLIENT_ERROR bad data chunk";

#[test]
fn framing() {
    check(b"get k\r\n", &["get k"]);
    check(b"get k\n", &["get k"]); // a bare \n ends a line too
    check(b"\r\n", &["ERROR"]);
    check(b"\n", &["ERROR"]);
    check(b"get a\r\r\n", &["get a\\r"]); // one \r dropped: key "a\r", a miss (`END`)
    check(b"get  a   a  \r\n", &["get a a"]); // VALUE a twice
    check(b"   get a\r\n", &["get a"]);
    check(b"get\ta\r\n", &["ERROR"]); // only spaces separate
    check(b"set a\tb 0 0 1\r\n1\r\nget a\x01b\r\n", &["set a\\tb 0 0 \"1\"", "get a\\x01b"]); // STORED, keys unchecked
    check(b"get a\x00b a\r\n", &["get a"]); // the line ends at NUL: VALUE a only
    check(b"set a\x00 0 0 1\r\n1\r\n", &["ERROR", "ERROR"]);
    check(b"GET k\r\nx\r\nge\r\nmx\r\nm\r\nmgg\r\n", &["ERROR"; 6]);
    check(b"get k", &["…"]);
    check(b"set k 0 0 3\r\nab", &["…"]);
}

#[test]
fn storage() {
    check(b"set k 0 0 3\r\nabc\r\nget k\r\n", &["set k 0 0 \"abc\"", "get k"]);
    check(b"set k 0 0 3 garbage\r\nabc\r\n", &["set k 0 0 \"abc\""]); // STORED: a 6th token is ignored
    check(b"set k 0 0 0\r\n\r\n", &["set k 0 0 \"\""]);
    check(b"set k 0 0 3\r\na\r\n\r\n", &["set k 0 0 \"a\\r\\n\""]);
    for cmd in ["add", "replace", "append", "prepend"] {
        check(format!("{cmd} k 1 2 1 noreply\r\nx\r\n").as_bytes(), &[&format!("{cmd} k 1 2 \"x\" noreply")]);
    }
    check(b"cas k 0 0 1 99\r\ny\r\n", &["cas k 0 0 \"y\" cas=99"]); // EXISTS
    check(b"cas k 0 0 1 99 noreply\r\ny\r\n", &["cas k 0 0 \"y\" cas=99 noreply"]);
    check(b"cas k 0 0 1\r\ny\r\n", &["ERROR", "ERROR"]);
    check(b"cas k 0 0 1 abc\r\ny\r\n", &[BAD, "ERROR"]);
    check(b"cas k 0 0 1 -1\r\ny\r\n", &[BAD, "ERROR"]);
    check(b"cas k 0 0 1 noreply\r\nx\r\n", &["-", "ERROR"]);
    check(b"cas k 0 0 1 1 2 3\r\nx\r\n", &["ERROR", "ERROR"]);
    check(b"set k 0 0\r\nset k 0 0 1 2 3\r\n", &["ERROR", "ERROR"]);
    let z16 = ["z"; 16].join(" ");
    check(format!("set a 0 0 1 {z16}\r\n1\r\n").as_bytes(), &["ERROR", "ERROR"]);
}

#[test]
fn data_block_errors_consume_exactly_the_block() {
    // CLIENT_ERROR bad data chunk / ERROR (the leftover \n) / VALUE k 0 3 abc END
    check(b"set k 0 0 3\r\nabcd\r\nget k\r\n", &[CHUNK, "ERROR", "get k"]);
    check(b"set k 0 0 3\r\nab\r\n\r\nget k\r\n", &[CHUNK, "ERROR", "get k"]);
    check(b"set k 0 0 3\r\nabc\nXget k\r\n", &[CHUNK, "get k"]);
    check(b"set k 0 0 1\r\n\r\n\r\nget k\r\n", &[CHUNK, "ERROR", "get k"]);
    check(b"set k 0 0 3 noreply\r\nabcd\r\nget k\r\n", &["-", "ERROR", "get k"]);
    // Errors in the line leave the block to be read as commands.
    check(b"set k 0 0 -1\r\nget k\r\n", &[BAD, "get k"]);
    check(b"set k 0 0 abc\r\nget k\r\n", &[BAD, "get k"]);
    check(b"set k 0 0 abc noreply\r\nget k\r\n", &["-", "get k"]);
    check(b"set k 0 0 2147483646\r\nx\r\n", &[BAD, "ERROR"]);
    check(b"set k 5zz 0 1\r\nx\r\n", &[BAD, "ERROR"]);
    check(b"set k -1 0 1\r\nx\r\n", &[BAD, "ERROR"]);
    check(b"set k 18446744073709551616 0 1\r\nx\r\n", &[BAD, "ERROR"]);
    check(b"set k 0 9223372036854775808 1\r\nx\r\n", &[BAD, "ERROR"]);
}

#[test]
fn numbers_like_memcached() {
    check(b"set k 4294967296 0 1\r\nx\r\n", &["set k 0 0 \"x\""]); // gets: VALUE k 0 1 3
    check(b"set k 18446744073709551615 0 1\r\nx\r\n", &["set k 4294967295 0 \"x\""]);
    check(b"set k -18446744073709551615 0 1\r\nx\r\n", &["set k 1 0 \"x\""]);
    check(b"set k -0 0 1\r\nx\r\n", &["set k 0 0 \"x\""]);
    check(b"set k +5 0 1\r\nx\r\n", &["set k 5 0 \"x\""]);
    check(b"set k 5\t 0 1\r\nx\r\n", &["set k 5 0 \"x\""]);
    check(b"set k \t5 0 1\r\nx\r\n", &["set k 5 0 \"x\""]);
    check(b"set k 5\tzz 0 1\r\nx\r\n", &["set k 5 0 \"x\""]);
    check(b"set k 0 -2147483649 1\r\nx\r\n", &["set k 0 2147483647 \"x\""]); // then a hit
    check(b"set k 0 2147483648 1\r\nx\r\n", &["set k 0 -2147483648 \"x\""]); // then a miss
    check(b"set k 0 4294967296 1\r\nx\r\n", &["set k 0 0 \"x\""]);
    check(b"set k 0 0 4294967297\r\nx\r\n", &["set k 0 0 \"x\""]); // length 1
}

#[test]
fn keys() {
    let k250 = "x".repeat(250);
    let k251 = "x".repeat(251);
    check(format!("set {k250} 0 0 1\r\nx\r\n").as_bytes(), &[&format!("set {k250} 0 0 \"x\"")]);
    check(format!("set {k251} 0 0 1\r\nx\r\n").as_bytes(), &[BAD, "ERROR"]);
    check(format!("set {k251} 0 0 1 noreply\r\nx\r\n").as_bytes(), &["-", "ERROR"]);
    // A long key anywhere fails the whole get, earlier hits included.
    check(format!("get a {k251} b\r\nget a\r\n").as_bytes(), &[BAD, "get a"]);
    let b25 = ["b"; 25].join(" ");
    check(format!("get {b25} {k251}\r\n").as_bytes(), &[BAD]);
    let a30 = ["a"; 30].join(" ");
    check(format!("get {a30}\r\n").as_bytes(), &[&format!("get {a30}")]);
    check(format!("gat 10 {k251}\r\n").as_bytes(), &[BAD]);
    check(format!("incr {k251} 1\r\ntouch {k251} 1\r\nincr {k251} x\r\n").as_bytes(), &[BAD, BAD, BAD]);
    check(format!("delete {k251}\r\ndelete {k251} noreply\r\n").as_bytes(), &[BAD, "-"]);
}

/// `delete mk\r\nget k <251 bytes>\r\nmn\r\n` made memcached answer only the error and `MN`: the queued
/// `NOT_FOUND` was thrown away. Errors of other commands keep what was queued.
#[test]
fn long_get_key_drops_unsent_replies() {
    let limits = Limits::default();
    let long = format!("get k {}\r\n", "x".repeat(251));
    for line in [long.clone(), long.replacen("get", "bget", 1), long.replacen("get k", "gat 1", 1)] {
        let parsed = parse(line.as_bytes(), &limits);
        assert!(matches!(parsed, Parse::Error { drop_unsent: true, close: false, .. }), "{line}: {parsed:?}");
    }
    for line in [&b"x\r\n"[..], b"gat x k\r\n", b"set k 0 0 1\r\nxx\r\n", b"delete k 1\r\n"] {
        assert!(matches!(parse(line, &limits), Parse::Error { drop_unsent: false, .. }));
    }
    let flushing = |line: &[u8]| match parse(line, &limits) {
        Parse::Request { req, .. } => req.flushes(),
        other => panic!("{other:?}"),
    };
    assert!(flushing(b"get a\r\n") && flushing(b"gats 1 a\r\n") && flushing(b"mn\r\n") && flushing(b"quit\r\n"));
    assert!(!flushing(b"mg a v\r\n") && !flushing(b"version\r\n") && !flushing(b"delete a\r\n"));
}

#[test]
fn other_classic_commands() {
    check(b"get\r\nget \r\ngets\r\n", &["ERROR", "ERROR", "ERROR"]);
    check(b"bget k\r\n", &["get k"]);
    check(
        b"gat\r\ngat 10\r\ngat x k\r\ngats 10 k\r\ngat x noreply\r\n",
        &[
            "ERROR",
            "gat 10", // END
            "CLIENT_ERROR invalid exptime argument",
            "gats 10 k",
            "CLIENT_ERROR invalid exptime argument",
        ],
    );
    check(
        b"incr a 1 x\r\nincr a x\r\nincr a -1\r\nincr a x noreply\r\nincr a\r\nincr a 1 2 3\r\n",
        &[
            "incr a 1",
            "CLIENT_ERROR invalid numeric delta argument",
            "CLIENT_ERROR invalid numeric delta argument",
            "-",
            "ERROR",
            "ERROR",
        ],
    );
    check(
        b"decr a 18446744073709551615\r\nincr a 18446744073709551616\r\nincr k 1 noreply\r\n",
        &["decr a 18446744073709551615", "CLIENT_ERROR invalid numeric delta argument", "incr k 1 noreply"],
    );
    check(
        b"touch a 10\r\ntouch a x\r\ntouch a\r\ntouch a 10 x\r\ntouch a x noreply\r\n",
        &["touch a 10", "CLIENT_ERROR invalid exptime argument", "ERROR", "touch a 10", "-"],
    );
    let usage = "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]";
    check(
        b"delete a 0\r\ndelete a 1\r\ndelete a 0 noreply\r\ndelete a noreply\r\ndelete a x y\r\ndelete a 0 x\r\n\
          delete\r\ndelete a 0 noreply x\r\ndelete a 1 noreply\r\ndelete noreply\r\n",
        &[
            "delete a",
            usage,
            "delete a noreply",
            "delete a noreply",
            usage,
            usage,
            "ERROR",
            "ERROR",
            "-",
            "delete noreply",
        ],
    );
    check(
        b"verbosity\r\nverbosity 1\r\nverbosity 1 noreply\r\nverbosity x\r\nverbosity x noreply\r\n\
          verbosity 1 2\r\nverbosity 1 2 3\r\nverbosity noreply\r\nverbosity -1\r\n",
        &["ERROR", "verbosity 1", "verbosity 1 noreply", BAD, "-", "verbosity 1", "ERROR", "-", BAD],
    );
    check(
        b"flush_all\r\nflush_all 0\r\nflush_all noreply\r\nflush_all 10 noreply\r\nflush_all x\r\n\
          flush_all x noreply\r\nflush_all 1 2\r\nflush_all 1 2 3\r\nflush_all -5\r\nflush_all noreply x\r\n",
        &[
            "flush_all 0",
            "flush_all 0",
            "flush_all 0 noreply",
            "flush_all 10 noreply",
            "CLIENT_ERROR invalid exptime argument",
            "-",
            "flush_all 1",
            "ERROR",
            "flush_all -5",
            "CLIENT_ERROR invalid exptime argument",
        ],
    );
    check(b"version x y\r\nquit x\r\n", &["version", "quit"]);
    check(b"stats\r\nstats detail dump\r\n", &["stats", "stats detail dump"]);
    check(b"shutdown\r\nshutdown graceful\r\n", &["ERROR: shutdown not enabled"; 2]);
}

#[test]
fn too_large_swallows_the_block() {
    let limits = Limits::default();
    let too_large = "SERVER_ERROR object too large for cache";
    // The largest values memcached took with 1 MiB items: 1048516 bytes for key `k` and flags 0, 4 less
    // with non-zero flags, 249 less for a 250-byte key.
    for (key, flags, max) in [(1, 0, 1048516), (1, 1, 1048512), (250, 0, 1048267), (250, u32::MAX, 1048263)] {
        let key = "k".repeat(key);
        for (len, fits) in [(max, true), (max + 1, false)] {
            let line = format!("set {key} {flags} 0 {len}\r\n");
            match parse(line.as_bytes(), &limits) {
                Parse::Incomplete => assert!(fits),
                Parse::Error { reply, consumed, swallow, close: false, drop_unsent: false, .. } => {
                    assert!(!fits);
                    assert_eq!(reply, b"SERVER_ERROR object too large for cache\r\n");
                    assert_eq!((consumed, swallow), (line.len(), len + 2));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // SERVER_ERROR, then the block (which holds `mn` lines) is skipped and `\r\n` reads as ERROR: exactly
    // <bytes> + 2 bytes are swallowed.
    let small = Limits { max_item_bytes: 100, ..limits };
    check_with(b"set k 0 0 100\r\n", b"mn\r\n", 25, b"xx\r\nmn\r\n", &small, &[too_large, "ERROR", "mn"]);
    check_with(b"set k 0 0 100 noreply\r\n", b"mn\r\n", 25, b"xxmn\r\n", &small, &["-", "mn"]);
    // ms too: a 2-byte decoded key counts, not its base64.
    let ms = |len: usize| format!("ms bWs= {len} b\r\n{}\r\nmn\r\n", "v".repeat(len));
    assert_eq!(run(ms(1048515).as_bytes()), ["ms mk \"".to_string() + &"v".repeat(1048515) + "\"", "mn".into()]);
    check(ms(1048516).as_bytes(), &[too_large, "mn"]);
    check(format!("ms kk 1048512 F1\r\n{}\r\nmn\r\n", "v".repeat(1048512)).as_bytes(), &[too_large, "mn"]);
}

#[track_caller]
fn check_with(line: &[u8], unit: &[u8], n: usize, tail: &[u8], limits: &Limits, expected: &[&str]) {
    let mut input = line.to_vec();
    (0..n).for_each(|_| input.extend_from_slice(unit));
    input.extend_from_slice(tail);
    assert_eq!(run_with(&input, limits), expected);
}

#[test]
fn long_lines() {
    let limits = Limits::default();
    let junk = |n: usize| vec![b'x'; n];
    // Without a \n, 2048 bytes wait and 2049 close (`get a\r\n` + junk: END, then the close).
    check(&[b"get a\r\n".as_slice(), &junk(2048)].concat(), &["get a", "…"]);
    check(&[b"get a\r\n".as_slice(), &junk(2049)].concat(), &["get a", "CLOSE"]);
    // ...unless it is a multiget, after at most 100 spaces.
    let get = |spaces: usize, cmd: &str| [" ".repeat(spaces).as_bytes(), cmd.as_bytes(), &junk(3000)].concat();
    assert_eq!(parse(&get(100, "get "), &limits), Parse::Incomplete);
    assert_eq!(parse(&get(0, "gets "), &limits), Parse::Incomplete);
    assert!(matches!(parse(&get(101, "get "), &limits), Parse::Error { close: true, .. }));
    assert!(matches!(parse(&get(0, "get\t"), &limits), Parse::Error { close: true, .. }));
    assert!(matches!(parse(&get(0, "gat 0 "), &limits), Parse::Error { close: true, .. }));
    // A whole line is read up to memcached's 16384-byte buffer: `set kkk…` is ERROR at 16382 bytes + \r\n,
    // a closed connection at 16383.
    let set = |n: usize| [b"set ".as_slice(), &vec![b'k'; n - 4], b"\r\nmn\r\n"].concat();
    check(&set(16382), &["ERROR", "mn"]);
    check(&set(16383), &["CLOSE"]);
    let big_get = [b"get ".as_slice(), &b"k ".repeat(150_000), b"\r\n"].concat();
    assert_eq!(run(&big_get).len(), 1);
}

#[test]
fn meta_get() {
    check(b"mg\r\nmg \r\n", &["ERROR", "ERROR"]);
    check(
        b"mg mk E5\r\nmg mk x\r\nmg mk v v\r\nmg mk vv\r\nmg mk \xff\r\n",
        &[
            "CLIENT_ERROR invalid flag",
            "CLIENT_ERROR invalid flag",
            "CLIENT_ERROR duplicate flag",
            "mg mk",
            "CLIENT_ERROR duplicate flag",
        ],
    );
    check(
        b"mg mk N T R\r\nmg mk b\r\n",
        &["CLIENT_ERROR bad token in command line format", "CLIENT_ERROR error decoding key"],
    );
    let o31 = "1".repeat(31);
    check(
        format!("mg mk O{o31}\r\nmg mk O{o31}1\r\nmg nope q O{o31}1\r\n").as_bytes(),
        &["mg mk", "CLIENT_ERROR opaque token too long", "CLIENT_ERROR opaque token too long"],
    );
    // At most 17 flags: `mg` with 18 is refused before the flags are read.
    check(b"mg mk s f c k h l t v u O P L q N0 T0 R0 b\r\n", &["CLIENT_ERROR error decoding key"]);
    check(b"mg mk s f c k h l t v u O P L q N0 T0 R0 I F0\r\n", &["CLIENT_ERROR options flags are too long"]);
    check(b"mg bWs= b k v\r\nmg b@@TE= b\r\nmg b@TE=x b\r\n", &["mg mk", "mg m1", "CLIENT_ERROR error decoding key"]);
    let Parse::Request { req: Request::MetaGet { flags, .. }, .. } =
        parse(b"mg bWs= b k v f t\r\n", &Limits::default())
    else {
        panic!()
    };
    assert!(flags.base64_key && flags.return_value);
    assert_eq!(flags.order, b"kft");
}

#[test]
fn meta_set() {
    check(b"ms mk 2\r\nhi\r\nms mk 2 q O5 k\r\nhi\r\n", &["ms mk \"hi\"", "ms mk \"hi\""]);
    // Errors before the length is known leave the block to be read as a command.
    check(
        b"ms mk\r\nhi\r\nms mk abc\r\nhi\r\nms mk -1\r\nhi\r\nms mk 2x\r\nhi\r\nms\r\n",
        &[BAD, "ERROR", BAD, "ERROR", BAD, "ERROR", BAD, "ERROR", "ERROR"],
    );
    check(format!("ms {} 2 b\r\nhi\r\n", "A".repeat(252)).as_bytes(), &[BAD, "ERROR"]);
    check(b"ms mk 2 s f c k h l t v u O P L q N0 T0 R0 I\r\nhi\r\n", &["CLIENT_ERROR options flags too long", "ERROR"]);
    // Flag errors once the length is known skip the block.
    check(
        b"ms mk 2 x\r\nhi\r\nms mk 2 v v\r\nhi\r\nms mk 2 Fz\r\nhi\r\nms mk 2 Tz\r\nhi\r\nms mk 2 T\r\nhi\r\n",
        &[
            "CLIENT_ERROR invalid flag",
            "CLIENT_ERROR duplicate flag",
            BAD,
            "CLIENT_ERROR bad token in command line format",
            "CLIENT_ERROR bad token in command line format",
        ],
    );
    check(
        b"ms mk 2 E5\r\nhi\r\nms mk 2 S2\r\nhi\r\nms mk 2 b\r\nhi\r\nms mk 2 F-1\r\nhi\r\n",
        &["CLIENT_ERROR invalid flag", "CLIENT_ERROR invalid flag", "CLIENT_ERROR error decoding key", BAD],
    );
    check(
        b"ms mk 2 MX\r\nhi\r\nms mk 2 Mxy\r\nhi\r\nms mk 2 ME q\r\nhi\r\n",
        &["CLIENT_ERROR invalid mode for ms M token", "CLIENT_ERROR incorrect length for M token", "ms mk \"hi\""],
    );
    let o40 = "1".repeat(40);
    check(
        format!("ms big 5 O{o40} Mx\r\nhello\r\nms big 5 O{o40}\r\nhello\r\nmn\r\n").as_bytes(),
        &["CLIENT_ERROR invalid mode for ms M token", "CLIENT_ERROR opaque token too long", "mn"],
    );
    // A bad block is always reported, `q` or not.
    check(b"ms mk 2\r\nhiX\r\nms mk 2 q\r\nhiX\r\nmn\r\n", &[CHUNK, "ERROR", CHUNK, "ERROR", "mn"]);
    check(b"ms bWs= 2 F5 T100 c k O1 b I\r\nhi\r\n", &["ms mk \"hi\""]);
}

#[test]
fn meta_delete_arith_noop_debug() {
    let invalid = "CLIENT_ERROR invalid or duplicate flag";
    check(
        b"md mk x\r\nmd mk v v\r\nmd mk Tx\r\nmd mk b\r\nmd\r\nmd mk k O1 b\r\nmd bWs= b k O1 q\r\n",
        &[invalid, invalid, invalid, invalid, "ERROR", invalid, "md mk"],
    );
    check(b"md mk s f c k h l t v u O P L q N0 T0 R0 I F0\r\n", &["CLIENT_ERROR options flags too long"]);
    check(
        b"ma cnt\r\nma cnt N0 J10\r\nma cnt v MD D3 t c k O5\r\nma cnt M-\r\nma cnt Mx\r\nma cnt Dx\r\nma cnt Jx\r\n",
        &["ma cnt", "ma cnt", "ma cnt", "ma cnt", "CLIENT_ERROR invalid mode for ma M token", invalid, invalid],
    );
    check(b"mn\r\nmn foo bar\r\n", &["mn", "mn"]);
    check(
        b"me mk\r\nme\r\nme bWs= b\r\nme bWs=\r\nme !!!! b\r\nme mk x y z\r\n",
        &["me mk", BAD, "me mk", "me bWs=", BAD, "me mk"],
    );
}

/// Pieces of a pipeline: valid requests and malformed ones memcached answers without closing.
fn request_piece() -> impl Strategy<Value = Vec<u8>> {
    let key = "[a-z0-9]{1,12}";
    let data = proptest::collection::vec(any::<u8>(), 0..40);
    let nr = || proptest::option::of(Just(" noreply"));
    prop_oneof![
        (proptest::collection::vec(key, 1..5), any::<bool>()).prop_map(|(ks, cas)| format!(
            "get{} {}\r\n",
            if cas { "s" } else { "" },
            ks.join(" ")
        )
        .into_bytes()),
        (key, -5i32..5, key).prop_map(|(k, e, k2)| format!("gat {e} {k} {k2}\r\n").into_bytes()),
        (
            prop::sample::select(vec!["set", "add", "replace", "append", "prepend"]),
            key,
            any::<u32>(),
            data.clone(),
            nr()
        )
            .prop_map(|(cmd, k, f, d, nr)| {
                [format!("{cmd} {k} {f} 0 {}{}\r\n", d.len(), nr.unwrap_or("")).as_bytes(), &d, b"\r\n"].concat()
            }),
        (key, any::<u64>(), data.clone()).prop_map(|(k, c, d)| [
            format!("cas {k} 0 0 {} {c}\r\n", d.len()).as_bytes(),
            &d,
            b"\r\n"
        ]
        .concat()),
        (key, nr()).prop_map(|(k, nr)| format!("delete {k}{}\r\n", nr.unwrap_or("")).into_bytes()),
        (key, any::<u64>()).prop_map(|(k, d)| format!("incr {k} {d}\r\ndecr {k} 1 noreply\r\n").into_bytes()),
        (key, -100i32..100).prop_map(|(k, e)| format!("touch {k} {e}\r\n").into_bytes()),
        Just(b"version\r\nflush_all\r\nstats items\r\nverbosity 1\r\nmn\r\n".to_vec()),
        (key, "( [kvcstfqhlu]| O[0-9]{1,8}| T[0-9]{1,3}){0,6}")
            .prop_map(|(k, f)| format!("mg {k}{f}\r\n").into_bytes()),
        (key, data.clone(), "( [kcq]| F[0-9]{1,3}| T[0-9]{1,3}| M[EAPRS]){0,4}").prop_map(|(k, d, f)| [
            format!("ms {k} {}{f}\r\n", d.len()).as_bytes(),
            &d,
            b"\r\n"
        ]
        .concat()),
        (key, "( [kq]| C[0-9]{1,3}| I){0,3}").prop_map(|(k, f)| format!("md {k}{f}\r\n").into_bytes()),
        (key, "( [vkq]| D[0-9]{1,3}| N0| J[0-9]| M[ID+-]){0,4}")
            .prop_map(|(k, f)| format!("ma {k}{f}\r\n").into_bytes()),
        Just(b"ms bWs= 2 b k\r\nhi\r\nme bWs= b\r\n".to_vec()),
        // Malformed: token salad, bad blocks, refused lengths, flag errors, noreply errors.
        "[a-z0-9 \t\r]{0,60}".prop_map(|l| format!("{l}\r\n").into_bytes()),
        "[gsetmdacvrx0-9 \\-]{0,40}\n".prop_map(String::into_bytes),
        (key, data.clone())
            .prop_map(|(k, d)| [format!("set {k} 0 0 {}\r\n", d.len() + 1).as_bytes(), &d, b"\r\n"].concat()),
        (key, data.clone())
            .prop_map(|(k, d)| [format!("set {k} 0 0 {} noreply\r\n", d.len()).as_bytes(), &d, b"XY"].concat()),
        (key, 300usize..600)
            .prop_map(|(k, n)| [format!("set {k} 0 0 {n}\r\n").as_bytes(), &vec![b'\n'; n + 2]].concat()),
        (key, data).prop_map(|(k, d)| [format!("ms {k} {} Zz\r\n", d.len()).as_bytes(), &d, b"\r\n"].concat()),
        Just(b"incr k x noreply\r\nget\r\ndelete a 1\r\nmg mk v v\r\nset k 0 0 -1\r\n".to_vec()),
    ]
}

/// A session's loop over arbitrary chunks: parse while whole requests are buffered, skip swallowed bytes.
fn run_chunked(chunks: &[&[u8]], limits: &Limits) -> Vec<String> {
    let (mut out, mut buf, mut skip) = (Vec::new(), Vec::<u8>::new(), 0usize);
    for chunk in chunks {
        let s = skip.min(chunk.len());
        skip -= s;
        buf.extend_from_slice(&chunk[s..]);
        while skip == 0 {
            match parse(&buf, limits) {
                Parse::Incomplete => break,
                Parse::Request { req, consumed } => {
                    out.push(brief(&req));
                    buf.drain(..consumed);
                }
                Parse::Error { close: true, .. } => return out,
                Parse::Error { reply, consumed, swallow, .. } => {
                    out.push(esc(reply));
                    buf.drain(..consumed);
                    let s = swallow.min(buf.len());
                    buf.drain(..s);
                    skip = swallow - s;
                }
            }
        }
    }
    out
}

fn pipeline_limits() -> Limits {
    Limits { max_item_bytes: 256, ..Limits::default() }
}

proptest! {
    #[test]
    fn never_panics_and_always_progresses(buf in proptest::collection::vec(any::<u8>(), 0..3000)) {
        match parse(&buf, &Limits::default()) {
            Parse::Incomplete => {}
            Parse::Request { consumed, .. } | Parse::Error { consumed, .. } => {
                prop_assert!(consumed > 0 && consumed <= buf.len());
            }
        }
    }

    #[test]
    fn token_soup_never_panics(buf in "((get|gets|gat|set|cas|incr|delete|touch|flush_all|verbosity|mg|ms|md|ma|me|mn|noreply|b|k|v|q|O1|T-1|F9|C1|M[A-Z+-]|N|D|J|[0-9]{1,25}|-[0-9]{1,3}|[a-zA-Z=]{1,8}|\\x00|\r|\n|\r\n| {1,3}) ?){0,40}") {
        let limits = Limits { max_item_bytes: 64, ..Limits::default() };
        let mut pos = 0;
        while pos < buf.len() {
            match parse(&buf.as_bytes()[pos..], &limits) {
                Parse::Incomplete | Parse::Error { close: true, .. } => break,
                Parse::Request { consumed, .. } => { prop_assert!(consumed > 0); pos += consumed; }
                Parse::Error { consumed, swallow, .. } => { prop_assert!(consumed > 0); pos += consumed + swallow; }
            }
        }
    }

    #[test]
    fn split_pipelines_parse_like_whole_ones(
        pieces in proptest::collection::vec(request_piece(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let input = pieces.concat();
        let limits = pipeline_limits();
        let whole = run_chunked(&[&input], &limits);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        at.extend([0, input.len()]);
        at.sort_unstable();
        let chunks: Vec<&[u8]> = at.windows(2).map(|w| &input[w[0]..w[1]]).collect();
        prop_assert_eq!(&run_chunked(&chunks, &limits), &whole);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&run_chunked(&bytewise, &limits), &whole);
    }

    #[test]
    fn a_request_is_incomplete_until_its_last_byte(piece in request_piece()) {
        let limits = pipeline_limits();
        for end in 0..piece.len() {
            let prefix = &piece[..end];
            if !prefix.contains(&b'\n') {
                prop_assert_eq!(parse(prefix, &limits), Parse::Incomplete);
            }
        }
        if let Parse::Request { consumed, .. } = parse(&piece, &limits) {
            for end in 0..consumed {
                prop_assert_eq!(parse(&piece[..end], &limits), Parse::Incomplete);
            }
        }
    }
}

/// Every key, however many: around the count of tokens the tokenizer keeps on the stack (24, the command
/// included) and well past it.
#[test]
fn multiget_keys_are_the_tokens() {
    for count in [1, 22, 23, 24, 25, 40] {
        let keys: Vec<String> = (0..count).map(|i| format!("key:{i}:{}", "x".repeat(i % 7))).collect();
        let line = format!("gets  {}  \r\n", keys.join("   "));
        let Parse::Request { req: Request::Get { keys: got, with_cas: true }, consumed } =
            parse(line.as_bytes(), &Limits::default())
        else {
            panic!("not a gets")
        };
        assert_eq!(consumed, line.len());
        let got: Vec<&[u8]> = got.iter().collect();
        let want: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        assert_eq!(got, want, "{count} keys");
    }
}
