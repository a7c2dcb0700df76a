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
