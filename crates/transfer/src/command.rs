//! INFO lines: the commands a client sends and the replies and notices a
//! server sends, as typed values.
//!
//! A line is a verb followed by space-separated words; a word holding `=`
//! is a `key=value` pair, any other word is positional. Names are
//! percent-escaped ([`crate::escape`]), so they never contain a space or
//! `=`.

use std::fmt;

use crate::escape::{escape, unescape};

/// Longest command line a server accepts.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CommandError(pub String);

/// Client → server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET <name> [offset=N] [etag=E]`
    Get { name: String, offset: u64, etag: Option<String> },
    /// `PUT <name> [size=N] [id=UPLOAD_ID]`
    Put { name: String, size: Option<u64>, id: Option<String> },
    /// `LIST`
    List,
    /// `LIST CACHE`: the file cache's entries, next victim first.
    ListCache,
    /// `DONE size=N blake3=HEX`: end of a PUT's data.
    Done { size: u64, blake3: String },
    /// `BACKUP node=ID files=N`: this connection becomes a backup node's
    /// feed; `N` inventory lines (`HAVE`, [`crate::backup::line`]) follow.
    Backup { node: String, files: u64 },
}

/// Server → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK size=N etag=E`: a GET is accepted; DATA follows.
    Ok { size: u64, etag: String },
    /// `DONE size=N blake3=HEX`: all of a GET's data was sent.
    Done { size: u64, blake3: String },
    /// `STORED size=N etag=E blake3=HEX`: a PUT is durable under its name.
    Stored { size: u64, etag: String, blake3: String },
    /// `ENTRY name=<name> size=N mtime=MS etag=E`: one LIST line.
    Entry { name: String, size: u64, modified_unix_ms: u64, etag: String },
    /// `END count=N`: end of a LIST.
    End { count: u64 },
    /// `CACHED name=<name> size=N hits=N age=MS`: one `LIST CACHE` line.
    Cached { name: String, size: u64, hits: u64, age_ms: u64 },
    /// `CACHEEND count=N policy=P bytes=N max=N hits=N misses=N hit_bytes=N
    /// miss_bytes=N evictions=N`: end of a `LIST CACHE`, with the totals.
    CacheEnd(CacheTotals),
    /// `PAUSED <reason>`: the server is pausing this transfer (upgrade).
    Paused { reason: String },
    /// `RESUMED version=V`: the transfer continues, served by version V.
    Resumed { version: String },
}

/// The totals closing a `LIST CACHE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheTotals {
    pub count: u64,
    pub policy: String,
    pub bytes_held: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_bytes: u64,
    pub miss_bytes: u64,
    pub evictions: u64,
}

