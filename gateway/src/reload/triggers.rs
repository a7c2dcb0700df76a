//! Two of the reload's triggers (the third is the admin API): SIGHUP, and
//! a change of the config file. The file is watched through its directory
//! with inotify, so that an editor that writes a new file and renames it
//! over the old one is seen like one that writes in place; events are
//! debounced, so that one save is one reload.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Reloader, Trigger};

/// Quiet time after the file's last event before it is reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Installs the SIGHUP handler now (its default action would end the
/// process) and reloads on each one, on the current runtime.
pub fn watch_sighup(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            reloader.reload(Trigger::Signal).await;
        }
    });
    Ok(())
}

/// Watches the config file's directory and reloads (debounced) when the
/// file is written or replaced. inotify is read on a thread of its own
/// (blocking reads: tokio's readiness API for a raw descriptor needs
/// `unsafe`, which this crate forbids); the debounce and the reload run on
/// the current runtime.
pub fn watch_file(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let path = reloader.path().to_path_buf();
    let (dir, name) = split(&path)?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        &dir,
        AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
    )?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("thaw-config-watch".into())
        .spawn(move || {
            if let Err(e) = read_events(&inotify, &name, &tx) {
                tracing::error!(dir = %dir.display(), "watching the config file stopped: {e}");
            }
        })?;
    tokio::spawn(debounce(rx, reloader));
    Ok(())
}

/// The directory to watch and the file's name in it.
fn split(path: &Path) -> std::io::Result<(PathBuf, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// Sends a tick for each batch of events that touches the file; returns
/// when the watch ends (the directory went away) or the reloads stopped.
fn read_events(
    inotify: &Inotify,
    name: &OsString,
    tx: &mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    loop {
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if events.iter().any(|e| e.name.as_ref() == Some(name)) && tx.send(()).is_err() {
            return Ok(());
        }
        if events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
        {
            return Err(std::io::Error::other("the directory went away"));
        }
    }
}

/// Reloads once the file has been quiet for [`DEBOUNCE`] after a change.
async fn debounce(mut rx: mpsc::UnboundedReceiver<()>, reloader: Arc<Reloader>) {
    let mut due: Option<Instant> = None;
    loop {
        let quiet = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = rx.recv() => match event {
                Some(()) => due = Some(Instant::now() + DEBOUNCE),
                None => return,
            },
            () = quiet => {
                due = None;
                tracing::info!("the config file changed: reloading");
                reloader.reload(Trigger::File).await;
            }
        }
    }
}
