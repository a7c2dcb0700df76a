//! Weights memory-mapped from safetensors files: the one place where thaw maps
//! model files, so that the `unsafe` of a mapping lives in one module.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// Why weights could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot map weights from {path}: {source}")]
pub struct MapError {
    /// The file that failed.
    pub path: PathBuf,
    /// The underlying error (I/O, or a malformed safetensors header).
    #[source]
    pub source: candle_core::Error,
}

/// Maps the safetensors files at `paths` and returns a `VarBuilder` over them.
/// Only the headers are parsed here; each tensor is read from the mapping
/// when the model asks for it, converted to `dtype` only if it is stored in
/// another one.
pub fn map_safetensors(
    paths: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, MapError> {
    for path in paths {
        check_header(path)?;
    }
    // SAFETY: the mapping is read-only and the files are thaw's model files,
    // which are written once (by the fetch step or a snapshot build, through a
    // rename) and never modified in place while mapped; a file truncated under
    // a mapping would fault, which is why snapshots are replaced, not rewritten.
    unsafe { VarBuilder::from_mmaped_safetensors(paths, dtype, device) }.map_err(|source| {
        MapError {
            path: paths.first().cloned().unwrap_or_default(),
            source,
        }
    })
}

/// Every tensor of a safetensors file, read through a mapping (used by the
/// snapshot builder, which converts each one).
pub fn load_all(path: &Path) -> Result<Vec<(String, candle_core::Tensor)>, crate::SnapshotError> {
    check_header(path).map_err(|e| crate::SnapshotError::Source(e.to_string()))?;
    let fail =
        |e: candle_core::Error| crate::SnapshotError::Source(format!("{}: {e}", path.display()));
    // SAFETY: as in `map_safetensors`: a read-only mapping of a model file
    // that is not modified while mapped.
    let mapped = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(fail)?;
    let names: Vec<String> = mapped.tensors().into_iter().map(|(n, _)| n).collect();
    names
        .into_iter()
        .map(|name| {
            let t = mapped.load(&name, &Device::Cpu).map_err(fail)?;
            Ok((name, t))
        })
        .collect()
}

/// Refuses a file that is too short for its own header before it is mapped,
/// so a truncated download gets a message rather than a fault.
fn check_header(path: &Path) -> Result<(), MapError> {
    let fail = |msg: String| MapError {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(msg),
    };
    let len = std::fs::metadata(path)
        .map_err(|e| fail(e.to_string()))?
        .len();
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    std::io::Read::read_exact(&mut file, &mut head)
        .map_err(|_| fail(format!("file is {len} bytes, too short for a header")))?;
    let header_len = u64::from_le_bytes(head);
    if header_len.saturating_add(8) > len {
        return Err(fail(format!(
            "header claims {header_len} bytes but the file is {len} bytes (truncated?)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_truncated_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.safetensors");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).expect("write");
        let err = map_safetensors(&[path], DType::F32, &Device::Cpu)
            .err()
            .expect("a truncated file is refused");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