/// A tokenised INFO line.
pub(crate) struct Line<'a> {
    pub(crate) verb: &'a str,
    pub(crate) words: Vec<&'a str>,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Line<'a> {
    pub(crate) fn parse(s: &'a str) -> Result<Line<'a>, CommandError> {
        let mut parts = s.split(' ').filter(|w| !w.is_empty());
        let verb = parts.next().ok_or_else(|| CommandError("empty command".into()))?;
        let mut line = Line { verb, words: vec![], pairs: vec![] };
        for part in parts {
            match part.split_once('=') {
                Some((k, v)) => line.pairs.push((k, v)),
                None => line.words.push(part),
            }
        }
        Ok(line)
    }

    pub(crate) fn name(&self, index: usize) -> Result<String, CommandError> {
        let raw = self.words.get(index).ok_or_else(|| CommandError(format!("{} needs a file name", self.verb)))?;
        unescape(raw).ok_or_else(|| CommandError(format!("malformed escape in name {raw:?}")))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    pub(crate) fn num(&self, key: &str) -> Result<Option<u64>, CommandError> {
        self.get(key)
            .map(|v| v.parse::<u64>().map_err(|_| CommandError(format!("{key}={v} is not a number"))))
            .transpose()
    }

    pub(crate) fn req_num(&self, key: &str) -> Result<u64, CommandError> {
        self.num(key)?.ok_or_else(|| CommandError(format!("{} needs {key}=", self.verb)))
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<String, CommandError> {
        self.get(key).map(str::to_string).ok_or_else(|| CommandError(format!("{} needs {key}=", self.verb)))
    }

    pub(crate) fn only(&self, keys: &[&str], words: usize) -> Result<(), CommandError> {
        if let Some((k, _)) = self.pairs.iter().find(|(k, _)| !keys.contains(k)) {
            return Err(CommandError(format!("{} does not take {k}=", self.verb)));
        }
        if self.words.len() > words {
            return Err(CommandError(format!("too many arguments to {}", self.verb)));
        }
        Ok(())
    }
}

impl Request {
    pub fn parse(s: &str) -> Result<Request, CommandError> {
        let line = Line::parse(s)?;
        match line.verb {
            "GET" => {
                line.only(&["offset", "etag"], 1)?;
                Ok(Request::Get {
                    name: line.name(0)?,
                    offset: line.num("offset")?.unwrap_or(0),
                    etag: line.get("etag").map(str::to_string),
                })
            }
            "PUT" => {
                line.only(&["size", "id"], 1)?;
                Ok(Request::Put {
                    name: line.name(0)?,
                    size: line.num("size")?,
                    id: line.get("id").map(str::to_string),
                })
            }
            "LIST" if line.words.first() == Some(&"CACHE") => {
                line.only(&[], 1)?;
                Ok(Request::ListCache)
            }
            "LIST" => {
                line.only(&[], 0)?;
                Ok(Request::List)
            }
            "DONE" => {
                line.only(&["size", "blake3"], 0)?;
                Ok(Request::Done { size: line.req_num("size")?, blake3: line.req_str("blake3")? })
            }
            "BACKUP" => {
                line.only(&["node", "files"], 0)?;
                Ok(Request::Backup { node: line.req_str("node")?, files: line.req_num("files")? })
            }
            other => Err(CommandError(format!("unknown command {:?}", truncate(other)))),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Get { name, offset, etag } => {
                write!(f, "GET {}", escape(name))?;
                if *offset > 0 {
                    write!(f, " offset={offset}")?;
                }
                if let Some(etag) = etag {
                    write!(f, " etag={etag}")?;
                }
                Ok(())
            }
            Request::Put { name, size, id } => {
                write!(f, "PUT {}", escape(name))?;
                if let Some(size) = size {
                    write!(f, " size={size}")?;
                }
                if let Some(id) = id {
                    write!(f, " id={id}")?;
                }
                Ok(())
            }
            Request::List => write!(f, "LIST"),
            Request::ListCache => write!(f, "LIST CACHE"),
            Request::Done { size, blake3 } => write!(f, "DONE size={size} blake3={blake3}"),
            Request::Backup { node, files } => write!(f, "BACKUP node={node} files={files}"),
        }
    }
}

impl Reply {
    pub fn parse(s: &str) -> Result<Reply, CommandError> {
        let line = Line::parse(s)?;
        match line.verb {
            "OK" => Ok(Reply::Ok { size: line.req_num("size")?, etag: line.req_str("etag")? }),
            "DONE" => Ok(Reply::Done { size: line.req_num("size")?, blake3: line.req_str("blake3")? }),
            "STORED" => Ok(Reply::Stored {
                size: line.req_num("size")?,
                etag: line.req_str("etag")?,
                blake3: line.req_str("blake3")?,
            }),
            "ENTRY" => {
                let raw = line.req_str("name")?;
                let name = unescape(&raw).ok_or_else(|| CommandError(format!("malformed escape in {raw:?}")))?;
                Ok(Reply::Entry {
                    name,
                    size: line.req_num("size")?,
                    modified_unix_ms: line.req_num("mtime")?,
                    etag: line.req_str("etag")?,
                })
            }
            "END" => Ok(Reply::End { count: line.req_num("count")? }),
            "CACHED" => {
                let raw = line.req_str("name")?;
                let name = unescape(&raw).ok_or_else(|| CommandError(format!("malformed escape in {raw:?}")))?;
                Ok(Reply::Cached {
                    name,
                    size: line.req_num("size")?,
                    hits: line.req_num("hits")?,
                    age_ms: line.req_num("age")?,
                })
            }
            "CACHEEND" => Ok(Reply::CacheEnd(CacheTotals {
                count: line.req_num("count")?,
                policy: line.req_str("policy")?,
                bytes_held: line.req_num("bytes")?,
                max_bytes: line.req_num("max")?,
                hits: line.req_num("hits")?,
                misses: line.req_num("misses")?,
                hit_bytes: line.req_num("hit_bytes")?,
                miss_bytes: line.req_num("miss_bytes")?,
                evictions: line.req_num("evictions")?,
            })),
            "PAUSED" => Ok(Reply::Paused { reason: line.words.join(" ") }),
            "RESUMED" => Ok(Reply::Resumed { version: line.get("version").unwrap_or("").to_string() }),
            other => Err(CommandError(format!("unknown reply {:?}", truncate(other)))),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok { size, etag } => write!(f, "OK size={size} etag={etag}"),
            Reply::Done { size, blake3 } => write!(f, "DONE size={size} blake3={blake3}"),
            Reply::Stored { size, etag, blake3 } => write!(f, "STORED size={size} etag={etag} blake3={blake3}"),
            Reply::Entry { name, size, modified_unix_ms, etag } => {
                write!(f, "ENTRY name={} size={size} mtime={modified_unix_ms} etag={etag}", escape(name))
            }
            Reply::End { count } => write!(f, "END count={count}"),
            Reply::Cached { name, size, hits, age_ms } => {
                write!(f, "CACHED name={} size={size} hits={hits} age={age_ms}", escape(name))
            }
            Reply::CacheEnd(t) => write!(
                f,
                "CACHEEND count={} policy={} bytes={} max={} hits={} misses={} hit_bytes={} miss_bytes={} evictions={}",
                t.count, t.policy, t.bytes_held, t.max_bytes, t.hits, t.misses, t.hit_bytes, t.miss_bytes, t.evictions
            ),
            Reply::Paused { reason } => write!(f, "PAUSED {reason}"),
            Reply::Resumed { version } => write!(f, "RESUMED version={version}"),
        }
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Get { name: "a b/c=d".into(), offset: 0, etag: None },
            Request::Get { name: "x".into(), offset: 99, etag: Some("1-2-3".into()) },
            Request::Put { name: "up".into(), size: Some(5), id: Some("ab".into()) },
            Request::Put { name: "up".into(), size: None, id: None },
            Request::List,
            Request::ListCache,
            Request::Done { size: 3, blake3: "00ff".into() },
            Request::Backup { node: "ab".repeat(16), files: 7 },
        ] {
            assert_eq!(Request::parse(&req.to_string()).unwrap(), req);
        }
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            Reply::Ok { size: 1, etag: "e".into() },
            Reply::Done { size: 1, blake3: "h".into() },
            Reply::Stored { size: 1, etag: "e".into(), blake3: "h".into() },
            Reply::Entry { name: "d/x y".into(), size: 1, modified_unix_ms: 2, etag: "e".into() },
            Reply::End { count: 4 },
            Reply::Cached { name: "d/x y".into(), size: 5, hits: 6, age_ms: 7 },
            Reply::CacheEnd(CacheTotals {
                count: 1,
                policy: "s3fifo".into(),
                bytes_held: 5,
                max_bytes: 64,
                hits: 2,
                misses: 3,
                hit_bytes: 4,
                miss_bytes: 5,
                evictions: 6,
            }),
            Reply::Paused { reason: "upgrading".into() },
            Reply::Resumed { version: "0.1.0".into() },
        ] {
            assert_eq!(Reply::parse(&reply.to_string()).unwrap(), reply);
        }
    }

    #[test]
    fn bad_commands_say_why() {
        assert_eq!(Request::parse("").unwrap_err().0, "empty command");
        assert!(Request::parse("FETCH x").unwrap_err().0.contains("unknown command"));
        assert!(Request::parse("GET").unwrap_err().0.contains("needs a file name"));
        assert!(Request::parse("GET x offset=abc").unwrap_err().0.contains("not a number"));
        assert!(Request::parse("GET x color=red").unwrap_err().0.contains("does not take"));
        assert!(Request::parse("DONE size=1").unwrap_err().0.contains("blake3="));
    }
}
