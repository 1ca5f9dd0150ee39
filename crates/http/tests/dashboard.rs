//! The dashboard rendered by a real headless browser: `serve()` in-process
//! on 127.0.0.1:0, a temp store with a few files, a fake status source with
//! known connections, transfers, upgrades and cache entries; chromium loads
//! `/`, runs its script, and the rendered DOM must show all of them.
//!
//! Without chromium the test fails when `CI` is set and is skipped (with a
//! message) otherwise. `FERRY_CHROMIUM` names a browser binary explicitly.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::Fixture;
use ferry_http::HttpLimits;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const EVIL_NAME: &str = "<img src=x onerror=alert(1)>.txt";

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
}

fn fake_status() -> serde_json::Value {
    json!({
        "pid": 31337,
        "version": "0.1.0-test",
        "uptime_secs": 125,
        "connections": 3,
        "sessions": [
            {"id": 1, "service": "transfer", "peer": "127.0.0.1:50000", "started_unix_ms": 1_700_000_000_000u64},
            {"id": 2, "service": "kv", "peer": "127.0.0.1:50001", "started_unix_ms": 1_700_000_000_000u64},
            {"id": 3, "service": "kv", "peer": "127.0.0.1:50002", "started_unix_ms": 1_700_000_000_000u64}
        ],
        "transfers": [
            {"session": 1, "kind": "get", "name": "big.iso", "size": 1000, "start_offset": 0, "offset": 250,
             "started_unix_ms": 1_700_000_000_000u64}
        ],
        "upgrades": [
            {"unix_ms": 1_700_000_000_000u64, "old_pid": 100, "old_version": "0.1.0-old", "new_pid": 200,
             "new_version": "0.1.0-new", "binary": "/usr/bin/ferry", "pause_gap_us": 1500, "sessions_moved": 7,
             "outcome": "ok"}
        ],
        "cache": {
            "policy": "s3fifo", "max_bytes": 67108864u64, "bytes_held": 3072, "hits": 30, "misses": 10,
            "hit_bytes": 9000, "miss_bytes": 1000, "evictions": 4, "object_hit_ratio": 0.75, "byte_hit_ratio": 0.9,
            "entries": [
                {"name": "alpha.txt", "size": 2048, "hits": 21, "age_ms": 4000},
                {"name": EVIL_NAME, "size": 1024, "hits": 9, "age_ms": 1000}
            ]
        }
    })
}

/// The markup of the element with `id`, up to the end of its table.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in\n{dom}"));
    let len = dom[start..].find("</table>").unwrap_or_else(|| panic!("#{id} is not a table"));
    &dom[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_a_headless_browser() {
    let Some(browser) = find_chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI is set but no chromium was found (set FERRY_CHROMIUM)");
        eprintln!("SKIPPED dashboard_renders_in_a_headless_browser: no chromium on PATH (apt-get install chromium)");
        return;
    };

    let f = Fixture::with(HttpLimits::default(), Arc::new(fake_status));
    f.put("alpha.txt", &[b'a'; 2048]);
    f.put("beta/gamma.bin", &[b'g'; 5000]);
    f.put(EVIL_NAME, b"harmless");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(ferry_http::serve(listener, f.state.clone(), async move {
        let _ = stopped.await;
    }));

    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(&browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &format!("--user-data-dir={}", profile.path().display()),
        "--virtual-time-budget=5000",
        "--dump-dom",
        &format!("http://{addr}/"),
    ])
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium did not finish within 120 s")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "chromium failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(dom.contains("data-loaded=\"1\""), "the script never rendered a poll:\n{dom}");

    // Files, with the hostile name shown as text, never as markup.
    let files = table(&dom, "files");
    assert!(files.contains(">alpha.txt<") && files.contains(">beta/gamma.bin<"), "{files}");
    assert!(files.contains("2.0 KiB") && files.contains("4.9 KiB"), "{files}");
    assert!(files.contains("&lt;img src=x onerror=alert(1)&gt;.txt"), "{files}");
    assert!(!dom.contains("<img"), "a client-supplied name became markup:\n{dom}");
    assert!(dom.contains("(3)"), "file count");

    // The cache: ratios, bytes held, entries in eviction order.
    let summary_at = dom.find("id=\"cache-summary\"").unwrap();
    let summary = &dom[summary_at..summary_at + dom[summary_at..].find("</div>").unwrap()];
    assert!(summary.contains("hit ratio <b class=\"hit-ratio\">75.0%</b>"), "{summary}");
    assert!(summary.contains("byte hit ratio <b class=\"byte-hit-ratio\">90.0%</b>"), "{summary}");
    assert!(summary.contains("3.0 KiB / 64.0 MiB") && summary.contains("s3fifo"), "{summary}");
    let cache = table(&dom, "cache");
    let (a, evil) = (cache.find(">alpha.txt<").unwrap(), cache.find("&lt;img").unwrap());
    assert!(a < evil, "entries keep the cache's order");
    assert!(cache.contains(">21<") && cache.contains(">4s<"), "{cache}");

    // Connections by service (the HTTP count includes the browser's own).
    let conns = table(&dom, "connections");
    assert!(conns.contains("<td>kv</td><td class=\"num\">2</td>"), "{conns}");
    assert!(conns.contains("<td>transfer</td><td class=\"num\">1</td>"), "{conns}");
    assert!(conns.contains("<td>http</td>"), "{conns}");

    // A transfer with its progress bar.
    let transfers = table(&dom, "transfers");
    assert!(transfers.contains(">big.iso<"), "{transfers}");
    assert!(transfers.contains("<progress max=\"100\" value=\"25.0\"></progress> 25.0%"), "{transfers}");

    // The upgrade history entry.
    let upgrades = table(&dom, "upgrades");
    for want in ["0.1.0-old (pid 100)", "0.1.0-new (pid 200)", ">ok<", "1.5 ms", ">7<", "2023-11-14 22:13:20"] {
        assert!(upgrades.contains(want), "missing {want:?} in {upgrades}");
    }
    assert!(dom.contains("version 0.1.0-test · pid 31337"), "server line");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}
