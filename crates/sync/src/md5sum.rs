//! MD5 digests, as the seed's messages carry them.
//!
//! The seed fixes MD5 for every chunk and every whole file, so this is the protocol's own checksum, not
//! a security measure: it catches corruption, not tampering.

use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// A 16-byte MD5 digest, in the byte order MD5 defines (the order it has on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Md5Sum(pub [u8; 16]);

impl Md5Sum {
    /// All zeros: the seed's messages always carry an md5 field, and ferry sends zeros where there is no
    /// file to digest (a Request File Update for a file the client does not have, a tombstone).
    pub const ZERO: Md5Sum = Md5Sum([0; 16]);
    /// The digest of no bytes (`d41d8cd98f00b204e9800998ecf8427e`): an empty file's.
    pub const EMPTY: Md5Sum =
        Md5Sum([0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e]);

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Md5Sum {
        Md5Sum(Md5::digest(data).into())
    }

    /// The digest of what `hasher` has consumed so far, leaving it untouched.
    pub fn of_hasher(hasher: &Md5) -> Md5Sum {
        Md5Sum(hasher.clone().finalize().into())
    }
}

impl fmt::Display for Md5Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Md5Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Md5Sum({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1321_test_vectors() {
        assert_eq!(Md5Sum::of(b"").to_string(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(Md5Sum::of(b""), Md5Sum::EMPTY);
        assert_eq!(Md5Sum::of(b"abc").to_string(), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(Md5Sum::of(b"message digest").to_string(), "f96b697d7cb7938d525a2f31aaf161d0");
    }

    #[test]
    fn hasher_digest_does_not_consume_the_hasher() {
        let mut h = Md5::new();
        h.update(b"ab");
        assert_eq!(Md5Sum::of_hasher(&h), Md5Sum::of(b"ab"));
        h.update(b"c");
        assert_eq!(Md5Sum::of_hasher(&h), Md5Sum::of(b"abc"));
    }
}
