//! Every size the sync protocol lets a peer declare, bounded.
//!
//! The seed's length fields go up to 64 KiB (names) and 4 GiB (chunks); a receiver buffers a whole
//! message before acting on it, so it refuses anything over these limits as soon as the header says so,
//! before reading the rest.

use serde::{Deserialize, Serialize};

pub const DEFAULT_MAX_NAME_LEN: u16 = 1024;
/// 1 MiB: well above the chunk sizes the seed's clients are run with (a command-line argument, typically
/// a few KiB to 64 KiB) and above ferry's own client's default, so any of them is accepted.
pub const DEFAULT_MAX_CHUNK_SIZE: u32 = 1 << 20;
/// A chunk is held whole in memory (its md5 must be checked before any of it is written), so no
/// configuration may raise the chunk limit past this.
pub const CHUNK_SIZE_CEILING: u32 = 64 << 20;
pub const DEFAULT_MAX_METADATA_ENTRIES: u32 = 100_000;
pub const DEFAULT_MAX_METADATA_BYTES: u32 = 32 << 20;
/// The META-DATA message is held whole in memory too.
pub const METADATA_BYTES_CEILING: u32 = 256 << 20;
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;

/// The limits one side enforces on what it receives (and keeps what it sends within).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest file name, in bytes (the wire's `filename length` is 16 bits).
    pub max_name_len: u16,
    /// Largest File Chunk payload; a larger (or empty) chunk gets Resend / Invalid Chunk Size.
    pub max_chunk_size: u32,
    /// Most entries (files and tombstones) in a META-DATA message, and so in the server's roster.
    pub max_metadata_entries: u32,
    /// Largest META-DATA body, in bytes.
    pub max_metadata_bytes: u32,
    /// Largest file one upload may carry.
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_len: DEFAULT_MAX_NAME_LEN,
            max_chunk_size: DEFAULT_MAX_CHUNK_SIZE,
            max_metadata_entries: DEFAULT_MAX_METADATA_ENTRIES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

/// A limit set outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sync limit {field} = {value} is out of range ({min} to {max})")]
pub struct LimitsError {
    pub field: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
}

impl Limits {
    /// Checks every limit is within its range (a configuration error otherwise).
    pub fn validate(&self) -> Result<(), LimitsError> {
        let check = |field, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) { Ok(()) } else { Err(LimitsError { field, value, min, max }) }
        };
        check("max_name_len", self.max_name_len.into(), 1, u16::MAX.into())?;
        check("max_chunk_size", self.max_chunk_size.into(), 1, CHUNK_SIZE_CEILING.into())?;
        check("max_metadata_entries", self.max_metadata_entries.into(), 1, u32::MAX.into())?;
        check("max_metadata_bytes", self.max_metadata_bytes.into(), 1, METADATA_BYTES_CEILING.into())?;
        check("max_file_size", self.max_file_size, 0, u64::MAX)
    }

    pub fn max_name_len(&self) -> usize {
        usize::from(self.max_name_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_cover_the_seeds_chunk_sizes() {
        let l = Limits::default();
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.max_chunk_size, 1 << 20);
        assert_eq!(usize::from(l.max_name_len), ferry_files::DEFAULT_MAX_NAME_BYTES);
    }

    #[test]
    fn out_of_range_limits_are_named() {
        let l = Limits { max_chunk_size: CHUNK_SIZE_CEILING + 1, ..Limits::default() };
        let e = l.validate().unwrap_err();
        assert_eq!(e.field, "max_chunk_size");
        assert_eq!(e.to_string(), "sync limit max_chunk_size = 67108865 is out of range (1 to 67108864)");
        assert_eq!(Limits { max_name_len: 0, ..Limits::default() }.validate().unwrap_err().field, "max_name_len");
        let l = Limits { max_metadata_entries: 0, ..Limits::default() };
        assert_eq!(l.validate().unwrap_err().field, "max_metadata_entries");
    }

    #[test]
    fn serde_fills_defaults() {
        let l: Limits = serde_json::from_str(r#"{"max_chunk_size": 4096}"#).unwrap();
        assert_eq!(l, Limits { max_chunk_size: 4096, ..Limits::default() });
        assert!(serde_json::from_str::<Limits>(r#"{"max_chunk": 4096}"#).is_err());
    }
}
