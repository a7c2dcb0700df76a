//! The snapshot tier: a model's source directory is built into a snapshot
//! under the state directory on first use, and rebuilt when the source's
//! content changes; workers are then started from the snapshot. A source
//! that is already a snapshot is used as it is. A snapshot that is not
//! built here and now (a snapshot source, or one built by an earlier run)
//! has every file's hash checked first, once per pool: a worker's own
//! open checks sizes, not contents.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thaw_snapshot::{BuildOptions, ModelKind, SnapshotDtype};

/// Where a model's workers start from, and what it cost to get there.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Time spent building it (zero when it was reused).
    pub built_in: Option<Duration>,
}

/// Returns a usable snapshot of `source` for `model`, building it into
/// `snapshots/<model>-<source hash>` when missing: each version of a
/// source has its own directory, so a version being replaced (or a
/// replacement that fails) keeps starting from its own weights. Blocking:
/// run it off the async threads.
pub fn prepare(
    source: &Path,
    kind: Option<ModelKind>,
    snapshots: &Path,
    model: &str,
) -> Result<Prepared, thaw_snapshot::SnapshotError> {
    if thaw_snapshot::is_snapshot(source) {
        thaw_snapshot::verify(source)?;
        thaw_snapshot::open(source, kind)?;
        return Ok(Prepared {
            dir: source.to_path_buf(),
            built_in: None,
        });
    }
    let source_hash = thaw_snapshot::hash::hash_tree(source)?;
    let out = snapshots.join(format!("{model}-{}", &source_hash[..HASH_CHARS]));
    let fresh = thaw_snapshot::open(&out, kind)
        .map(|m| m.source.hash == source_hash)
        .unwrap_or(false);
    // A snapshot that an earlier run built, damaged since, is built again.
    let intact = || match thaw_snapshot::verify(&out) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                model,
                "the snapshot in {} is damaged, building it again: {e}",
                out.display()
            );
            false
        }
    };
    if fresh && intact() {
        return Ok(Prepared {
            dir: out,
            built_in: None,
        });
    }
    let start = Instant::now();
    tracing::info!(model, source = %source.display(), "building snapshot");
    thaw_snapshot::build(&BuildOptions {
        source: source.to_path_buf(),
        out: out.clone(),
        dtype: SnapshotDtype::F32,
        progress: None,
    })?;
    Ok(Prepared {
        dir: out,
        built_in: Some(start.elapsed()),
    })
}

/// Hex digits of the source's hash in a snapshot directory's name.
const HASH_CHARS: usize = 16;

/// Removes `model`'s snapshot directories other than `keep` (those of
/// sources it no longer serves, and the one-per-model directory of earlier
/// builds). Blocking.
pub fn prune(snapshots: &Path, model: &str, keep: Option<&Path>) {
    remove_where(snapshots, |owner, path| {
        owner == model && keep != Some(path)
    });
}

/// Removes the snapshot directories of models `configured` does not name
/// (models removed from the config since an earlier run built them).
/// Blocking; for a gateway that starts alone (an upgrade's old process may
/// still be draining a model the new config removed).
pub fn prune_unconfigured(snapshots: &Path, configured: &[&str]) {
    remove_where(snapshots, |owner, _| !configured.contains(&owner));
}

/// Removes each snapshot directory for which `doomed(model, path)` holds,
/// `model` being the one it was built for.
fn remove_where(snapshots: &Path, doomed: impl Fn(&str, &Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(snapshots) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let model = owner(name);
        let path = entry.path();
        if doomed(model, &path) {
            tracing::info!(model, path = %path.display(), "removing a snapshot no longer used");
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(model, path = %path.display(), "removing an old snapshot: {e}");
            }
        }
    }
}

/// The model a snapshot directory was built for: `<model>-<hash>`, or a
/// model's one directory of an earlier layout.
fn owner(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((model, h)) if h.len() == HASH_CHARS && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            model
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_reuses_then_rebuilds_on_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("src");
        std::fs::create_dir_all(&source).expect("mkdir");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score");
        for f in ["model.safetensors", "thaw-model.json"] {
            std::fs::copy(repo.join(f), source.join(f)).expect("copy");
        }
        let snaps = dir.path().join("snapshots");
        let first = prepare(&source, None, &snaps, "cs").expect("built");
        assert!(first.built_in.is_some());
        let again = prepare(&source, None, &snaps, "cs").expect("reused");
        assert!(
            again.built_in.is_none(),
            "an unchanged source is not rebuilt"
        );
        std::fs::write(source.join("notes.txt"), "changed").expect("change the source");
        let rebuilt = prepare(&source, None, &snaps, "cs").expect("rebuilt");
        assert!(rebuilt.built_in.is_some(), "a changed source is rebuilt");
        // Beside the first version's, which is left as it was.
        assert_ne!(rebuilt.dir, first.dir);
        thaw_snapshot::open(&first.dir, None).expect("the first version is intact");
        let direct = prepare(&first.dir, None, &snaps, "other").expect("a snapshot as source");
        assert_eq!(direct.dir, first.dir);

        // Pruning keeps the version in use, and other models' snapshots
        // (even a name that starts like this one's).
        let other = prepare(&source, None, &snaps, "cs-2").expect("built");
        std::fs::create_dir_all(snaps.join("cs")).expect("an old-layout directory");
        prune(&snaps, "cs", Some(&rebuilt.dir));
        assert!(!first.dir.exists() && !snaps.join("cs").exists());
        assert!(rebuilt.dir.is_dir() && other.dir.is_dir());
    }

    #[test]
    fn snapshots_of_models_no_longer_configured_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score");
        let snaps = dir.path().join("snapshots");
        let kept = prepare(&source, None, &snaps, "a-b").expect("built");
        let gone = prepare(&source, None, &snaps, "a").expect("built");
        std::fs::create_dir_all(snaps.join("old")).expect("an old-layout directory");
        prune_unconfigured(&snaps, &["a-b"]);
        assert!(kept.dir.is_dir(), "a configured model's snapshot is kept");
        assert!(!gone.dir.exists() && !snaps.join("old").exists());
    }

    /// Flips one byte of `file` near its end (its size unchanged).
    fn corrupt(file: &Path) {
        let mut bytes = std::fs::read(file).expect("read");
        let at = bytes.len() - 8;
        bytes[at] ^= 0x55;
        std::fs::write(file, bytes).expect("write");
    }

    #[test]
    fn a_damaged_snapshot_is_built_again_or_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score");
        let snaps = dir.path().join("snapshots");
        let built = prepare(&source, None, &snaps, "cs").expect("built");
        let weights = built.dir.join("model.safetensors");
        corrupt(&weights);
        // Damaged since an earlier run built it: built again, not served.
        let again = prepare(&source, None, &snaps, "cs").expect("rebuilt");
        assert!(again.built_in.is_some(), "a damaged snapshot is rebuilt");
        thaw_snapshot::verify(&again.dir).expect("the rebuilt snapshot is intact");
        // A damaged snapshot given as the source is refused.
        corrupt(&weights);
        let e = prepare(&built.dir, None, &snaps, "other").expect_err("refused");
        assert!(e.to_string().contains("corrupted"), "{e}");
    }
}
