//! The template (zygote) fork server and its control protocol.
//!
//! A template process builds its model once, then calls [`ForkServer::serve`]
//! and waits. Each connection to its control socket carries one request, a
//! line of JSON ([`Request`]); for a fork the template `fork()`s and
//! `serve` returns a second time, in the child, as [`Role::Child`]: the child
//! owns the connection from then on and reports on it (its stdout is moved
//! onto it), while the template closes its copy and waits for the next one.
//! A failed request is answered by the template with one `error` line.
//!
//! fork() copies only the calling thread. A thread pool (rayon, gemm, tokio)
//! that existed in the template would exist in the child as bookkeeping
//! without threads, and the child's first parallel call would wait forever
//! for workers that are not there. So the template refuses to fork unless it
//! has exactly one thread (counted in `/proc/self/task`), and the child
//! starts its pools itself.
//!
//! The template ignores SIGCHLD, so the kernel reaps its children; whoever
//! supervises them learns of their exit from a [`Pidfd`]. Signal handlers
//! and the signal mask are reset in the child; SIGPIPE stays ignored, as
//! every Rust program expects.
//!
//! This module holds the `unsafe` of fork, signal dispositions and the pidfd
//! system calls, so that the rest of thaw needs none.
#![allow(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

/// How long the template waits for a request line on a new connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to a template, one JSON line per connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Fork a worker that serves on the unix socket `socket`.
    Fork {
        /// The supervisor's id for the new instance.
        id: u64,
        /// Where the worker listens.
        socket: PathBuf,
    },
    /// Exit once this connection is answered.
    Exit,
}

/// What [`ForkServer::serve`] returns, once in each process that leaves it.
#[derive(Debug)]
pub enum Role {
    /// The template should exit.
    Exit(ExitReason),
    /// This process is a new child; it is to serve `request`.
    Child(Child),
}

/// Why a template stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The lifeline closed: the supervisor is gone.
    LifelineClosed,
    /// An `exit` request.
    Requested,
}

/// The child's side of a fork.
#[derive(Debug)]
pub struct Child {
    /// The supervisor's id for this instance.
    pub id: u64,
    /// Where to listen.
    pub socket: PathBuf,
    /// When the template received the request (in the template's clock,
    /// which is the child's: both are `CLOCK_MONOTONIC`).
    pub requested_at: Instant,
    /// When the template called fork().
    pub forked_at: Instant,
    conn: UnixStream,
}

impl Child {
    /// Moves stdout onto the control connection, so that everything the
    /// child announces reaches the supervisor that asked for it.
    pub fn report_on_control(&self) -> io::Result<()> {
        io::stdout().flush()?;
        nix::unistd::dup2_stdout(self.conn.as_fd()).map_err(io::Error::from)
    }
}

/// A template's control socket.
#[derive(Debug)]
pub struct ForkServer {
    listener: UnixListener,
    forks: u64,
}

impl ForkServer {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn bind(path: &Path) -> io::Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        Ok(ForkServer {
            listener: UnixListener::bind(path)?,
            forks: 0,
        })
    }

    /// Serves requests until the template should exit, or until a fork,
    /// where it returns in the child. `lifeline` is a pipe whose other end
    /// the supervisor holds: when it reads end-of-file the supervisor has
    /// gone and the template exits.
    pub fn serve(mut self, lifeline: Option<BorrowedFd<'_>>) -> io::Result<Role> {
        loop {
            let mut fds = vec![PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            if let Some(fd) = lifeline {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let (accept, closed) = (ready(&fds[0]), fds.get(1).is_some_and(ready));
            drop(fds);
            if closed {
                if let Some(fd) = lifeline {
                    if lifeline_closed(fd) {
                        return Ok(Role::Exit(ExitReason::LifelineClosed));
                    }
                }
            }
            if !accept {
                continue;
            }
            let (conn, _) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let requested_at = Instant::now();
            let request = match read_request(&conn) {
                Ok(r) => r,
                Err(e) => {
                    answer_error(&conn, &format!("bad request: {e}"));
                    continue;
                }
            };
            let (id, socket) = match request {
                Request::Exit => {
                    let _ = writeln!(&conn, "{}", serde_json::json!({"event": "exiting"}));
                    return Ok(Role::Exit(ExitReason::Requested));
                }
                Request::Fork { id, socket } => (id, socket),
            };
            match thread_count() {
                Ok(1) => {}
                Ok(n) => {
                    answer_error(
                        &conn,
                        &format!("the template has {n} threads: a forked child would inherit thread pools without their threads, so it refuses to fork"),
                    );
                    continue;
                }
                Err(e) => {
                    answer_error(&conn, &format!("cannot count the template's threads: {e}"));
                    continue;
                }
            }
            if self.forks == 0 {
                ignore_children()?;
            }
            // Whatever is buffered would otherwise be written twice.
            let _ = io::stdout().flush();
            let _ = io::stderr().flush();
            let forked_at = Instant::now();
            // SAFETY: the template has exactly one thread (checked just
            // above), so the child's copy of every lock and allocator state
            // is consistent and it may run any code, not only
            // async-signal-safe functions.
            match unsafe { fork() } {
                Ok(ForkResult::Parent { child }) => {
                    self.forks += 1;
                    // The requester learns the child's pid at once, so a
                    // child that never gets ready can be stopped. One
                    // write, before the child's own lines can come.
                    let line = serde_json::json!({"event": "forked", "pid": child.as_raw()});
                    let _ = (&conn).write_all(format!("{line}\n").as_bytes());
                    drop(conn);
                }
                Ok(ForkResult::Child) => {
                    drop(self.listener);
                    reset_signals()?;
                    return Ok(Role::Child(Child {
                        id,
                        socket,
                        requested_at,
                        forked_at,
                        conn,
                    }));
                }
                Err(e) => answer_error(&conn, &format!("fork failed: {e}")),
            }
        }
    }
}

fn read_request(conn: &UnixStream) -> io::Result<Request> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    conn.set_read_timeout(None)?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn answer_error(mut conn: &UnixStream, message: &str) {
    let line = serde_json::json!({"event": "error", "message": message});
    // The requester may have gone; nothing else to tell.
    let _ = writeln!(conn, "{line}");
}

/// Whether the lifeline reads end-of-file (or fails): the supervisor is gone.
fn lifeline_closed(fd: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 64];
    let mut file = std::fs::File::from(match fd.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return true,
    });
    !matches!(file.read(&mut buf), Ok(n) if n > 0)
}

