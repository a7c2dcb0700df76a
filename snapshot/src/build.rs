//! `thaw snapshot build`: a model directory into a snapshot — weights
//! converted once to the run-time dtype and written as a safetensors file
//! whose tensors each start on a 64-byte boundary, the model's config and
//! tokenizer files copied, every file hashed into the manifest. The snapshot
//! is written beside its destination and renamed into place, so a reader
//! never sees half of one.
//!
//! A `q8_0` build (embedding models only: the one backend with quantized
//! products) stores each large linear weight as GGML q8_0 blocks — `U8` in
//! the file, its logical shape in the safetensors metadata (see
//! [`QuantizedTensor`]) — and everything else as f32.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Tensor};

use crate::hash::{hash_file, hash_tree};
use crate::manifest::{
    FileEntry, Manifest, QuantizedTensor, Sizes, Source, ALIGNMENT, FORMAT, FORMAT_VERSION,
    MANIFEST,
};
use crate::quantize::{is_quantized_linear, q8_0_tensor};
use crate::{detect_kind, ModelKind, SnapshotError};

/// The dtype a snapshot's weights are stored (and run) in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotDtype {
    /// 32-bit float: the reference.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// GGML q8_0 blocks for the large linear weights, f32 for the rest;
    /// embedding models only.
    Q8_0,
}

impl SnapshotDtype {
    /// The dtype of the float tensors that are not quantized.
    fn candle(self) -> DType {
        match self {
            SnapshotDtype::F32 | SnapshotDtype::Q8_0 => DType::F32,
            SnapshotDtype::F16 => DType::F16,
            SnapshotDtype::Bf16 => DType::BF16,
        }
    }

    /// The name used on the command line and in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotDtype::F32 => "f32",
            SnapshotDtype::F16 => "f16",
            SnapshotDtype::Bf16 => "bf16",
            SnapshotDtype::Q8_0 => "q8_0",
        }
    }

    /// Refuses a dtype that `kind`'s backend cannot run, saying why.
    pub fn check_kind(self, kind: ModelKind) -> Result<(), SnapshotError> {
        let why = match (self, kind) {
            (SnapshotDtype::Q8_0, ModelKind::Tabular) => {
                "the tabular backend (a small MLP) runs f32 products only, and its \
                 weights are a few kilobytes: build it as f32"
            }
            (SnapshotDtype::F32, _) => return Ok(()),
            (_, ModelKind::Chat) => {
                "a chat snapshot copies the GGUF with the quantization it already has"
            }
            _ => return Ok(()),
        };
        Err(SnapshotError::Unsupported(format!(
            "{} for a {kind} model: {why}",
            self.as_str()
        )))
    }
}

impl FromStr for SnapshotDtype {
    type Err = SnapshotError;

    fn from_str(s: &str) -> Result<Self, SnapshotError> {
        match s {
            "f32" => Ok(SnapshotDtype::F32),
            "f16" => Ok(SnapshotDtype::F16),
            "bf16" => Ok(SnapshotDtype::Bf16),
            "q8_0" => Ok(SnapshotDtype::Q8_0),
            other => Err(SnapshotError::Unsupported(format!(
                "dtype {other:?} (f32, f16, bf16, q8_0)"
            ))),
        }
    }
}

/// What to build.
pub struct BuildOptions<'a> {
    /// The model directory.
    pub source: PathBuf,
    /// The snapshot directory to create (replaced if it exists).
    pub out: PathBuf,
    /// The weights' dtype.
    pub dtype: SnapshotDtype,
    /// Called with (bytes done, bytes total) while weights are written.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// Files copied as they are, per kind (those that exist).
fn copied_files(kind: ModelKind) -> &'static [&'static str] {
    match kind {
        ModelKind::Embedding => &[
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "sentence_bert_config.json",
            "modules.json",
            "1_Pooling/config.json",
        ],
        ModelKind::Tabular => &[crate::kind::TABULAR_MANIFEST],
        ModelKind::Chat => &[],
    }
}

