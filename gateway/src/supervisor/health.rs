//! Health checks of a running worker: `GET /v2/health/live` over its unix
//! socket with a timeout. A worker that stops answering (hung, not dead) is
//! killed by the pool and replaced like a crashed one.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Whether the worker on `socket` answers its liveness probe with 200
/// within `timeout`.
pub async fn live(socket: &Path, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe(socket))
        .await
        .unwrap_or(false)
}

async fn probe(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket).await else {
        return false;
    };
    let request = b"GET /v2/health/live HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    match stream.read_exact(&mut head).await {
        Ok(_) => head.starts_with(b"HTTP/1.1 200"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_not_live() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(!live(&dir.path().join("none.sock"), Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn a_silent_listener_times_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        assert!(!live(&path, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn a_200_is_live() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ok.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        assert!(live(&path, Duration::from_secs(5)).await);
    }
}
