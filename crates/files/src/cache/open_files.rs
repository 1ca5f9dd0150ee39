//! How many cache entries may keep their file open ([`super::Loaded`]).
//!
//! Each kept file is a descriptor for as long as its entry is cached. The
//! byte bound already bounds them (entries that keep one are at least a
//! server's sendfile threshold large), but a large cache of many such files
//! could still take the descriptors that connections and uploads need: an
//! `accept` that fails for want of one is far worse than a body copied. So
//! the cache keeps at most a fixed number, and at most a quarter of the
//! process's descriptor limit; past that an entry keeps its bytes only.

use nix::sys::resource::{Resource, getrlimit};

/// Most files the cache keeps open, whatever the descriptor limit.
pub const MAX_OPEN_FILES: usize = 4096;

/// Of the process's soft descriptor limit, the share the cache may hold.
pub const LIMIT_DIVISOR: u64 = 4;

/// [`MAX_OPEN_FILES`], or a quarter of `RLIMIT_NOFILE` as it is now if
/// that is less. The server raises its soft limit to the hard one at start,
/// before it makes the cache; a limit that cannot be read gives none.
pub fn open_file_bound() -> usize {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _hard)) => bound_for_limit(soft),
        Err(_) => 0,
    }
}

fn bound_for_limit(soft: u64) -> usize {
    usize::try_from(soft / LIMIT_DIVISOR).unwrap_or(usize::MAX).min(MAX_OPEN_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_limit_at_most_the_fixed_bound() {
        assert_eq!(bound_for_limit(1024), 256);
        assert_eq!(bound_for_limit(3), 0);
        assert_eq!(bound_for_limit(1 << 20), MAX_OPEN_FILES);
        assert_eq!(bound_for_limit(u64::MAX), MAX_OPEN_FILES);
        let now = open_file_bound();
        assert!(now <= MAX_OPEN_FILES);
    }
}
