//! `/metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! The gateway's own counters are always present. Server-wide figures come
//! from the status source and are written only when it supplies them, so a
//! missing cache never shows up as a cache with zero hits.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use crate::metrics::MetricsSnapshot;
use crate::transfers::TransferKind;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Builds the whole exposition.
pub fn render(m: &MetricsSnapshot, status: &Value) -> String {
    let mut out = Exposition::default();
    out.family("ferry_http_requests_total", "counter", "HTTP responses sent, by status class.");
    for (class, n) in CLASSES.iter().zip(m.responses) {
        out.sample("ferry_http_requests_total", &[("code", class)], n);
    }
    out.single("ferry_http_sent_bytes_total", "counter", "Bytes written to HTTP connections.", m.sent_bytes);
    out.single("ferry_http_received_bytes_total", "counter", "Bytes read from HTTP connections.", m.received_bytes);
    out.single("ferry_http_connections", "gauge", "Open HTTP connections.", m.connections_open);
    out.single("ferry_http_connections_total", "counter", "HTTP connections accepted.", m.connections_total);
    out.single(
        "ferry_http_connections_refused_total",
        "counter",
        "HTTP connections refused at the connection limit.",
        m.connections_refused,
    );
    out.family("ferry_http_transfers", "gauge", "File downloads and uploads in progress over HTTP.");
    for (kind, label) in [(TransferKind::Download, "download"), (TransferKind::Upload, "upload")] {
        let n = m.transfers.iter().filter(|t| t.kind == kind).count();
        out.sample("ferry_http_transfers", &[("kind", label)], n as u64);
    }
    out.single("ferry_http_cache_hits_total", "counter", "HTTP whole-file reads served by the cache.", m.cache_hits);
    out.single(
        "ferry_http_cache_misses_total",
        "counter",
        "HTTP whole-file reads that missed the cache.",
        m.cache_misses,
    );

    server_wide(&mut out, status);
    out.text
}

/// Figures the status source supplies: connections and transfers of every
/// service, upgrades, and the shared cache.
fn server_wide(out: &mut Exposition, status: &Value) {
    if let Some(n) = status.get("connections").and_then(Value::as_u64) {
        out.single("ferry_connections", "gauge", "Open connections of the services the runtime runs.", n);
    }
    if let Some(sessions) = status.get("sessions").and_then(Value::as_array) {
        let by_service = count_by(sessions, "service");
        out.family("ferry_sessions", "gauge", "Open sessions, by service.");
        for (service, n) in by_service {
            out.sample("ferry_sessions", &[("service", &service)], n);
        }
    }
    if let Some(transfers) = status.get("transfers").and_then(Value::as_array) {
        out.family("ferry_transfers", "gauge", "Transfers in progress on the native protocol, by kind.");
        for (kind, n) in count_by(transfers, "kind") {
            out.sample("ferry_transfers", &[("kind", &kind)], n);
        }
    }
    if let Some(upgrades) = status.get("upgrades").and_then(Value::as_array) {
        out.single("ferry_upgrades", "gauge", "Live upgrades in the remembered history.", upgrades.len() as u64);
    }
    let Some(cache) = status.get("cache").filter(|c| c.is_object()) else {
        return;
    };
    let fields = [
        ("hits", "ferry_cache_hits_total", "counter", "Cache lookups that found the file."),
        ("misses", "ferry_cache_misses_total", "counter", "Cache lookups that did not."),
        ("evictions", "ferry_cache_evictions_total", "counter", "Entries evicted from the cache."),
        ("bytes_held", "ferry_cache_bytes", "gauge", "Bytes the cache holds."),
        ("max_bytes", "ferry_cache_max_bytes", "gauge", "The cache's byte bound."),
    ];
    for (field, name, kind, help) in fields {
        if let Some(n) = cache.get(field).and_then(Value::as_u64) {
            out.single(name, kind, help, n);
        }
    }
    if let Some(entries) = cache.get("entries").and_then(Value::as_array) {
        out.single("ferry_cache_entries", "gauge", "Files the cache holds.", entries.len() as u64);
    }
}

/// Counts items by a string field (missing: "unknown").
fn count_by(items: &[Value], field: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for item in items {
        let key = item.get(field).and_then(Value::as_str).unwrap_or("unknown").to_owned();
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values may hold anything the status source put there.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfers::TransferInfo;
    use serde_json::json;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            responses: [0, 7, 2, 1, 0],
            sent_bytes: 1234,
            received_bytes: 99,
            connections_open: 2,
            connections_total: 5,
            connections_refused: 1,
            cache_hits: 3,
            cache_misses: 4,
            cache_evictions: 0,
            transfers: vec![TransferInfo {
                id: 0,
                kind: TransferKind::Download,
                name: "a".into(),
                done: 1,
                total: Some(2),
                started_unix_ms: 0,
            }],
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn gateway_counters() {
        let text = render(&snapshot(), &json!({}));
        let l = lines(&text);
        for want in [
            "# TYPE ferry_http_requests_total counter",
            "ferry_http_requests_total{code=\"2xx\"} 7",
            "ferry_http_requests_total{code=\"4xx\"} 1",
            "ferry_http_sent_bytes_total 1234",
            "ferry_http_received_bytes_total 99",
            "# TYPE ferry_http_connections gauge",
            "ferry_http_connections 2",
            "ferry_http_connections_refused_total 1",
            "ferry_http_transfers{kind=\"download\"} 1",
            "ferry_http_transfers{kind=\"upload\"} 0",
            "ferry_http_cache_hits_total 3",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("ferry_cache_"), "no cache figures without a cache");
        // Every sample line belongs to a family announced just before.
        for line in l.iter().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[test]
    fn server_wide_from_status() {
        let status = json!({
            "connections": 4,
            "sessions": [{"service": "kv"}, {"service": "kv"}, {"service": "transfer"}, {"service": "we\"ird\n"}],
            "transfers": [{"kind": "get"}, {"kind": "put"}, {"kind": "get"}],
            "upgrades": [{}, {}],
            "cache": {"hits": 30, "misses": 10, "evictions": 2, "bytes_held": 4096, "max_bytes": 65536,
                      "entries": [{"name": "a"}]},
        });
        let text = render(&snapshot(), &status);
        let l = lines(&text);
        for want in [
            "ferry_connections 4",
            "ferry_sessions{service=\"kv\"} 2",
            "ferry_sessions{service=\"transfer\"} 1",
            "ferry_sessions{service=\"we\\\"ird\\n\"} 1",
            "ferry_transfers{kind=\"get\"} 2",
            "ferry_upgrades 2",
            "# TYPE ferry_cache_hits_total counter",
            "ferry_cache_hits_total 30",
            "ferry_cache_misses_total 10",
            "ferry_cache_evictions_total 2",
            "# TYPE ferry_cache_bytes gauge",
            "ferry_cache_bytes 4096",
            "ferry_cache_max_bytes 65536",
            "ferry_cache_entries 1",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{text}");
        }
    }
}
