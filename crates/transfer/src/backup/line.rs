//! The INFO lines and BACKUPINFO text of a backup feed, as typed values
//! (docs/protocol.md §10). The feed starts with `BACKUP`, a
//! [`crate::command::Request`] like any other command.

use std::fmt;

use crate::command::{CommandError, Line, Reply, truncate};
use crate::escape::{escape, unescape};

use super::held::{Held, parse_digest};

/// Node → server, once the connection is a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeLine {
    /// `HAVE <name> size=N blake3=H [etag=E]`: one inventory entry.
    Have { name: String, held: Held },
    /// `CONFIRM transfer=T [blake3=H]`: the node committed transfer `T`
    /// (with that digest), or carried out the delete `T` (no digest).
    Confirm { transfer: u64, blake3: Option<String> },
    /// `FAILED transfer=T why=TEXT`: the node could not commit `T`; it keeps
    /// what it had under that name.
    Failed { transfer: u64, why: String },
    /// `PONG`: the answer to `PING`.
    Pong,
}

/// Server → node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedLine {
    /// `REGISTERED node=ID held=N`: the feed is open; the server counted
    /// `N` inventory entries.
    Registered { node: String, held: u64 },
    /// `BACKUPDONE transfer=T size=N blake3=H etag=E`: every byte of `T` was
    /// sent; verify, commit under the name, `CONFIRM`.
    Done { transfer: u64, size: u64, blake3: String, etag: String },
    /// `BACKUPABORT transfer=T`: forget `T` and what was received of it.
    Abort { transfer: u64 },
    /// `BACKUPDELETE <name> transfer=T`: the server no longer has `name`;
    /// remove it and `CONFIRM`.
    Delete { transfer: u64, name: String },
    /// `PING`: sent when the feed has been silent for a while; answer `PONG`.
    Ping,
    /// `PAUSED …` or `RESUMED …`, as on every transfer connection.
    Notice(Reply),
}

fn etag_of(line: &Line<'_>) -> Result<Option<String>, CommandError> {
    match line.get("etag") {
        Some(e) => ferry_files::Etag::parse(e)
            .map(|e| Some(e.to_string()))
            .ok_or_else(|| CommandError(format!("invalid etag {:?}", truncate(e)))),
        None => Ok(None),
    }
}

fn digest_of(line: &Line<'_>) -> Result<Option<String>, CommandError> {
    match line.get("blake3") {
        Some(h) => parse_digest(h).map(Some).ok_or_else(|| CommandError(format!("invalid blake3 {:?}", truncate(h)))),
        None => Ok(None),
    }
}

impl NodeLine {
    pub fn parse(s: &str) -> Result<NodeLine, CommandError> {
        let line = Line::parse(s)?;
        match line.verb {
            "HAVE" => {
                line.only(&["size", "blake3", "etag"], 1)?;
                let blake3 = digest_of(&line)?.ok_or_else(|| CommandError("HAVE needs blake3=".into()))?;
                let held = Held { size: line.req_num("size")?, blake3, etag: etag_of(&line)? };
                Ok(NodeLine::Have { name: line.name(0)?, held })
            }
            "CONFIRM" => {
                line.only(&["transfer", "blake3"], 0)?;
                Ok(NodeLine::Confirm { transfer: line.req_num("transfer")?, blake3: digest_of(&line)? })
            }
            "FAILED" => {
                line.only(&["transfer", "why"], 0)?;
                let raw = line.req_str("why")?;
                let why = unescape(&raw).ok_or_else(|| CommandError("malformed escape in why=".into()))?;
                Ok(NodeLine::Failed { transfer: line.req_num("transfer")?, why })
            }
            "PONG" => {
                line.only(&[], 0)?;
                Ok(NodeLine::Pong)
            }
            other => Err(CommandError(format!("unknown backup line {:?}", truncate(other)))),
        }
    }
}

impl fmt::Display for NodeLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeLine::Have { name, held } => {
                write!(f, "HAVE {} size={} blake3={}", escape(name), held.size, held.blake3)?;
                if let Some(etag) = &held.etag {
                    write!(f, " etag={etag}")?;
                }
                Ok(())
            }
            NodeLine::Confirm { transfer, blake3 } => {
                write!(f, "CONFIRM transfer={transfer}")?;
                if let Some(blake3) = blake3 {
                    write!(f, " blake3={blake3}")?;
                }
                Ok(())
            }
            NodeLine::Failed { transfer, why } => write!(f, "FAILED transfer={transfer} why={}", escape(why)),
            NodeLine::Pong => write!(f, "PONG"),
        }
    }
}

