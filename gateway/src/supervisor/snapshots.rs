//! The snapshot tier: a model's source directory is built into a snapshot
//! under the state directory on first use, and rebuilt when the source's
//! content changes; workers are then started from the snapshot. A source
//! that is already a snapshot is used as it is (after its manifest check).

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
/// `snapshots/<model>` when missing or stale. Blocking: run it off the
/// async threads.
pub fn prepare(
    source: &Path,
    kind: Option<ModelKind>,
    snapshots: &Path,
    model: &str,
) -> Result<Prepared, thaw_snapshot::SnapshotError> {
    if thaw_snapshot::is_snapshot(source) {
        thaw_snapshot::open(source, kind)?;
        return Ok(Prepared {
            dir: source.to_path_buf(),
            built_in: None,
        });
    }
    let out = snapshots.join(model);
    let source_hash = thaw_snapshot::hash::hash_tree(source)?;
    let fresh = thaw_snapshot::open(&out, kind)
        .map(|m| m.source.hash == source_hash)
        .unwrap_or(false);
    if fresh {
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
        let direct = prepare(&first.dir, None, &snaps, "other").expect("a snapshot as source");
        assert_eq!(direct.dir, first.dir);
    }
}
