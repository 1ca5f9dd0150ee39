//! How a streamed handover cuts the sessions of streamed services into
//! batches: small enough that each session's pause stays short, large
//! enough that the fixed cost of a batch (one blob, a few messages) is
//! shared; sessions with bytes in flight first, since their clients feel a
//! pause, then the idle ones, oldest first.

use std::collections::BTreeSet;

use super::channel::MAX_FDS_PER_MESSAGE;

/// Sessions per batch.
pub const BATCH_SESSIONS: usize = 64;
/// Batches in one handover, the listeners' and the final one included: a
/// handover that would need more (sessions appearing as fast as they are
/// moved) rolls back rather than chase them.
pub const MAX_BATCHES: u32 = 100_000;

const _: () = assert!(BATCH_SESSIONS <= MAX_FDS_PER_MESSAGE, "a batch's descriptors fit one message");

/// The next batch: up to `max` of `running` not yet `asked` to pause,
/// those in `transferring` first, each group by id (oldest first).
pub fn next_batch(running: &[u64], transferring: &BTreeSet<u64>, asked: &BTreeSet<u64>, max: usize) -> Vec<u64> {
    let mut open: Vec<u64> = running.iter().copied().filter(|id| !asked.contains(id)).collect();
    open.sort_unstable_by_key(|id| (!transferring.contains(id), *id));
    open.truncate(max);
    open
}

/// A test hook: the batch a new process is told to refuse, if any.
pub fn refused_batch(var: Option<std::ffi::OsString>) -> Option<u32> {
    var?.to_str()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transferring_sessions_go_first_then_by_age() {
        let running = [9, 3, 7, 1, 5];
        let transferring = BTreeSet::from([7, 5]);
        let mut asked = BTreeSet::new();
        let first = next_batch(&running, &transferring, &asked, 3);
        assert_eq!(first, vec![5, 7, 1]);
        asked.extend(&first);
        assert_eq!(next_batch(&running, &transferring, &asked, 3), vec![3, 9]);
        asked.extend([3, 9]);
        assert!(next_batch(&running, &transferring, &asked, 3).is_empty());
    }

    #[test]
    fn every_session_lands_in_exactly_one_batch() {
        let running: Vec<u64> = (1..=1000).collect();
        let transferring: BTreeSet<u64> = (1..=1000).filter(|id| id % 50 == 0).collect();
        let mut asked = BTreeSet::new();
        let mut batches = Vec::new();
        loop {
            let batch = next_batch(&running, &transferring, &asked, BATCH_SESSIONS);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= BATCH_SESSIONS);
            for id in &batch {
                assert!(asked.insert(*id), "{id} in two batches");
            }
            batches.push(batch);
        }
        assert_eq!(asked.len(), 1000);
        assert_eq!(batches.len(), 1000usize.div_ceil(BATCH_SESSIONS));
        // All 20 transferring sessions are in the first batch.
        assert!(transferring.iter().all(|id| batches[0].contains(id)));
    }

    #[test]
    fn the_refusal_hook_reads_a_batch_number() {
        assert_eq!(refused_batch(Some("2".into())), Some(2));
        assert_eq!(refused_batch(Some("x".into())), None);
        assert_eq!(refused_batch(None), None);
    }
}