/// Warm-up inputs per kind, run by a template before it is ready.
fn warmup(kind: ModelKind) -> Vec<String> {
    match kind {
        ModelKind::Embedding => vec!["warm-up".into(), "a second, longer warm-up sentence".into()],
        ModelKind::Tabular => vec!["zeros".into()],
        ModelKind::Chat => vec!["Hello".into()],
    }
}

/// Builds a snapshot; returns its manifest.
pub fn build(options: &BuildOptions<'_>) -> Result<Manifest, SnapshotError> {
    let source = &options.source;
    apart(source, &options.out)?;
    let kind = detect_kind(source).map_err(|e| SnapshotError::Source(e.to_string()))?;
    options.dtype.check_kind(kind)?;
    let source_hash = hash_tree(source)?;
    let staging = staging_dir(&options.out)?;
    let result = build_into(options, kind, &source_hash, &staging);
    match result {
        Ok(manifest) => match replace_dir(&staging, &options.out) {
            Ok(()) => Ok(manifest),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Refuses an output that is the source, holds it or lies inside it: the
/// output is replaced whole, which would delete the source (or build from
/// a tree that changes under the build).
fn apart(source: &Path, out: &Path) -> Result<(), SnapshotError> {
    let source = source
        .canonicalize()
        .map_err(|e| SnapshotError::io(source, e))?;
    // The output may not exist yet: its parent does, or the build fails
    // later with the reason.
    let out_abs = match out.canonicalize() {
        Ok(path) => path,
        Err(_) => {
            let parent = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            match (parent.canonicalize(), out.file_name()) {
                (Ok(parent), Some(name)) => parent.join(name),
                _ => return Ok(()),
            }
        }
    };
    if source.starts_with(&out_abs) || out_abs.starts_with(&source) {
        return Err(SnapshotError::Source(format!(
            "the output {} {} the source {}; choose an output outside it",
            out.display(),
            if out_abs == source {
                "is"
            } else if source.starts_with(&out_abs) {
                "contains"
            } else {
                "is inside"
            },
            source.display()
        )));
    }
    Ok(())
}

fn build_into(
    options: &BuildOptions<'_>,
    kind: ModelKind,
    source_hash: &str,
    staging: &Path,
) -> Result<Manifest, SnapshotError> {
    let (architecture, dtype, sizes) = match kind {
        ModelKind::Chat => copy_gguf(&options.source, staging)?,
        ModelKind::Embedding | ModelKind::Tabular => {
            let sizes = write_weights(options, staging)?;
            let arch = if kind == ModelKind::Embedding {
                "bert"
            } else {
                "mlp"
            };
            (arch.to_string(), options.dtype.as_str().to_string(), sizes)
        }
    };
    for file in copied_files(kind) {
        let from = options.source.join(file);
        if from.is_file() {
            let to = staging.join(file);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
            }
            std::fs::copy(&from, &to).map_err(|e| SnapshotError::io(&from, e))?;
        }
    }
    if kind == ModelKind::Tabular {
        point_manifest_at_weights(staging)?;
    }
    let files = list_files(staging)?
        .into_iter()
        .map(|rel| {
            let path = staging.join(&rel);
            let (size, sha256) = hash_file(&path)?;
            Ok(FileEntry {
                path: rel,
                size,
                sha256,
            })
        })
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        builder: format!("thaw {}", env!("CARGO_PKG_VERSION")),
        kind,
        architecture,
        dtype,
        source: Source {
            path: options.source.display().to_string(),
            hash: source_hash.to_string(),
        },
        files,
        sizes,
        warmup: warmup(kind),
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| SnapshotError::Manifest(e.to_string()))?;
    let path = staging.join(MANIFEST);
    std::fs::write(&path, text + "\n").map_err(|e| SnapshotError::io(&path, e))?;
    Ok(manifest)
}

/// Converts every tensor of the source's safetensors to the dtype (or, in a
/// q8_0 build, quantizes the large linear weights) and writes them, each
/// aligned, to `model.safetensors`.
fn write_weights(options: &BuildOptions<'_>, staging: &Path) -> Result<Sizes, SnapshotError> {
    let tabular = tabular_manifest(&options.source)?;
    let weights = options.source.join(match &tabular {
        Some((path, manifest)) => tabular_weights(path, manifest)?,
        None => "model.safetensors",
    });
    if crate::is_snapshot(&options.source) {
        // A snapshot as the source: its padding is not a weight, and its
        // q8_0 blocks cannot be converted again. Its hashes are checked
        // first: a new manifest's hashes must not vouch for corrupted
        // weights.
        let manifest = crate::verify(&options.source)?;
        if manifest.dtype != "f32" && manifest.dtype != "f16" {
            return Err(SnapshotError::Source(format!(
                "{} is a {} snapshot; build from the model's original files",
                options.source.display(),
                manifest.dtype
            )));
        }
    }
    let tensors = crate::mmap::load_all(&weights)?;
    if let Some((path, manifest)) = &tabular {
        check_tabular(path, manifest, &tensors)?;
    } else if !options.source.join("tokenizer.json").is_file() {
        return Err(SnapshotError::Source(format!(
            "{}: an embedding model needs its tokenizer.json",
            options.source.display()
        )));
    }
    let dtype = options.dtype.candle();
    let mut converted: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut quantized = BTreeMap::new();
    for (name, t) in tensors {
        if name.starts_with("__pad_") {
            continue;
        }
        let fail = |e: candle_core::Error| SnapshotError::Convert(format!("{name}: {e}"));
        let quantize = options.dtype == SnapshotDtype::Q8_0
            && t.dtype().is_float()
            && is_quantized_linear(&name, t.dims());
        let t = if quantize {
            let (rows, columns) = t.dims2().map_err(fail)?;
            quantized.insert(name.clone(), QuantizedTensor::q8_0(rows, columns));
            q8_0_tensor(&t).map_err(fail)?
        } else if t.dtype().is_float() {
            t.to_dtype(dtype).map_err(fail)?
        } else {
            t
        };
        converted.insert(name, t);
    }
    write_aligned(
        &staging.join("model.safetensors"),
        &converted,
        &quantized,
        options.progress,
    )
}

/// Writes a safetensors file whose data section starts, and whose every
/// tensor starts, at a multiple of [`ALIGNMENT`] from the file's start;
/// padding between tensors is named `__pad_N` (U8), since safetensors wants
/// its data section fully indexed. The tensors named in `quantized` are
/// stored blocks; their records go to the header's `__metadata__`.
pub fn write_aligned(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    quantized: &BTreeMap<String, QuantizedTensor>,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<Sizes, SnapshotError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut parameters = 0u64;
    for (i, (name, t)) in tensors.iter().enumerate() {
        let pad = (ALIGNMENT - offset % ALIGNMENT) % ALIGNMENT;
        if pad > 0 {
            entries.push((
                format!("__pad_{i}"),
                "U8".to_string(),
                vec![pad],
                offset,
                offset + pad,
                None,
            ));
            offset += pad;
        }
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        parameters += match quantized.get(name) {
            Some(q) => q.shape.iter().product::<usize>(),
            None => t.elem_count(),
        } as u64;
        entries.push((
            name.clone(),
            st_dtype(t.dtype())?,
            t.dims().to_vec(),
            offset,
            offset + bytes,
            Some(t),
        ));
        offset += bytes;
    }
    let mut header = serde_json::Map::new();
    if !quantized.is_empty() {
        let mut records = serde_json::Map::new();
        for (name, record) in quantized {
            let text = serde_json::to_string(record)
                .map_err(|e| SnapshotError::Manifest(e.to_string()))?;
            records.insert(name.clone(), text.into());
        }
        header.insert("__metadata__".into(), records.into());
    }
    for (name, dtype, shape, start, end, _) in &entries {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
        );
    }
    let mut header =
        serde_json::to_vec(&header).map_err(|e| SnapshotError::Manifest(e.to_string()))?;
    // Pad the header with spaces so that the data section is aligned.
    while (8 + header.len()) % ALIGNMENT != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| SnapshotError::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e| SnapshotError::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let total = offset as u64;
    for (_, _, _, start, end, tensor) in &entries {
        match tensor {
            None => out.write_all(&vec![0u8; end - start]).map_err(io)?,
            Some(t) => out.write_all(&tensor_bytes(t)?).map_err(io)?,
        }
        if let Some(report) = progress {
            report(*end as u64, total);
        }
    }
    out.flush().map_err(io)?;
    Ok(Sizes {
        weight_bytes: total,
        parameters,
    })
}

