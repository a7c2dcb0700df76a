//! thaw-snapshot: the lowest crate of thaw. It knows what a model directory
//! holds (which kind of model, where its files are), maps weights into
//! memory, and builds, opens and verifies snapshots: a model prepared once
//! into a ready-to-map layout. It also holds the template (zygote)
//! fork server that forks warmed workers, and its control protocol.

pub mod build;
pub mod hash;
pub mod kind;
pub mod manifest;
pub mod mmap;
pub mod quantize;
pub mod verify;
pub mod zygote;

use std::path::Path;

pub use build::{build, BuildOptions, SnapshotDtype};
pub use kind::{detect_kind, KindError, ModelKind};
pub use manifest::Manifest;
pub use mmap::{map_safetensors, MapError};
pub use verify::{is_snapshot, open, verify};

/// Errors of building, opening or verifying a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The source directory cannot be built from.
    #[error("source: {0}")]
    Source(String),
    /// A weight could not be converted.
    #[error("converting weights: {0}")]
    Convert(String),
    /// The snapshot is refused (what is wrong is in the message).
    #[error("snapshot refused: {0}")]
    Invalid(String),
    /// Not supported by this build.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Writing the manifest.
    #[error("manifest: {0}")]
    Manifest(String),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl SnapshotError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SnapshotError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
