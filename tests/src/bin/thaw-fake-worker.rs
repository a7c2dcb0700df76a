//! A stand-in for `thaw-worker` in whole-system tests of the gateway's
//! proxy. It starts the way a worker does (`--listen unix:PATH`, a `ready`
//! line on stdout, HTTP/1.1 on the socket, liveness answered) and then fails
//! on purpose, as `THAW_FAKE_WORKER` says, so that a test reproduces a
//! worker's failure exactly instead of racing one.
//!
//! Each connection's first model request is answered 200 and the connection
//! kept alive; what comes next on it depends on the mode:
//!
//! - `stale`: the worker stops reading the connection (a shutdown of its
//!   read side), so the next request cannot be written to it: a pooled
//!   connection to a worker that has gone.
//! - `reset`: the worker reads the next request but the last byte of its
//!   body and closes the connection with that byte unread (died while
//!   reading it).
//! - `drop`: the worker reads the next request whole and closes the
//!   connection without answering (died while serving it).
//!
//! In mode `silent`, the worker reads each model request whole and never
//! answers it (hung on that request while its liveness is answered); in
//! mode `stall`, it sends a streamed answer's head and first event, then
//! nothing more.
//!
//! In mode `deaf`, the worker's socket goes as it answers its first model
//! request (with `connection: close`), while the process lives on (a
//! worker that lost its socket, or died an instant ago); and only the
//! first worker in the mode's log directory starts: later ones fail to.
//!
//! Every model request read whole is logged as a line to `THAW_FAKE_LOG`.
//! Asked to start as a template, it refuses, so the gateway execs it;
//! with `THAW_FAKE_TEMPLATE=refuse`, it starts as a template that answers
//! every fork with an error (logged as `fork refused`); with
//! `THAW_FAKE_TEMPLATE=ready-first`, one whose "child" (a thread of its own
//! serving the requested socket) says `ready` before the template says
//! `forked`, as a quick child can (logged as `forked ready first`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