fn st_dtype(dtype: DType) -> Result<String, SnapshotError> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        other => {
            return Err(SnapshotError::Convert(format!(
                "dtype {other:?} is not supported"
            )))
        }
    }
    .to_string())
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>, SnapshotError> {
    let t = t
        .flatten_all()
        .map_err(|e| SnapshotError::Convert(e.to_string()))?;
    match t.dtype() {
        DType::F32 => le_bytes(&t, f32::to_le_bytes),
        DType::F16 => le_bytes(&t, half::f16::to_le_bytes),
        DType::BF16 => le_bytes(&t, half::bf16::to_le_bytes),
        DType::F64 => le_bytes(&t, f64::to_le_bytes),
        DType::U8 => le_bytes(&t, u8::to_le_bytes),
        DType::U32 => le_bytes(&t, u32::to_le_bytes),
        DType::I64 => le_bytes(&t, i64::to_le_bytes),
        other => Err(SnapshotError::Convert(format!(
            "dtype {other:?} is not supported"
        ))),
    }
}

/// A flat tensor's elements as little-endian bytes.
fn le_bytes<T: candle_core::WithDType, const N: usize>(
    t: &Tensor,
    to_le: fn(T) -> [u8; N],
) -> Result<Vec<u8>, SnapshotError> {
    let values = t
        .to_vec1::<T>()
        .map_err(|e| SnapshotError::Convert(e.to_string()))?;
    Ok(values.into_iter().flat_map(to_le).collect())
}

