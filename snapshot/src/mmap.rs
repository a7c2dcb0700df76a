//! Weights memory-mapped from safetensors files: the one place where thaw maps
//! model files, so that the `unsafe` of a mapping lives in one module.
//! Float tensors are read through a `VarBuilder`; a q8_0 snapshot's
//! quantized tensors through [`QuantizedWeights`], as the stored blocks; a
//! GGUF whole through [`MappedFile`].
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::manifest::QuantizedTensor;

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
    let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(fail)?;
    let names: Vec<String> = mapped.tensors().into_iter().map(|(n, _)| n).collect();
    names
        .into_iter()
        .map(|name| {
            let t = mapped.load(&name, &Device::Cpu).map_err(fail)?;
            Ok((name, t))
        })
        .collect()
}

/// The quantized tensors of one safetensors file (a q8_0 snapshot's
/// `model.safetensors`), each as its stored blocks, read from a mapping.
/// A file without quantized tensors gives an empty set and is not mapped.
pub struct QuantizedWeights {
    records: BTreeMap<String, QuantizedTensor>,
    mapped: Option<MmapedSafetensors>,
    path: PathBuf,
}

/// One quantized tensor: its blocks as stored, and what they hold.
#[derive(Debug, Clone, Copy)]
pub struct QuantizedView<'a> {
    /// The block format (`q8_0`).
    pub dtype: &'a str,
    /// The logical shape, `[rows, columns]`.
    pub shape: [usize; 2],
    /// The blocks, row after row; borrowed from the mapping.
    pub bytes: &'a [u8],
}

impl QuantizedWeights {
    /// Reads the header's quantization records, checks each against its
    /// tensor's stored dtype and shape, and maps the file if any is found.
    pub fn open(path: &Path) -> Result<Self, MapError> {
        let header = read_header(path)?;
        let records = quantized_records(&header).map_err(|msg| MapError {
            path: path.to_path_buf(),
            source: candle_core::Error::Msg(msg),
        })?;
        let mapped = if records.is_empty() {
            None
        } else {
            // SAFETY: as in `map_safetensors`: a read-only mapping of a
            // model file that is not modified while mapped.
            let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|source| MapError {
                path: path.to_path_buf(),
                source,
            })?;
            Some(mapped)
        };
        Ok(QuantizedWeights {
            records,
            mapped,
            path: path.to_path_buf(),
        })
    }

    /// Whether the file has no quantized tensor.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The tensor `name` if it is quantized; `Ok(None)` if it is not.
    pub fn get(&self, name: &str) -> Result<Option<QuantizedView<'_>>, MapError> {
        let (Some(record), Some(mapped)) = (self.records.get(name), &self.mapped) else {
            return Ok(None);
        };
        let fail = |source| MapError {
            path: self.path.clone(),
            source,
        };
        let bytes = mapped.get(name).map_err(fail)?.data();
        let [rows, columns] = record.shape[..] else {
            return Err(fail(candle_core::Error::Msg(format!(
                "{name}: not a matrix"
            ))));
        };
        Ok(Some(QuantizedView {
            dtype: &record.dtype,
            shape: [rows, columns],
            bytes,
        }))
    }
}

/// A whole file mapped read-only (a GGUF, whose tensors are read in place).
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl MappedFile {
    /// Maps `path`.
    pub fn open(path: &Path) -> Result<Self, MapError> {
        let fail = |e: std::io::Error| MapError {
            path: path.to_path_buf(),
            source: candle_core::Error::Io(e),
        };
        let file = std::fs::File::open(path).map_err(fail)?;
        // SAFETY: as in `map_safetensors`: a read-only mapping of a model
        // file that is not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(fail)?;
        Ok(MappedFile {
            map,
            path: path.to_path_buf(),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The quantization records of a safetensors header: every `__metadata__`
/// entry named after a tensor, each checked against that tensor (stored as
/// `U8` in the shape its record implies).
fn quantized_records(
    header: &serde_json::Value,
) -> Result<BTreeMap<String, QuantizedTensor>, String> {
    let Some(metadata) = header.get("__metadata__").and_then(|m| m.as_object()) else {
        return Ok(BTreeMap::new());
    };
    let mut records = BTreeMap::new();
    for (name, text) in metadata {
        let Some(tensor) = header.get(name).filter(|_| name != "__metadata__") else {
            continue;
        };
        let record: QuantizedTensor = text
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .ok_or_else(|| format!("{name}: unreadable quantization record {text}"))?;
        let stored = record.stored_shape().ok_or_else(|| {
            format!(
                "{name}: {} of shape {:?} is not a supported quantization (q8_0 rows of whole 32-value blocks)",
                record.dtype, record.shape
            )
        })?;
        let stored_shape: Option<Vec<usize>> = tensor["shape"]
            .as_array()
            .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let dtype = tensor["dtype"].as_str().unwrap_or("?");
        if dtype != "U8" || stored_shape.as_deref() != Some(&stored[..]) {
            return Err(format!(
                "{name}: stored as {dtype} {}, but its {} record of shape {:?} needs U8 {stored:?}",
                tensor["shape"], record.dtype, record.shape
            ));
        }
        records.insert(name.clone(), record);
    }
    Ok(records)
}

/// The JSON header of a safetensors file, read (not mapped).
fn read_header(path: &Path) -> Result<serde_json::Value, MapError> {
    let fail = |msg: String| MapError {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(msg),
    };
    let header_len = check_header(path)?;
    let len = usize::try_from(header_len).map_err(|e| fail(e.to_string()))?;
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = vec![0u8; 8 + len];
    std::io::Read::read_exact(&mut file, &mut bytes).map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&bytes[8..]).map_err(|e| fail(format!("malformed header: {e}")))
}

/// Refuses a file that is too short for its own header before it is mapped,
/// so a truncated download gets a message rather than a fault. Returns the
/// header's length.
fn check_header(path: &Path) -> Result<u64, MapError> {
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
    Ok(header_len)
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

    #[test]
    fn quantization_records_must_match_their_tensors() {
        let header = |dtype: &str, shape: serde_json::Value, record: &str| {
            serde_json::json!({
                "__metadata__": {"w": record, "format": "pt"},
                "w": {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]},
            })
        };
        let q8 = r#"{"dtype":"q8_0","shape":[4,64]}"#;
        let records = quantized_records(&header("U8", serde_json::json!([4, 68]), q8))
            .expect("a matching record");
        assert_eq!(records["w"], QuantizedTensor::q8_0(4, 64));
        assert_eq!(records.len(), 1, "`format` names no tensor");
        for (dtype, shape, record, why) in [
            ("F32", serde_json::json!([4, 68]), q8, "stored as F32"),
            ("U8", serde_json::json!([4, 64]), q8, "needs U8 [4, 68]"),
            (
                "U8",
                serde_json::json!([4, 68]),
                r#"{"dtype":"q4_0","shape":[4,64]}"#,
                "q4_0",
            ),
            (
                "U8",
                serde_json::json!([4, 34]),
                r#"{"dtype":"q8_0","shape":[4,33]}"#,
                "whole",
            ),
            ("U8", serde_json::json!([4, 68]), "[4,64]", "unreadable"),
        ] {
            let e = quantized_records(&header(dtype, shape, record)).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
        assert!(quantized_records(&serde_json::json!({}))
            .expect("no metadata")
            .is_empty());
    }
}
