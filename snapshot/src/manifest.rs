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
/// q8_0 (GGML's `block_q8_0`): a row is cut into blocks of this many values…
pub const Q8_0_BLOCK: usize = 32;
/// …each stored in this many bytes: the scale as a little-endian f16, then
/// one i8 per value (value = i8 × scale).
pub const Q8_0_BLOCK_BYTES: usize = 34;

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
    /// The weights' dtype at run time (`f32`, `f16`, `bf16`, `q8_0`, or the
    /// GGUF's own). In a `q8_0` snapshot the large linear weights are
    /// [`QuantizedTensor`]s and the rest is f32.
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

/// A quantized tensor of a snapshot's weights file. The tensor itself is
/// stored as `U8`, shape `[rows, row bytes]`, each row its blocks one after
/// another; this record, under the tensor's name in the file's safetensors
/// `__metadata__` (as JSON text), gives its block format and logical shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedTensor {
    /// The block format: `q8_0`.
    pub dtype: String,
    /// The logical shape `[rows, columns]` (`[out, in]` for a linear weight).
    pub shape: Vec<usize>,
}

impl QuantizedTensor {
    /// A q8_0 record for a `[rows, columns]` matrix.
    pub fn q8_0(rows: usize, columns: usize) -> Self {
        QuantizedTensor {
            dtype: "q8_0".into(),
            shape: vec![rows, columns],
        }
    }

    /// The stored `U8` shape, `[rows, row bytes]`; `None` for a block
    /// format other than q8_0 or a shape that is not whole rows of blocks.
    pub fn stored_shape(&self) -> Option<[usize; 2]> {
        match (self.dtype.as_str(), self.shape.as_slice()) {
            ("q8_0", &[rows, columns]) if columns > 0 && columns % Q8_0_BLOCK == 0 => {
                Some([rows, columns / Q8_0_BLOCK * Q8_0_BLOCK_BYTES])
            }
            _ => None,
        }
    }
}
