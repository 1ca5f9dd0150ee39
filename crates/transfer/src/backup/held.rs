//! What a backup node holds, as the server knows it: one entry per file,
//! from the node's inventory at registration and from its confirmations
//! since. The catch-up [`crate::backup::plan`] compares it with the store.

use serde::{Deserialize, Serialize};

/// One file on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub size: u64,
    /// BLAKE3 of the whole file, 64 lowercase hex digits.
    pub blake3: String,
    /// The etag of the server's file this copy was made from, when the node
    /// received it from a server. Equal to the stored file's etag means the
    /// node has that version without hashing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// A BLAKE3 digest as the protocol writes it: 64 hex digits, returned in
/// lowercase; `None` for anything else.
pub fn parse_digest(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// A transfer or delete the node was told to commit and has not confirmed
/// yet. Confirmations name only the transfer, so this is what the server
/// remembers to know what was confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    pub transfer: u64,
    pub name: String,
    /// What the node holds once it confirms; `None` for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<Held>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_hex_digits() {
        let h = blake3::hash(b"x").to_hex().to_string();
        assert_eq!(parse_digest(&h).as_deref(), Some(h.as_str()));
        assert_eq!(parse_digest(&h.to_ascii_uppercase()).as_deref(), Some(h.as_str()));
        assert_eq!(parse_digest(&h[1..]), None);
        assert_eq!(parse_digest(&format!("{}g", &h[1..])), None);
    }
}
