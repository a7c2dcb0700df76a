//! Child processes under test: started with piped stdout and stderr, read by
//! background threads into channels, so a test waits for a message with a
//! timeout instead of sleeping. Killed when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A JSON message a thaw process printed on stdout.
pub type Message = serde_json::Value;

/// A running child.
pub struct Proc {
    child: Child,
    stdout: Receiver<Message>,
    stderr: Receiver<String>,
    seen_stderr: Vec<String>,
}

impl Proc {
    /// Starts `command` with piped output.
    pub fn spawn(mut command: Command) -> std::io::Result<Proc> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = lines(child.stdout.take(), |line| serde_json::from_str(&line).ok());
        let stderr = lines(child.stderr.take(), Some);
        Ok(Proc {
            child,
            stdout,
            stderr,
            seen_stderr: Vec::new(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout message whose `event` is `event`. Panics with the
    /// child's stderr if it does not come within `timeout`.
    pub fn wait_event(&mut self, event: &str, timeout: Duration) -> Message {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(m) if m["event"] == event => return m,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no {event:?} message within {timeout:?} (exit status {status:?}); stderr:\n{}",
                        self.drain_stderr().join("\n")
                    );
                }
            }
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.seen_stderr.push(line),
                Err(_) => panic!(
                    "no stderr line with {needle:?} within {timeout:?}; stderr:\n{}",
                    self.drain_stderr().join("\n")
                ),
            }
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn drain_stderr(&mut self) -> Vec<String> {
        self.seen_stderr.extend(self.stderr.try_iter());
        self.seen_stderr.clone()
    }

    /// Sends `signal` (e.g. `"TERM"`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the child to exit, killing it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the child did not exit within {timeout:?}");
            }
            // Polling a child's exit status: there is no message to wait on.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines<R, T, F>(source: Option<R>, parse: F) -> Receiver<T>
where
    R: Read + Send + 'static,
    T: Send + 'static,
    F: Fn(String) -> Option<T> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    if let Some(source) = source {
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                if let Some(item) = parse(line) {
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
        });
    }
    rx
}
