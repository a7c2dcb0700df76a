//! `thaw ctl`: the operator's client of the admin API. `status` prints a
//! table (or the JSON with `--json`), `reload` applies the config file,
//! `scale` and `drain` override a model's scaling until the next reload.
//!
//! Exit codes, for scripts: 0 done; 1 the gateway refused or failed (a bad
//! config, an unknown model, a wrong token); 2 a usage error, or the admin
//! API could not be reached or answered something that is not its API.

mod http;
mod table;

use serde_json::{json, Value};

/// The operation succeeded.
pub const EXIT_OK: i32 = 0;
/// The gateway refused the operation, or it failed there.
pub const EXIT_REFUSED: i32 = 1;
/// Usage error, or the admin API is unreachable.
pub const EXIT_UNREACHABLE: i32 = 2;

/// What to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `GET /admin/status`.
    Status {
        /// Print the JSON as it came.
        json: bool,
    },
    /// `POST /admin/reload`.
    Reload,
    /// `POST /admin/models/{model}/scale`.
    Scale {
        /// The model.
        model: String,
        /// The floor.
        min: u32,
        /// The cap (the config's when absent).
        max: Option<u32>,
    },
    /// `POST /admin/models/{model}/drain`.
    Drain {
        /// The model.
        model: String,
    },
}

/// Runs `command` against the admin API at `admin` (`http://HOST:PORT`),
/// printing the result; returns the exit code.
pub fn run(admin: &str, token: Option<&str>, command: &Command) -> i32 {
    if let Command::Scale { model, .. } | Command::Drain { model } = command {
        if !crate::config::valid_model_name(model) {
            eprintln!(
                "thaw ctl: {model:?} is not a model name (letters, digits, '-', '_' and '.')"
            );
            return EXIT_UNREACHABLE;
        }
    }
    let (method, path, body) = match command {
        Command::Status { .. } => ("GET", "/admin/status".to_string(), None),
        Command::Reload => ("POST", "/admin/reload".to_string(), None),
        Command::Scale { model, min, max } => (
            "POST",
            format!("/admin/models/{model}/scale"),
            Some(json!({"min_instances": min, "max_instances": max})),
        ),
        Command::Drain { model } => ("POST", format!("/admin/models/{model}/drain"), None),
    };
    let reply = match http::request(admin, token, method, &path, body.as_ref()) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("thaw ctl: cannot reach the admin API at {admin}: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    if !reply.admin {
        eprintln!(
            "thaw ctl: {admin} answered {} but is not thaw's admin API (the public listener?): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        return EXIT_UNREACHABLE;
    }
    let Ok(value) = serde_json::from_slice::<Value>(&reply.body) else {
        eprintln!(
            "thaw ctl: {admin} answered {} with a body that is not JSON: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        return EXIT_UNREACHABLE;
    };
    if !(200..300).contains(&reply.status) {
        let why = value["error"].as_str().unwrap_or("(no reason given)");
        let hint = if reply.status == 401 {
            format!(" (set {})", crate::serve::ADMIN_TOKEN_ENV)
        } else {
            String::new()
        };
        eprintln!("thaw ctl: refused ({}): {why}{hint}", reply.status);
        return EXIT_REFUSED;
    }
    match command {
        Command::Status { json: true } => println!("{value:#}"),
        Command::Status { json: false } => print!("{}", table::status(&value)),
        Command::Reload => println!("{}", table::reload(&value)),
        Command::Scale { model, .. } => {
            let o = &value["override"];
            println!(
                "{model}: min_instances {}, max_instances {} (an override until the next reload)",
                o["min_instances"], o["max_instances"]
            );
        }
        Command::Drain { model } => println!(
            "{model}: draining: new requests get 503; in-flight and queued ones finish, then \
             its workers stop (held at zero until a reload or `thaw ctl scale`)"
        ),
    }
    EXIT_OK
}
