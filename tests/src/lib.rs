//! thaw-tests: the harness for thaw's whole-system tests. It starts the real
//! binaries, waits for their messages (readiness is a message, never a
//! sleep) and talks plain HTTP/1.1 to them over TCP or a unix socket.

pub mod http;
pub mod process;
pub mod served;

use std::path::PathBuf;

pub use http::{Client, Response};
pub use process::{Message, Proc};

/// Where the fetch step keeps registry models (`$THAW_MODELS` or
/// `~/.cache/thaw/models`).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("THAW_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/thaw/models")
        }
    }
}

/// A registry model's directory; panics with the command that fetches it
/// when it is missing, so a test never passes or skips silently.
pub fn registry_model(folder: &str) -> PathBuf {
    let dir = models_dir().join(folder);
    assert!(
        dir.is_dir(),
        "model {folder} is missing from {}: run scripts/fetch-models.sh (the test command does)",
        dir.display()
    );
    dir
}

/// The repository's root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A binary of this workspace, from the target directory the tests were
/// built into (`scripts/test` builds every binary first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; scripts/test does)",
        path.display()
    );
    path
}
