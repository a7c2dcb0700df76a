//! Opening and verifying snapshots. `open` reads the manifest and checks the
//! format, the kind and every file's presence and size (cheap: what a
//! template does before mapping); `verify` also checks every file's hash.
//! Each refusal says what is wrong.

use std::path::Path;

use crate::hash::hash_file;
use crate::manifest::{Manifest, FORMAT, FORMAT_VERSION, MANIFEST};
use crate::{ModelKind, SnapshotError};

/// Whether `dir` holds a snapshot (has a manifest).
pub fn is_snapshot(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// Reads and checks the manifest and file sizes; with `kind`, refuses a
/// snapshot of another kind.
pub fn open(dir: &Path, kind: Option<ModelKind>) -> Result<Manifest, SnapshotError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        SnapshotError::Invalid(format!("{}: no readable manifest ({e})", dir.display()))
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        SnapshotError::Invalid(format!("{}: malformed manifest: {e}", path.display()))
    })?;
    if manifest.format != FORMAT {
        return Err(SnapshotError::Invalid(format!(
            "{}: format {:?} is not {FORMAT:?}",
            path.display(),
            manifest.format
        )));
    }
    if manifest.format_version != FORMAT_VERSION {
        return Err(SnapshotError::Invalid(format!(
            "{}: layout version {} (built by {}); this build reads version {FORMAT_VERSION}: rebuild the snapshot",
            path.display(),
            manifest.format_version,
            manifest.builder
        )));
    }
    if let Some(kind) = kind {
        if manifest.kind != kind {
            return Err(SnapshotError::Invalid(format!(
                "{}: a {} snapshot, expected {kind}",
                dir.display(),
                manifest.kind
            )));
        }
    }
    check_listing(&manifest, &path)?;
    for file in &manifest.files {
        let p = dir.join(&file.path);
        let size = std::fs::metadata(&p)
            .map_err(|_| SnapshotError::Invalid(format!("{}: missing", p.display())))?
            .len();
        if size != file.size {
            let what = if size < file.size {
                "truncated"
            } else {
                "longer than built"
            };
            return Err(SnapshotError::Invalid(format!(
                "{}: {what}: {size} bytes, the manifest says {}",
                p.display(),
                file.size
            )));
        }
    }
    Ok(manifest)
}

/// Refuses a manifest whose listing a build cannot have written: a path
/// that leaves the snapshot, a file listed twice, a file its kind needs
/// missing from the list, an architecture or dtype foreign to its kind.
fn check_listing(manifest: &Manifest, path: &Path) -> Result<(), SnapshotError> {
    use std::path::Component;
    let refuse = |why: String| SnapshotError::Invalid(format!("{}: {why}", path.display()));
    let mut seen = std::collections::HashSet::new();
    for file in &manifest.files {
        let inside = !file.path.is_empty()
            && Path::new(&file.path)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(refuse(format!(
                "file {:?} is not inside the snapshot",
                file.path
            )));
        }
        if !seen.insert(file.path.as_str()) {
            return Err(refuse(format!("file {:?} is listed twice", file.path)));
        }
    }
    let (needed, architectures, dtypes): (&[&str], &[&str], &[&str]) = match manifest.kind {
        ModelKind::Embedding => (
            &["model.safetensors", "config.json", "tokenizer.json"],
            &["bert"],
            &["f32", "f16", "q8_0"],
        ),
        ModelKind::Tabular => (
            &["model.safetensors", crate::kind::TABULAR_MANIFEST],
            &["mlp"],
            &["f32", "f16"],
        ),
        ModelKind::Chat => (&[], &[], &[]),
    };
    if let Some(missing) = needed.iter().find(|n| !seen.contains(**n)) {
        return Err(refuse(format!(
            "this {} snapshot lists no {missing}",
            manifest.kind
        )));
    }
    if manifest.kind == ModelKind::Chat && seen.iter().filter(|p| p.ends_with(".gguf")).count() != 1
    {
        return Err(refuse("a chat snapshot lists one .gguf file".into()));
    }
    if !architectures.is_empty() && !architectures.contains(&manifest.architecture.as_str()) {
        return Err(refuse(format!(
            "architecture {:?} is not one of this {} snapshot's",
            manifest.architecture, manifest.kind
        )));
    }
    if !dtypes.is_empty() && !dtypes.contains(&manifest.dtype.as_str()) {
        return Err(refuse(format!(
            "dtype {:?} is not one of this {} snapshot's",
            manifest.dtype, manifest.kind
        )));
    }
    Ok(())
}

/// `open`, then every file's sha256 against the manifest.
pub fn verify(dir: &Path) -> Result<Manifest, SnapshotError> {
    let manifest = open(dir, None)?;
    for file in &manifest.files {
        let p = dir.join(&file.path);
        let (_, sha) = hash_file(&p)?;
        if sha != file.sha256 {
            return Err(SnapshotError::Invalid(format!(
                "{}: corrupted: sha256 {sha}, the manifest says {}",
                p.display(),
                file.sha256
            )));
        }
    }
    Ok(manifest)
}
