//! Content hashes: sha256 of a file, and of a directory tree (names and
//! contents), to tell when a snapshot's source changed.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::SnapshotError;

/// Size and sha256 (hex) of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), SnapshotError> {
    let mut file = std::fs::File::open(path).map_err(|e| SnapshotError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| SnapshotError::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex(&hasher.finalize())))
}

/// sha256 over every file's relative path, size and content hash, sorted.
pub fn hash_tree(dir: &Path) -> Result<String, SnapshotError> {
    let mut hasher = Sha256::new();
    for rel in crate::build::list_files(dir)? {
        let (size, sha) = hash_file(&dir.join(&rel))?;
        hasher.update(format!("{rel}\0{size}\0{sha}\n").as_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
