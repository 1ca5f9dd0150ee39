//! The version string this build reports in `ferry status`, `INFO RESUMED`
//! and upgrade history.

use std::sync::OnceLock;

/// Package version, optionally suffixed at build time with
/// `FERRY_BUILD_TAG` (e.g. `0.1.0+canary`), so that two builds of the same
/// source can be told apart after a live upgrade.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| match option_env!("FERRY_BUILD_TAG") {
        Some(tag) if !tag.is_empty() => format!("{}+{}", env!("CARGO_PKG_VERSION"), tag),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    })
}