impl FeedLine {
    pub fn parse(s: &str) -> Result<FeedLine, CommandError> {
        let line = Line::parse(s)?;
        match line.verb {
            "REGISTERED" => Ok(FeedLine::Registered { node: line.req_str("node")?, held: line.req_num("held")? }),
            "BACKUPDONE" => {
                let blake3 = digest_of(&line)?.ok_or_else(|| CommandError("BACKUPDONE needs blake3=".into()))?;
                let etag = etag_of(&line)?.ok_or_else(|| CommandError("BACKUPDONE needs etag=".into()))?;
                Ok(FeedLine::Done { transfer: line.req_num("transfer")?, size: line.req_num("size")?, blake3, etag })
            }
            "BACKUPABORT" => Ok(FeedLine::Abort { transfer: line.req_num("transfer")? }),
            "BACKUPDELETE" => Ok(FeedLine::Delete { transfer: line.req_num("transfer")?, name: line.name(0)? }),
            "PING" => Ok(FeedLine::Ping),
            "PAUSED" | "RESUMED" => Ok(FeedLine::Notice(Reply::parse(s)?)),
            other => Err(CommandError(format!("unknown backup line {:?}", truncate(other)))),
        }
    }
}

impl fmt::Display for FeedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedLine::Registered { node, held } => write!(f, "REGISTERED node={node} held={held}"),
            FeedLine::Done { transfer, size, blake3, etag } => {
                write!(f, "BACKUPDONE transfer={transfer} size={size} blake3={blake3} etag={etag}")
            }
            FeedLine::Abort { transfer } => write!(f, "BACKUPABORT transfer={transfer}"),
            FeedLine::Delete { transfer, name } => write!(f, "BACKUPDELETE {} transfer={transfer}", escape(name)),
            FeedLine::Ping => write!(f, "PING"),
            FeedLine::Notice(reply) => reply.fmt(f),
        }
    }
}

/// The text of a BACKUPINFO frame: `<name> <size>`, the name escaped as in
/// INFO lines and the size `-` while unknown (an upload from a stream).
pub fn info_text(name: &str, size: Option<u64>) -> String {
    match size {
        Some(size) => format!("{} {size}", escape(name)),
        None => format!("{} -", escape(name)),
    }
}

/// Reads a BACKUPINFO text back.
pub fn parse_info_text(s: &str) -> Result<(String, Option<u64>), CommandError> {
    let (raw, size) =
        s.split_once(' ').ok_or_else(|| CommandError(format!("BACKUPINFO {:?} is not \"name size\"", truncate(s))))?;
    let name = unescape(raw).ok_or_else(|| CommandError(format!("malformed escape in name {:?}", truncate(raw))))?;
    let size = match size {
        "-" => None,
        n => Some(n.parse::<u64>().map_err(|_| CommandError(format!("BACKUPINFO size {:?}", truncate(n))))?),
    };
    Ok((name, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        blake3::hash(b"abc").to_hex().to_string()
    }

    #[test]
    fn node_lines_round_trip() {
        for line in [
            NodeLine::Have { name: "a b/c=d".into(), held: Held { size: 3, blake3: digest(), etag: None } },
            NodeLine::Have { name: "x".into(), held: Held { size: 0, blake3: digest(), etag: Some("0-1-2".into()) } },
            NodeLine::Confirm { transfer: 7, blake3: Some(digest()) },
            NodeLine::Confirm { transfer: u64::MAX, blake3: None },
            NodeLine::Failed { transfer: 1, why: "disk full: 100% used".into() },
            NodeLine::Pong,
        ] {
            assert_eq!(NodeLine::parse(&line.to_string()).unwrap(), line);
        }
    }

    #[test]
    fn feed_lines_round_trip() {
        for line in [
            FeedLine::Registered { node: "ab".repeat(16), held: 4 },
            FeedLine::Done { transfer: 9, size: 3, blake3: digest(), etag: "3-4-5".into() },
            FeedLine::Abort { transfer: 9 },
            FeedLine::Delete { transfer: 2, name: "dir/a b".into() },
            FeedLine::Ping,
            FeedLine::Notice(Reply::Paused { reason: "upgrading".into() }),
            FeedLine::Notice(Reply::Resumed { version: "0.1.0".into() }),
        ] {
            assert_eq!(FeedLine::parse(&line.to_string()).unwrap(), line);
        }
    }

    #[test]
    fn lies_and_garbage_are_refused() {
        assert!(NodeLine::parse("HAVE a size=1").unwrap_err().0.contains("blake3"));
        assert!(NodeLine::parse("HAVE a size=1 blake3=xyz").unwrap_err().0.contains("invalid blake3"));
        let long = format!("HAVE a size=1 blake3={} etag=ZZ", digest());
        assert!(NodeLine::parse(&long).unwrap_err().0.contains("invalid etag"));
        assert!(NodeLine::parse("CONFIRM transfer=x").is_err());
        assert!(NodeLine::parse("CONFIRM").is_err());
        assert!(NodeLine::parse("GET a").unwrap_err().0.contains("unknown backup line"));
        assert!(NodeLine::parse("PONG extra").is_err());
    }

    #[test]
    fn info_text_round_trips() {
        for (name, size) in [("a", Some(3)), ("d/x y=%", None), ("é", Some(0))] {
            assert_eq!(parse_info_text(&info_text(name, size)).unwrap(), (name.to_string(), size));
        }
        assert!(parse_info_text("a").is_err());
        assert!(parse_info_text("a 1x").is_err());
        assert!(parse_info_text("%zz 1").is_err());
    }
}
