//! How a transfer reports progress and notices to whoever shows them (the
//! CLI's progress bar, or nothing).

pub trait Observer: Send {
    /// A transfer (re)starts at `offset` of `total` bytes (unknown for a
    /// stream being uploaded).
    fn begin(&mut self, total: Option<u64>, offset: u64);
    /// Bytes confirmed so far.
    fn progress(&mut self, offset: u64);
    /// Something a person should know: a pause, a retry, a restart.
    fn notice(&mut self, message: &str);
    fn finish(&mut self);
}

/// Reports nothing.
pub struct Silent;

impl Observer for Silent {
    fn begin(&mut self, _total: Option<u64>, _offset: u64) {}
    fn progress(&mut self, _offset: u64) {}
    fn notice(&mut self, _message: &str) {}
    fn finish(&mut self) {}
}