/// Chat models: the GGUF is already laid out for mapping; it is copied.
fn copy_gguf(source: &Path, staging: &Path) -> Result<(String, String, Sizes), SnapshotError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| SnapshotError::io(source, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    if found.len() != 1 {
        return Err(SnapshotError::Source(format!(
            "{} .gguf files in {}; a chat model is one",
            found.len(),
            source.display()
        )));
    }
    let gguf = found.remove(0);
    check_gguf(&gguf)?;
    let name = gguf.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let to = staging.join(&name);
    let size = std::fs::copy(&gguf, &to).map_err(|e| SnapshotError::io(&gguf, e))?;
    Ok((
        "llama".into(),
        "gguf".into(),
        Sizes {
            weight_bytes: size,
            parameters: 0,
        },
    ))
}

/// Reads a GGUF's header and checks that every tensor it lists lies inside
/// the file: what a worker maps.
fn check_gguf(path: &Path) -> Result<(), SnapshotError> {
    use candle_core::quantized::gguf_file::Content;
    let bad = |why: String| SnapshotError::Source(format!("{}: {why}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| SnapshotError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::io(path, e))?
        .len();
    let content = Content::read(&mut file).map_err(|e| bad(format!("not a GGUF file: {e}")))?;
    if content.tensor_infos.is_empty() {
        return Err(bad("the GGUF holds no tensors".into()));
    }
    for (name, info) in &content.tensor_infos {
        let dtype = info.ggml_dtype;
        let bytes = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
        let end = content.tensor_data_offset + info.offset + bytes;
        if end > len {
            return Err(bad(format!(
                "tensor {name} ends at byte {end}, past the file's {len}: truncated"
            )));
        }
    }
    Ok(())
}

/// Checks a tabular model's weights against its manifest: the
/// standardisation vectors and every layer of the MLP it describes, with
/// their shapes, as the worker will read them.
/// The source's tabular manifest, parsed, with its path; `None` for a
/// source without one.
fn tabular_manifest(source: &Path) -> Result<Option<(PathBuf, serde_json::Value)>, SnapshotError> {
    let path = source.join(crate::kind::TABULAR_MANIFEST);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| SnapshotError::io(&path, e))?;
    let manifest = serde_json::from_str(&text)
        .map_err(|e| SnapshotError::Source(format!("{}: {e}", path.display())))?;
    Ok(Some((path, manifest)))
}

/// A tabular source's weights file, relative to it: the manifest's
/// `weights`, what a worker serving the source loads.
fn tabular_weights<'m>(
    path: &Path,
    manifest: &'m serde_json::Value,
) -> Result<&'m str, SnapshotError> {
    let bad = |why: String| SnapshotError::Source(format!("{}: {why}", path.display()));
    let Some(name) = manifest["weights"].as_str() else {
        return Err(bad("weights must name the safetensors file".into()));
    };
    if !crate::kind::is_inside_name(name) {
        return Err(bad(format!(
            "weights {name:?} must be a file in the model's directory"
        )));
    }
    Ok(name)
}

