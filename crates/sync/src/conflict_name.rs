//! Names for conflicted copies: where ferry keeps a local edit that the server's version replaces.
//!
//! The seed overwrites a client's copy with the server's "even if it has been updated in the interim";
//! ferry first moves the local version aside as
//! `name (conflicted copy <client> <YYYY-MM-DD HHMMSS>).ext`, in the same directory, and that copy then
//! syncs like any other file. The time is UTC (the name must not depend on the machine's time zone
//! settings, and a pure function has none). The extension is the part after the last dot, when there is
//! one that is neither the first nor the last character and is at most [`MAX_EXTENSION_LEN`] bytes, so
//! `.bashrc`, `Makefile` and `notes.` keep their whole name in front. A name that is taken gets
//! ` 2`, ` 3`, … inside the parentheses; a name that would be too long has its stem shortened.

use ferry_files::{MAX_COMPONENT_BYTES, SafeName};

use crate::ClientId;

/// The longest suffix after the last dot still treated as an extension, dot included.
pub const MAX_EXTENSION_LEN: usize = 16;
/// Names tried before giving up (`… HHMMSS)`, `… HHMMSS 2)`, … `… HHMMSS 100)`).
pub const MAX_ATTEMPTS: u32 = 100;

/// Why no conflicted-copy name could be made. The caller keeps the local file where it is and does not
/// take the server's version for now: nothing is overwritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflictNameError {
    #[error("no conflicted-copy name for {0} fits the name length limit")]
    TooLong(SafeName),
    #[error("every conflicted-copy name for {0} is taken ({MAX_ATTEMPTS} tried)")]
    Taken(SafeName),
}