/// The number of threads of this process.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

fn set_handler(signal: Signal, handler: SigHandler) -> io::Result<()> {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: installs SIG_IGN or SIG_DFL, not a handler function.
    unsafe { sigaction(signal, &action) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Let the kernel reap the template's children.
fn ignore_children() -> io::Result<()> {
    set_handler(Signal::SIGCHLD, SigHandler::SigIgn)
}

/// Every signal back to its default disposition (SIGPIPE stays ignored, as
/// Rust's runtime set it), and nothing blocked.
fn reset_signals() -> io::Result<()> {
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGPIPE) {
            continue;
        }
        set_handler(signal, SigHandler::SigDfl)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(io::Error::from)
}

/// A process file descriptor: readable once the process has exited, and a
/// target for signals that can never hit a recycled pid.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens the process `pid`.
    pub fn open(pid: u32) -> io::Result<Self> {
        let raw = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Pidfd { fd, pid })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the process (an error once it has exited).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid fd, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Resolves once the process has exited (on the tokio runtime's
    /// reactor: no thread waits, nothing polls).
    pub async fn exited(self: std::sync::Arc<Self>) -> io::Result<()> {
        use tokio::io::unix::AsyncFd;
        use tokio::io::Interest;
        // SAFETY: the AsyncFd owns an Arc of this Pidfd, whose OwnedFd stays
        // open, and is the same fd, for as long as any Arc of it lives, so
        // for the AsyncFd's whole lifetime.
        let watched = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let _ready = watched.readable().await?;
        Ok(())
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Reaps the process if it has exited and this process is its parent
    /// (a subreaper may have adopted it); `None` otherwise.
    pub fn try_reap(&self) -> Option<nix::sys::wait::WaitStatus> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        waitid(
            Id::PIDFd(self.fd.as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        )
        .ok()
    }
}

impl AsRawFd for Pidfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Makes this process the reaper of its orphaned descendants: a worker whose
/// template died is adopted here, not by init, so it stays supervised.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let fork = Request::Fork {
            id: 7,
            socket: "/tmp/x.sock".into(),
        };
        let line = serde_json::to_string(&fork).expect("serializes");
        assert_eq!(line, r#"{"op":"fork","id":7,"socket":"/tmp/x.sock"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(&line).expect("parses"),
            fork
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"exit"}"#).expect("parses"),
            Request::Exit
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"launch"}"#).is_err());
    }

    #[test]
    #[allow(clippy::zombie_processes)]
    fn a_pidfd_signals_and_sees_the_exit_of_a_child() {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep starts");
        let pidfd = Pidfd::open(child.id()).expect("pidfd_open");
        assert!(!pidfd.has_exited());
        pidfd.signal(Signal::SIGKILL).expect("signal");
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(10_000u16)).expect("poll");
        assert_eq!(n, 1, "the pidfd did not become readable on exit");
        assert!(pidfd.has_exited());
        let status = pidfd.try_reap().expect("reaped through the pidfd");
        assert!(matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, Signal::SIGKILL, _)
        ));
        // Reaped through the pidfd already: std's handle has nothing to wait for.
        drop(child);
    }

    #[test]
    fn a_template_with_threads_refuses_to_fork() {
        // A test binary runs its tests on threads: this process is exactly
        // the kind of template that must not fork.
        let dir = std::env::temp_dir().join(format!("thaw-zygote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("control.sock");
        let server = ForkServer::bind(&path).expect("binds");
        let serving =
            std::thread::spawn(move || server.serve(None).map(|role| format!("{role:?}")));
        let ask = |request: &str| {
            let mut conn = UnixStream::connect(&path).expect("connects");
            writeln!(conn, "{request}").expect("sends");
            let mut line = String::new();
            BufReader::new(&conn).read_line(&mut line).expect("answer");
            serde_json::from_str::<serde_json::Value>(&line).expect("json")
        };
        let answer = ask(r#"{"op":"fork","id":1,"socket":"/nonexistent/w.sock"}"#);
        assert_eq!(answer["event"], "error");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("threads"), "{message}");
        let answer = ask(r#"{"op":"start"}"#);
        assert_eq!(answer["event"], "error", "{answer}");
        assert_eq!(ask(r#"{"op":"exit"}"#)["event"], "exiting");
        let role = serving.join().expect("no panic").expect("serve");
        assert_eq!(role, "Exit(Requested)");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
