//! A `thaw serve` under test whose config can be rewritten (reload tests):
//! its config file and state in a directory the test owns, both listeners
//! on port 0, the addresses from the `ready` message, and the admin API's
//! status to wait on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bin, repo_root, Client, Proc};

/// How long a gateway (or a state it is asked for) may take.
pub const START: Duration = Duration::from_secs(60);

/// A running gateway.
pub struct Served {
    /// The process.
    pub proc: Proc,
    /// The public listener.
    pub public: Client,
    /// The admin listener.
    pub admin: Client,
    /// Its config file.
    pub config: PathBuf,
}

/// A config: `[gateway]` on port 0 with its state in `dir`, plus
/// `settings` in `[gateway]`, short scaling timers, and `models`.
pub fn config(dir: &Path, settings: &str, models: &str) -> String {
    format!(
        r#"[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
state_dir = "{state}"
{settings}

[defaults.scaling]
stable_window = "4s"
panic_window = "1s"
scale_down_delay = "1s"
scale_to_zero_after = "2s"

{models}
"#,
        state = dir.join("state").display(),
    )
}

/// The config of [`config`] with credit-score and a second model of the
/// same files, `second`, beside it.
pub fn with_second(dir: &Path) -> String {
    config(
        dir,
        "",
        &format!(
            "{}{}",
            credit_score("credit-score", None, ""),
            credit_score("second", None, "")
        ),
    )
}

/// A `[[models]]` table named `name` on the credit-score model at
/// `source` (the repository's when `None`), with `extra` TOML after it.
pub fn credit_score(name: &str, source: Option<&Path>, extra: &str) -> String {
    let repo = repo_root().join("configs/models/credit-score");
    format!(
        "[[models]]\nname = \"{name}\"\nsource = \"{}\"\n{extra}\n",
        source.unwrap_or(&repo).display()
    )
}

/// A copy of the credit-score model in `dir` (same files, another path: a
/// changed source for a reload).
pub fn copy_credit_score(dir: &Path) -> PathBuf {
    let from = repo_root().join("configs/models/credit-score");
    std::fs::create_dir_all(dir).expect("copy dir");
    for entry in std::fs::read_dir(&from).expect("credit-score") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copied");
    }
    dir.to_path_buf()
}

/// A KServe v2 request for the credit-score model.
pub fn score_request() -> Value {
    serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 10],
                       "data": [60, 0.3, 10, 8, 0, 0.3, 20, 48, 6, 1]}]})
}

/// `thaw serve --config <config> [args]`, with the test's worker binary.
pub fn serve_command(config: &Path, args: &[&str]) -> Command {
    serve_with_worker(config, "thaw-worker", args)
}

/// `thaw serve --config <config> [args]` with `worker` (a binary of this
/// workspace) as its worker binary.
pub fn serve_with_worker(config: &Path, worker: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("thaw"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--worker-bin")
        .arg(bin(worker))
        .args(args)
        .env("RUST_LOG", "warn");
    cmd
}

impl Served {
    /// Writes `text` to `dir/thaw.toml` and serves it.
    pub fn start(dir: &Path, text: &str) -> Served {
        let config = dir.join("thaw.toml");
        std::fs::write(&config, text).expect("config written");
        Served::spawn(serve_command(&config, &[]), config)
    }

    /// Runs `command` (a `thaw serve` of `config`) until its `ready` message.
    pub fn spawn(command: Command, config: PathBuf) -> Served {
        let mut proc = Proc::spawn(command).expect("thaw starts");
        let ready = proc.wait_event("ready", START);
        let address = |key: &str| {
            Client::new(
                ready[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("no {key}: {ready}")),
            )
        };
        Served {
            public: address("address"),
            admin: address("admin"),
            proc,
            config,
        }
    }

    /// Replaces the config the way editors do: a new file renamed over it.
    pub fn rewrite(&self, text: &str) {
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("new config written");
        std::fs::rename(&tmp, &self.config).expect("new config renamed into place");
    }

    /// `GET /admin/status`.
    pub fn status(&self) -> Value {
        let r = self.admin.get("/admin/status");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// The model's entry in the status, if it is served.
    pub fn model(&self, name: &str) -> Option<Value> {
        self.status()["models"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    /// Waits until `pred` holds on the status (the gateway acts on its own
    /// timers and threads: the status API is what to wait on).
    pub fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + START;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} never happened: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `POST /v2/models/{model}/infer` with the credit-score request.
    pub fn score(&self, model: &str) -> crate::Response {
        self.public
            .post_json(&format!("/v2/models/{model}/infer"), &score_request())
    }

    /// `POST /admin/reload`.
    pub fn reload(&self) -> crate::Response {
        self.admin.request("POST", "/admin/reload", None)
    }

    /// `thaw ctl --admin http://<admin> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&format!("http://{}", self.admin.address()), args, None)
    }
}

/// `thaw ctl --admin <admin> args...`, with `token` in `THAW_ADMIN_TOKEN`.
pub fn ctl(admin: &str, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("thaw"));
    cmd.arg("ctl").arg("--admin").arg(admin).args(args);
    cmd.env_remove("THAW_ADMIN").env_remove("THAW_ADMIN_TOKEN");
    if let Some(token) = token {
        cmd.env("THAW_ADMIN_TOKEN", token);
    }
    cmd.output().expect("thaw ctl runs")
}

/// The sockets directory of the gateway whose state is under `state`
/// (`state/run-PID`, one per gateway process).
pub fn sockets_dir(state: &Path) -> PathBuf {
    std::fs::read_dir(state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
        })
        .expect("the sockets directory")
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Waits until none of `pids` is alive.
pub fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + START;
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still alive");
        // Exit of a process that is not ours: nothing to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of a model's instances and template in a status entry.
pub fn pids(model: &Value) -> Vec<u32> {
    let mut pids: Vec<u32> = model["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["pid"].as_u64())
                .map(|p| p as u32)
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = model["template"]["pid"].as_u64() {
        pids.push(p as u32);
    }
    pids
}

/// A request whose body is sent in two parts, so that it is in flight at
/// the gateway (holding a slot on a worker, which waits for the rest)
/// between `start` and `finish`.
pub struct Slow {
    stream: std::net::TcpStream,
    rest: Vec<u8>,
}

impl Slow {
    /// Sends the head and all of `body` but its last byte.
    pub fn start(address: &str, path: &str, body: &[u8]) -> Slow {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(START)).expect("read timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let split = body.len().saturating_sub(1);
        stream.write_all(head.as_bytes()).expect("head sent");
        stream.write_all(&body[..split]).expect("body sent");
        Slow {
            stream,
            rest: body[split..].to_vec(),
        }
    }

    /// Sends the rest and reads the response.
    pub fn finish(mut self) -> std::io::Result<crate::Response> {
        use std::io::{Read, Write};
        self.stream.write_all(&self.rest)?;
        let mut buf = Vec::new();
        self.stream.read_to_end(&mut buf)?;
        crate::http::parse(&buf)
    }
}
