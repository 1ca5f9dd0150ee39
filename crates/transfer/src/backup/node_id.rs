//! A backup node's identity: 128 random bits chosen by the node when its
//! directory is first used, kept in the directory, so the server knows a
//! node that reconnects (from another address, after a restart) as the
//! same one.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// 32 lowercase hex digits, nothing else.
    pub fn parse(s: &str) -> Option<NodeId> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| NodeId(s.to_owned()))
    }

    pub fn random() -> NodeId {
        let bytes: [u8; 16] = rand::random();
        NodeId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        let id = NodeId::random();
        assert_eq!(NodeId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(NodeId::random(), id);
        for bad in ["", "ab", &"AB".repeat(16), &"a".repeat(33), "../../../../etc/passwd/000000000"] {
            assert_eq!(NodeId::parse(bad), None, "{bad}");
        }
    }
}
