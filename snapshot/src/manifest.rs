//! The snapshot manifest (`manifest.json`): what the snapshot holds, how it
//! was built, and the content hash of every file, checked on verify.

use serde::{Deserialize, Serialize};

use crate::ModelKind;

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST: &str = "manifest.json";
/// The format name every manifest carries.
pub const FORMAT: &str = "thaw-snapshot";
/// The layout version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Every tensor's data starts at a multiple of this, from the file's start.
pub const ALIGNMENT: usize = 64;

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version ([`FORMAT_VERSION`] for this build).
    pub format_version: u32,
    /// The builder, `thaw <version>`.
    pub builder: String,
    /// The model's kind.
    pub kind: ModelKind,
    /// `bert`, `mlp`, `llama`.
    pub architecture: String,
    /// The weights' dtype at run time (`f32`, `f16`, `bf16`, or the GGUF's own).
    pub dtype: String,
    /// The source directory it was built from, and the hash of its files.
    pub source: Source,
    /// Every file of the snapshot but the manifest.
    pub files: Vec<FileEntry>,
    /// Weight bytes and parameter count.
    pub sizes: Sizes,
    /// Inputs a template runs before it declares itself ready.
    pub warmup: Vec<String>,
}

/// Where a snapshot came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The source directory, as given.
    pub path: String,
    /// sha256 over the source files' names and contents: a changed source
    /// means a rebuild.
    pub hash: String,
}

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the snapshot directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content, hex.
    pub sha256: String,
}

/// Sizes of the weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// Bytes of weight data.
    pub weight_bytes: u64,
    /// Number of parameters.
    pub parameters: u64,
}