fn check_tabular(
    path: &Path,
    manifest: &serde_json::Value,
    tensors: &[(String, Tensor)],
) -> Result<(), SnapshotError> {
    let bad = |why: String| SnapshotError::Source(format!("{}: {why}", path.display()));
    let width = manifest["input"]["features"]
        .as_array()
        .map(Vec::len)
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("input.features must list the features".into()))?;
    let hidden: Vec<usize> = manifest["hidden"]
        .as_array()
        .ok_or_else(|| bad("hidden must be an array of layer widths".into()))?
        .iter()
        .map(|h| h.as_u64().filter(|&h| h > 0).map(|h| h as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("hidden must hold positive layer widths".into()))?;
    let dims: Vec<usize> = std::iter::once(width)
        .chain(hidden)
        .chain(std::iter::once(1))
        .collect();
    let mut wanted = vec![
        ("norm.mean".to_string(), vec![width]),
        ("norm.std".to_string(), vec![width]),
    ];
    for (i, d) in dims.windows(2).enumerate() {
        wanted.push((format!("layers.{i}.weight"), vec![d[1], d[0]]));
        wanted.push((format!("layers.{i}.bias"), vec![d[1]]));
    }
    for (name, shape) in wanted {
        match tensors.iter().find(|(n, _)| *n == name).map(|(_, t)| t) {
            Some(t) if t.dims() == shape.as_slice() => {}
            Some(t) => {
                return Err(bad(format!(
                    "{name} is {:?} in the weights, the manifest makes it {shape:?}",
                    t.dims()
                )))
            }
            None => return Err(bad(format!("the weights have no {name}"))),
        }
    }
    Ok(())
}

fn point_manifest_at_weights(staging: &Path) -> Result<(), SnapshotError> {
    let path = staging.join(crate::kind::TABULAR_MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| SnapshotError::io(&path, e))?;
    let mut m: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SnapshotError::Source(format!("{}: {e}", path.display())))?;
    m["weights"] = serde_json::json!("model.safetensors");
    std::fs::write(&path, m.to_string()).map_err(|e| SnapshotError::io(&path, e))
}

/// Files under `dir`, relative, sorted.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| SnapshotError::io(&d, e))? {
            let path = entry.map_err(|e| SnapshotError::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn staging_dir(out: &Path) -> Result<PathBuf, SnapshotError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| SnapshotError::io(&staging, e))?;
    Ok(staging)
}

/// Moves `staging` to `out`; an old snapshot at `out` is moved aside first
/// and removed after, never rewritten in place (it may be mapped).
fn replace_dir(staging: &Path, out: &Path) -> Result<(), SnapshotError> {
    let old = out.with_extension(format!("old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(|e| SnapshotError::io(out, e))?;
    }
    std::fs::rename(staging, out).map_err(|e| SnapshotError::io(out, e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
