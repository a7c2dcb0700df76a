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
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
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
/// file is written or replaced. A config reached through symlinks is
/// watched where it really lies too, and a change of any link in its own
/// directory counts: a Kubernetes ConfigMap swaps a `..data` link to a new
/// directory, and the file's own entry never changes. A reload of the same
/// text changes nothing. inotify is read on a thread of its own (blocking
/// reads: tokio's readiness API for a raw descriptor needs `unsafe`, which
/// this crate forbids); the debounce and the reload run on the current
/// runtime.
pub fn watch_file(reloader: Arc<Reloader>) -> std::io::Result<()> {
    let path = reloader.path().to_path_buf();
    let (dir, name) = split(&path)?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    let home = inotify.add_watch(&dir, WATCHED)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("thaw-config-watch".into())
        .spawn(move || {
            let mut watch = Watch {
                inotify,
                path,
                dir,
                home,
                name,
                target: None,
            };
            if let Err(e) = watch.run(&tx) {
                tracing::error!(dir = %watch.dir.display(), "watching the config file stopped: {e}");
            }
        })?;
    tokio::spawn(debounce(rx, reloader));
    Ok(())
}

/// The events that can change a file's text or what a path leads to.
const WATCHED: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The watches on a config file: its directory, and where its symlinks
/// lead, followed as they change.
struct Watch {
    inotify: Inotify,
    path: PathBuf,
    /// The directory the path names (`home` watches it).
    dir: PathBuf,
    home: WatchDescriptor,
    name: OsString,
    /// The file the path resolves to when that is elsewhere: the watch on
    /// its directory, and its name there.
    target: Option<(WatchDescriptor, OsString)>,
}

impl Watch {
    /// Sends a tick for each batch of events that may change the config;
    /// returns when the watch ends (its directory went away) or the
    /// reloads stopped.
    fn run(&mut self, tx: &mpsc::UnboundedSender<()>) -> std::io::Result<()> {
        loop {
            self.follow();
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if events.iter().any(|e| self.touches(e.wd, e.name.as_ref())) && tx.send(()).is_err() {
                return Ok(());
            }
            if events
                .iter()
                .any(|e| e.wd == self.home && e.mask.contains(AddWatchFlags::IN_IGNORED))
            {
                return Err(std::io::Error::other("the directory went away"));
            }
        }
    }

    /// Whether an event in `wd` on `name` may change the config: the
    /// file's own entry; any entry of its directory while the path is a
    /// symlink (a link on the way may have moved); the entry it resolves
    /// to.
    fn touches(&self, wd: WatchDescriptor, name: Option<&OsString>) -> bool {
        if wd == self.home {
            return name == Some(&self.name) || self.path.is_symlink();
        }
        matches!(&self.target, Some((target, file)) if wd == *target && name == Some(file))
    }

    /// Watches the directory the path resolves to now, when that is not
    /// its own (a watch on a directory already watched is the same watch).
    fn follow(&mut self) {
        let Ok(real) = std::fs::canonicalize(&self.path) else {
            return;
        };
        let (Some(real_dir), Some(real_name)) = (real.parent(), real.file_name()) else {
            return;
        };
        if std::fs::canonicalize(&self.dir).is_ok_and(|d| d == real_dir) {
            self.target = None;
            return;
        }
        match self.inotify.add_watch(real_dir, WATCHED) {
            Ok(wd) => self.target = Some((wd, real_name.to_os_string())),
            Err(e) => {
                tracing::warn!(dir = %real_dir.display(), "cannot watch the config's target: {e}")
            }
        }
    }
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