#[derive(Clone, Copy)]
enum Mode {
    Stale,
    Reset,
    Drop,
    Silent,
    Stall,
    Deaf,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    die_with_the_gateway(args.iter().any(|a| a == "--lifeline"));
    if let Some(i) = args.iter().position(|a| a == "--template") {
        let ready_first = match std::env::var("THAW_FAKE_TEMPLATE").as_deref() {
            Ok("refuse") => false,
            Ok("ready-first") => true,
            _ => {
                println!(r#"{{"event":"error","message":"the fake worker has no template mode"}}"#);
                std::process::exit(1);
            }
        };
        let control = args[i + 1]
            .strip_prefix("unix:")
            .expect("--template unix:PATH");
        serve_forks(control, ready_first);
    }
    let socket = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.strip_prefix("unix:"))
        .expect("--listen unix:PATH");
    let mode = match std::env::var("THAW_FAKE_WORKER").as_deref() {
        Ok("stale") => Mode::Stale,
        Ok("reset") => Mode::Reset,
        Ok("drop") => Mode::Drop,
        Ok("silent") => Mode::Silent,
        Ok("stall") => Mode::Stall,
        Ok("deaf") => Mode::Deaf,
        other => panic!(
            "THAW_FAKE_WORKER must be stale, reset, drop, silent, stall or deaf, not {other:?}"
        ),
    };
    if let Mode::Deaf = mode {
        let path = std::env::var_os("THAW_FAKE_LOG").expect("THAW_FAKE_LOG");
        let mut first = std::path::PathBuf::from(path);
        first.set_extension("started");
        if std::fs::File::create_new(&first).is_err() {
            println!(r#"{{"event":"error","message":"a deaf fake worker starts only once"}}"#);
            std::process::exit(1);
        }
    }
    let listener = UnixListener::bind(socket).expect("bind the socket");
    println!(r#"{{"event":"ready","load_ms":0}}"#);
    std::io::stdout().flush().expect("stdout");
    let socket = std::path::PathBuf::from(socket);
    for stream in listener.incoming().flatten() {
        let socket = socket.clone();
        std::thread::spawn(move || serve(stream, mode, &socket));
    }
}

/// Ends this process with the gateway that started it, as a real worker
/// does, so that no test leaves fake workers behind: a parent-death signal
/// when the gateway says its pid (`THAW_PARENT_PID`), and for a template
/// (`--lifeline`), the end of the gateway's lifeline on stdin.
fn die_with_the_gateway(lifeline: bool) {
    if let Some(parent) = std::env::var("THAW_PARENT_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
            .expect("a parent-death signal");
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(1);
        }
    }
    if lifeline {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
}

/// A fake template: ready, then each fork request on its control socket
/// answered with an error, or (`ready_first`) with a worker served by a
/// thread of this process, whose `ready` comes before `forked`.
fn serve_forks(control: &str, ready_first: bool) -> ! {
    let listener = UnixListener::bind(control).expect("bind the control socket");
    println!(r#"{{"event":"template_ready","open_ms":0,"build_ms":0,"warmup_ms":0}}"#);
    std::io::stdout().flush().expect("stdout");
    for mut stream in listener.incoming().flatten() {
        let mut request = String::new();
        let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        if !reader.read_line(&mut request).is_ok_and(|n| n > 0) {
            continue;
        }
        if !ready_first {
            log("fork refused");
            let _ = writeln!(
                stream,
                r#"{{"event":"error","message":"the fake template refuses to fork"}}"#
            );
            continue;
        }
        let request: serde_json::Value = serde_json::from_str(&request).expect("a fork request");
        let socket = request["socket"]
            .as_str()
            .expect("the worker's socket")
            .to_string();
        let worker = UnixListener::bind(&socket).expect("bind the worker's socket");
        let path = std::path::PathBuf::from(socket);
        std::thread::spawn(move || {
            for conn in worker.incoming().flatten() {
                let path = path.clone();
                std::thread::spawn(move || serve(conn, Mode::Stale, &path));
            }
        });
        log("forked ready first");
        let pid = std::process::id();
        let _ = write!(
            stream,
            "{{\"event\":\"ready\",\"pid\":{pid},\"load_ms\":0}}\n{{\"event\":\"forked\",\"pid\":{pid}}}\n"
        );
    }
    unreachable!("a listener's incoming connections never end")
}

/// Serves one connection to the worker at `socket`.
fn serve(stream: UnixStream, mode: Mode, socket: &std::path::Path) {
    // Unbuffered (a byte at a time): what the fake does not read stays in
    // the socket, where the gateway's side of it can tell.
    let mut reader = BufReader::with_capacity(1, stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    // Liveness probes come first on their own connections.
    let mut answered = false;
    loop {
        if answered {
            match mode {
                // Held open: the gateway sees no end of the connection.
                Mode::Stale | Mode::Silent | Mode::Stall | Mode::Deaf => loop {
                    std::thread::park();
                },
                Mode::Reset => {
                    let _ = read_request(&mut reader, 1);
                    return;
                }
                Mode::Drop => {
                    if read_request(&mut reader, 0).is_some() {
                        log("dropped");
                    }
                    return;
                }
            }
        }
        let Some(request) = read_request(&mut reader, 0) else {
            return;
        };
        let body = if request.live {
            r#"{"live":true}"#
        } else if let Mode::Silent = mode {
            log("silent");
            answered = true;
            continue;
        } else if let Mode::Stall = mode {
            log("stalled");
            answered = true;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let event = "data: {\"first\":true}\n\n";
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = writer.write_all(format!("{head}{chunk}").as_bytes());
            continue;
        } else {
            log("answered");
            answered = true;
            if let Mode::Stale = mode {
                // Before the answer: once the gateway has read it, the
                // connection it pools takes no more.
                let _ = writer.shutdown(Shutdown::Read);
            }
            if let Mode::Deaf = mode {
                // Before the answer too: the gateway's next connection
                // finds no listener.
                let _ = std::fs::remove_file(socket);
            }
            r#"{"model_name":"fake","outputs":[]}"#
        };
        let close = if request.close || (matches!(mode, Mode::Deaf) && answered) {
            "connection: close\r\n"
        } else {
            ""
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{close}\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || !close.is_empty() {
            return;
        }
    }
}

/// What the fake needs of a request it read whole.
struct Request {
    /// A liveness probe.
    live: bool,
    /// The client asked to close the connection after it.
    close: bool,
}

/// Reads one request, head and `content-length` body but its last `unread`
/// bytes; `None` at the end of the connection.
fn read_request(reader: &mut BufReader<UnixStream>, unread: usize) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let live = line.starts_with("GET /v2/health/live ");
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "transfer-encoding" => panic!("the fake worker reads content-length bodies only"),
            _ => {}
        }
    }
    let mut body = vec![0u8; length.checked_sub(unread)?];
    reader.read_exact(&mut body).ok()?;
    Some(Request { live, close })
}

/// Appends `what` to the log the test reads.
fn log(what: &str) {
    let path = std::env::var_os("THAW_FAKE_LOG").expect("THAW_FAKE_LOG");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    writeln!(file, "{what}").expect("write the log");
}
