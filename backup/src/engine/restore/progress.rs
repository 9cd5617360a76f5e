//! Progress and summary of a restore run: the [`Progress`] sink the engine reports to (bars on a
//! terminal, plain lines otherwise, or nothing) and the [`RestoreReport`] it returns.

use indicatif::ProgressBar;

/// Per-volume outcome.
#[derive(Debug, Clone, Default)]
pub struct VolumeReport {
    pub volume: String,
    pub claim: String,
    pub size: u64,
    /// Bytes sent to the upload proxy (compressed), 0 for the job method.
    pub wire_bytes: u64,
    pub zero_chunks: u64,
    pub chunks: u64,
    pub attempts: u32,
    pub seconds: f64,
}

/// Outcome of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub vm: String,
    pub volumes: Vec<VolumeReport>,
    /// In place: the old disks (`ns/claim`) that were deleted after the VM was switched over.
    pub replaced: Vec<String>,
    pub seconds: f64,
}

/// Progress reporting of a run (bars on a terminal, plain lines otherwise, or nothing).
pub trait Progress: Send + Sync {
    /// A bar for a volume of `size` bytes, or None.
    fn volume(&self, volume: &str, size: u64) -> Option<ProgressBar>;
    /// A plain status line.
    fn line(&self, msg: &str);
}

/// No progress output.
#[derive(Debug)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn volume(&self, _: &str, _: u64) -> Option<ProgressBar> {
        None
    }
    fn line(&self, _: &str) {}
}
