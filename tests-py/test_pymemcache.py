#!/usr/bin/env python3
"""Round trips through pymemcache, a widely used memcached client, against a
server speaking the memcached text protocol (ferry's kv service, or memcached
itself for comparison).

    python3 tests-py/test_pymemcache.py HOST PORT

Exits 0 when every check passes; an assertion names the first that fails.
Needs `pip install pymemcache`. Run by crates/cli/tests/kv_conformance.rs.
"""

import sys

try:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheIllegalInputError,
        MemcacheServerError,
        MemcacheUnknownCommandError,
    )
    from pymemcache.serde import pickle_serde
except ImportError:
    sys.exit("pymemcache is not installed: pip install pymemcache")


def expect_raises(exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as e:
        return e
    raise AssertionError("%s(%r) did not raise %s" % (fn.__name__, args, exc.__name__))


def classic(c):
    """Storage, retrieval and arithmetic with explicit replies (noreply=False)."""
    assert c.flush_all(noreply=False) is True
    assert c.get("absent") is None
    assert c.get("absent", default=b"dflt") == b"dflt"

    assert c.set("k", b"value", noreply=False) is True
    assert c.get("k") == b"value"
    assert c.set("k", "text", noreply=False) is True  # str is encoded
    assert c.get("k") == b"text"
    assert c.set("empty", b"", noreply=False) is True
    assert c.get("empty") == b""
    binary = bytes(range(256)) + b"\r\nEND\r\n"
    assert c.set("bin", binary, noreply=False) is True
    assert c.get("bin") == binary

    # add / replace
    assert c.add("k", b"other", noreply=False) is False
    assert c.add("fresh", b"1", noreply=False) is True
    assert c.get("fresh") == b"1"
    assert c.replace("k", b"replaced", noreply=False) is True
    assert c.replace("nope", b"x", noreply=False) is False
    assert c.get("nope") is None
    assert c.get("k") == b"replaced"

    # append / prepend
    assert c.append("k", b"-tail", noreply=False) is True
    assert c.prepend("k", b"head-", noreply=False) is True
    assert c.get("k") == b"head-replaced-tail"
    assert c.append("nope", b"x", noreply=False) is False
    assert c.prepend("nope", b"x", noreply=False) is False

    # gets / cas
    value, cas = c.gets("k")
    assert value == b"head-replaced-tail" and cas is not None
    assert c.cas("k", b"cas1", cas, noreply=False) is True
    assert c.get("k") == b"cas1"
    assert c.cas("k", b"cas2", cas, noreply=False) is False  # stale unique: EXISTS
    assert c.get("k") == b"cas1"
    assert c.cas("nope", b"x", cas, noreply=False) is None  # NOT_FOUND
    value2, cas2 = c.gets("k")
    assert value2 == b"cas1" and cas2 != cas
    assert c.gets("nope") == (None, None)

    # incr / decr
    assert c.set("n", b"10", noreply=False) is True
    assert c.incr("n", 5) == 15
    assert c.decr("n", 3) == 12
    assert c.decr("n", 100) == 0  # decr stops at 0
    assert c.set("n", b"18446744073709551615", noreply=False) is True
    assert c.incr("n", 1) == 0  # incr wraps at 2^64
    assert c.incr("n", 18446744073709551615) == 18446744073709551615
    assert c.incr("nope", 1) is None
    assert c.decr("nope", 1) is None
    assert c.set("n", b"100", noreply=False) is True
    assert c.decr("n", 1) == 99
    assert c.get("n") == b"99 "  # memcached pads a shorter number in place
    assert c.set("word", b"abc", noreply=False) is True
    expect_raises(MemcacheClientError, c.incr, "word", 1)
    assert c.incr("n", 1, noreply=True) is None
    assert c.get("n").strip() == b"100"

    # touch / delete
    assert c.touch("k", 100, noreply=False) is True
    assert c.touch("nope", 100, noreply=False) is False
    assert c.get("k") == b"cas1"
    assert c.touch("k", -1, noreply=False) is True  # expires it
    assert c.get("k") is None
    assert c.set("k", b"v", expire=-1, noreply=False) is True  # stored already expired
    assert c.get("k") is None
    assert c.set("k", b"v", expire=100000, noreply=False) is True
    assert c.get("k") == b"v"
    assert c.delete("k", noreply=False) is True
    assert c.delete("k", noreply=False) is False
    assert c.get("k") is None


def multi(c):
    """get_many / set_many / delete_many, noreply pipelines."""
    assert c.flush_all(noreply=False) is True
    values = {"m%d" % i: ("value-%d" % i).encode() for i in range(50)}
    assert c.set_many(values, noreply=False) == []
    got = c.get_many(list(values) + ["missing1", "missing2"])
    assert got == values, got
    assert c.get_multi(["m1", "m2"]) == {"m1": b"value-1", "m2": b"value-2"}
    with_cas = c.gets_many(["m1", "m2", "missing"])
    assert set(with_cas) == {"m1", "m2"}
    assert with_cas["m1"][0] == b"value-1" and with_cas["m1"][1] != with_cas["m2"][1]
    assert c.get_many([]) == {}

    # default noreply: many sets without waiting, then one read sees them all
    for i in range(200):
        c.set("nr", str(i))
    assert c.get("nr") == b"199"
    assert c.set_many({"nr1": b"1", "nr2": b"2"}) == []
    assert c.delete_many(["nr1", "nr2", "never"], noreply=False) is True
    assert c.get_many(["nr1", "nr2"]) == {}
    c.delete("nr")
    assert c.get("nr") is None

    assert c.flush_all() is True  # noreply
    assert c.get_many(list(values)) == {}


def keys(bc):
    """Keys as bytes, unicode keys (UTF-8), the 250-byte limit."""
    for key in [b"plain", b"bin\xff\xfe\x80key", b"ctl\x01\x7f", b"sym!@#$%^&*()[]{}|;:,./<>?", b"L" * 250]:
        assert bc.set(key, b"v:" + key, noreply=False) is True, key
        assert bc.get(key) == b"v:" + key, key
    assert bc.get_many([b"plain", b"L" * 250]) == {b"plain": b"v:plain", b"L" * 250: b"v:" + b"L" * 250}
    expect_raises(MemcacheIllegalInputError, bc.get, b"L" * 251)
    expect_raises(MemcacheIllegalInputError, bc.set, "non-ascii-ключ", b"x")

    uc = Client((host, port), allow_unicode_keys=True, encoding="utf8", timeout=10)
    try:
        for key in ["ключ", "clé-🔑", "鍵"]:
            assert uc.set(key, key, noreply=False) is True, key
            assert uc.get(key) == key.encode("utf8"), key
            assert bc.get(key.encode("utf8")) == key.encode("utf8"), key
        got = uc.get_many(["ключ", "鍵", "absent"])
        assert got == {"ключ": "ключ".encode(), "鍵": "鍵".encode()}, got
        value, cas = uc.gets("clé-🔑")
        assert uc.cas("clé-🔑", b"new", cas, noreply=False) is True
        assert uc.get("clé-🔑") == b"new"
    finally:
        uc.close()


def serde(bc):
    """Client flags carry the value's type through pickle_serde."""
    sc = Client((host, port), serde=pickle_serde, timeout=10)
    try:
        for key, value in [("int", 42), ("str", "hé"), ("bytes", b"\x00\x01"), ("obj", {"a": [1, 2.5, None]})]:
            assert sc.set(key, value, noreply=False) is True
            assert sc.get(key) == value, (key, sc.get(key))
        assert sc.get_many(["int", "obj"]) == {"int": 42, "obj": {"a": [1, 2.5, None]}}
        assert sc.incr("int", 1) == 43
        assert sc.get("int") == 43
        # explicit flags survive a raw look at the item
        assert bc.set("flagged", b"x", flags=123456, noreply=False) is True
        assert bc.raw_command(b"gets flagged", end_tokens=b"END\r\n").startswith(b"VALUE flagged 123456 1 ")
    finally:
        sc.close()


def limits_and_raw(bc):
    """Size limit, server-side errors, commands pymemcache has no method for."""
    big = b"x" * 1000000
    assert bc.set("big", big, noreply=False) is True
    assert bc.get("big") == big
    err = expect_raises(MemcacheServerError, bc.set, "big2", b"y" * (2 << 20), noreply=False)
    assert b"object too large for cache" in err.args[0], err

    # gat/gats and meta commands through raw_command (which strips the end token)
    assert bc.set("raw", b"abc", noreply=False) is True
    assert bc.raw_command(b"gat 100 raw", end_tokens=b"END\r\n") == b"VALUE raw 0 3\r\nabc\r\n"
    reply = bc.raw_command(b"gats 0 raw missing", end_tokens=b"END\r\n")
    assert reply.startswith(b"VALUE raw 0 3 ") and reply.endswith(b"\r\nabc\r\n"), reply
    assert bc.raw_command(b"mg raw v f s\r\nmn", end_tokens=b"MN\r\n") == b"VA 3 f0 s3\r\nabc\r\n"
    assert bc.raw_command(b"ms meta 2 T0 F7\r\nhi\r\nmg meta v f\r\nmn", end_tokens=b"MN\r\n") == (
        b"HD\r\nVA 2 f7\r\nhi\r\n"
    )
    assert bc.raw_command(b"md meta q\r\nmg meta v\r\nmn", end_tokens=b"MN\r\n") == b"EN\r\n"
    err = expect_raises(MemcacheClientError, bc.raw_command, b"get " + b"x" * 251)
    assert b"bad command line format" in err.args[0], err
    expect_raises(MemcacheUnknownCommandError, bc.raw_command, b"bogus")
    assert bc.get("raw") == b"abc"  # pymemcache reconnected after the errors


def admin(bc):
    stats = bc.stats()
    for name in [b"pid", b"uptime", b"version", b"curr_connections", b"cmd_get", b"get_hits", b"curr_items"]:
        assert name in stats, (name, sorted(stats))
    assert isinstance(stats[b"pid"], int) and stats[b"cmd_get"] > 0, stats
    assert bc.stats("settings") is not None
    version = bc.version()
    assert version.startswith(b"1.6"), version
    assert bc.raw_command(b"verbosity 1") == b"OK"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    host, port = sys.argv[1], int(sys.argv[2])
    bc = Client((host, port), timeout=10)
    try:
        classic(bc)
        multi(bc)
        keys(bc)
        serde(bc)
        limits_and_raw(bc)
        admin(bc)
        assert bc.flush_all(noreply=False) is True
    finally:
        bc.close()
    print("pymemcache round trips: all passed")
