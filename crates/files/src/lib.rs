//! ferry-files: the on-disk side of the ferry server.
//!
//! Validated names ([`SafeName`]), a root-confined [`FileStore`] with durable
//! atomic commits and resumable staged uploads, and BLAKE3 hashing that can
//! be checkpointed mid-upload ([`ResumableHash`]) or cached per file version
//! ([`HashCache`]). Synchronous std code; callers wrap it as they see fit,
//! except for the byte-bounded [`FileCache`] of file contents, whose single
//! flight for concurrent misses is async.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod atomic;
pub mod cache;
pub mod direct_writes;
pub mod etag;
pub mod hash_cache;
pub mod name;
pub mod resumable_hash;
pub mod store;
pub mod upload;
pub mod writeback;

pub use atomic::{commit_file, fsync_dir, write_atomic};
pub use cache::{CacheConfig, CacheEntryInfo, CachePolicyKind, CacheRead, CacheSnapshot, FileCache, Loaded};
pub use direct_writes::{DirectChunks, DirectWrites};
pub use etag::Etag;
pub use hash_cache::{HashCache, hash_file};
pub use name::{DEFAULT_MAX_NAME_BYTES, MAX_COMPONENT_BYTES, NameError, RESERVED_PREFIX, SafeName};
pub use resumable_hash::{HashCheckpoint, HashStateError, ResumableHash, SUBTREE_BYTES, hash_file_prefix};
pub use store::{FileEntry, FileMeta, FileStore, StoreError};
pub use upload::{PartialUpload, UploadId, UploadMeta};
pub use writeback::start_writeback;