/// The conflicted-copy name for `name`, made by `client` at `unix_secs`, that `taken` says is free.
pub fn conflicted_copy_name(
    name: &SafeName,
    client: &ClientId,
    unix_secs: i64,
    max_name_len: usize,
    taken: impl Fn(&SafeName) -> bool,
) -> Result<SafeName, ConflictNameError> {
    let (dir, file) = match name.as_str().rsplit_once('/') {
        Some((dir, file)) => (&name.as_str()[..dir.len() + 1], file),
        None => ("", name.as_str()),
    };
    let (stem, ext) = split_extension(file);
    let stamp = utc_stamp(unix_secs);
    let budget = MAX_COMPONENT_BYTES.min(max_name_len.saturating_sub(dir.len()));
    for attempt in 1..=MAX_ATTEMPTS {
        let counter = if attempt == 1 { String::new() } else { format!(" {attempt}") };
        let suffix = format!(" (conflicted copy {client} {stamp}{counter})");
        let room = budget.saturating_sub(suffix.len() + ext.len());
        let stem = truncate(stem, room);
        if stem.is_empty() {
            return Err(ConflictNameError::TooLong(name.clone()));
        }
        let candidate = SafeName::parse(&format!("{dir}{stem}{suffix}{ext}"), max_name_len)
            .map_err(|_| ConflictNameError::TooLong(name.clone()))?;
        if !taken(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ConflictNameError::Taken(name.clone()))
}

/// Splits `file` (one path component) into stem and extension (dot included, or empty).
fn split_extension(file: &str) -> (&str, &str) {
    match file.rfind('.') {
        Some(i) if i > 0 && i + 1 < file.len() && file.len() - i <= MAX_EXTENSION_LEN => file.split_at(i),
        _ => (file, ""),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `YYYY-MM-DD HHMMSS` in UTC, for times from 1970 to 9999 (others are clamped).
fn utc_stamp(unix_secs: i64) -> String {
    const LAST: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    let secs = unix_secs.clamp(0, LAST);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2023-11-14 22:13:20 UTC.
    const T: i64 = 1_700_000_000;

    fn n(s: &str) -> SafeName {
        SafeName::parse(s, 1024).unwrap()
    }

    fn copy(name: &str) -> String {
        conflicted_copy_name(&n(name), &ClientId::parse("laptop").unwrap(), T, 1024, |_| false).unwrap().to_string()
    }

    #[test]
    fn the_stamp_is_utc() {
        assert_eq!(utc_stamp(0), "1970-01-01 000000");
        assert_eq!(utc_stamp(T), "2023-11-14 221320");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29 000000");
        assert_eq!(utc_stamp(4_107_542_399), "2100-02-28 235959");
        assert_eq!(utc_stamp(4_107_542_400), "2100-03-01 000000");
        assert_eq!(utc_stamp(-5), "1970-01-01 000000");
        assert_eq!(utc_stamp(i64::MAX), "9999-12-31 235959");
    }

    #[test]
    fn the_extension_stays_last() {
        assert_eq!(copy("report.txt"), "report (conflicted copy laptop 2023-11-14 221320).txt");
        assert_eq!(copy("archive.tar.gz"), "archive.tar (conflicted copy laptop 2023-11-14 221320).gz");
    }

    #[test]
    fn names_without_an_extension() {
        assert_eq!(copy("Makefile"), "Makefile (conflicted copy laptop 2023-11-14 221320)");
        assert_eq!(copy(".bashrc"), ".bashrc (conflicted copy laptop 2023-11-14 221320)");
        assert_eq!(copy("notes."), "notes. (conflicted copy laptop 2023-11-14 221320)");
        assert_eq!(copy(".config.toml"), ".config (conflicted copy laptop 2023-11-14 221320).toml");
        let long_ext = format!("a.{}", "x".repeat(MAX_EXTENSION_LEN));
        assert_eq!(copy(&long_ext), format!("{long_ext} (conflicted copy laptop 2023-11-14 221320)"));
    }

    #[test]
    fn nested_paths_stay_in_their_directory() {
        assert_eq!(copy("a/b.c/notes.md"), "a/b.c/notes (conflicted copy laptop 2023-11-14 221320).md");
        assert_eq!(copy("a.d/README"), "a.d/README (conflicted copy laptop 2023-11-14 221320)");
    }

    #[test]
    fn taken_names_get_a_counter() {
        let client = ClientId::parse("pc").unwrap();
        let taken =
            [n("f (conflicted copy pc 2023-11-14 221320).txt"), n("f (conflicted copy pc 2023-11-14 221320 2).txt")];
        let got = conflicted_copy_name(&n("f.txt"), &client, T, 1024, |c| taken.contains(c)).unwrap();
        assert_eq!(got.as_str(), "f (conflicted copy pc 2023-11-14 221320 3).txt");
        let err = conflicted_copy_name(&n("f.txt"), &client, T, 1024, |_| true).unwrap_err();
        assert_eq!(err, ConflictNameError::Taken(n("f.txt")));
        assert_eq!(err.to_string(), "every conflicted-copy name for f.txt is taken (100 tried)");
    }

    #[test]
    fn long_names_have_their_stem_shortened() {
        let client = ClientId::parse("pc").unwrap();
        let long = format!("dir/{}.txt", "é".repeat(125)); // 250-byte stem, 254-byte component
        let got = conflicted_copy_name(&n(&long), &client, T, 1024, |_| false).unwrap();
        let file = got.as_str().rsplit('/').next().unwrap();
        assert!(file.len() <= MAX_COMPONENT_BYTES, "{}", file.len());
        assert!(file.starts_with("éé") && file.ends_with(" (conflicted copy pc 2023-11-14 221320).txt"));
        // The whole-name limit counts the directories too.
        let got = conflicted_copy_name(&n("d/file.txt"), &client, T, 46, |_| false).unwrap();
        assert_eq!(got.as_str(), "d/f (conflicted copy pc 2023-11-14 221320).txt");
        let err = conflicted_copy_name(&n("d/file.txt"), &client, T, 45, |_| false).unwrap_err();
        assert_eq!(err, ConflictNameError::TooLong(n("d/file.txt")));
    }

    proptest! {
        #[test]
        fn copies_are_safe_distinct_siblings(
            name in "[a-zA-Z0-9 ._é-]{1,40}(/[a-zA-Z0-9 ._é-]{1,300}){0,2}",
            client in "[a-z0-9][a-z0-9._-]{0,63}",
            secs in any::<i64>(),
            max in 1usize..1100,
        ) {
            let Ok(name) = SafeName::parse(&name, 1024) else { return Ok(()) };
            let client = ClientId::parse(&client).unwrap();
            if let Ok(copy) = conflicted_copy_name(&name, &client, secs, max, |c| c == &name) {
                prop_assert!(copy.as_str().len() <= max);
                prop_assert!(SafeName::parse(copy.as_str(), max).is_ok());
                prop_assert_ne!(&copy, &name);
                let parent = |s: &str| s.rsplit_once('/').map(|(d, _)| d.to_owned());
                prop_assert_eq!(parent(copy.as_str()), parent(name.as_str()));
                let marker = format!(" (conflicted copy {client} ");
                prop_assert!(copy.as_str().contains(&marker));
            }
        }
    }
}
