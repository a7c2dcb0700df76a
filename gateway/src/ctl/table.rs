//! `thaw ctl`'s human output: `/admin/status` as a table (a row per model,
//! a line per instance and template under it, a line per GPU) and a
//! reload's report as one line. Pure functions of the admin API's JSON.

use std::fmt::Write;

use serde_json::Value;

/// A JSON value as a cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Lays `rows` out in columns two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn override_cell(o: &Value) -> String {
    match o["kind"].as_str() {
        Some("scale") => format!("scale {}/{}", o["min_instances"], o["max_instances"]),
        Some(kind) => kind.to_string(),
        None => "-".into(),
    }
}

/// The status table.
pub fn status(s: &Value) -> String {
    let mut out = String::new();
    let c = &s["config"];
    let hash = cell(&c["hash"]);
    let short = hash.get(..19).unwrap_or(&hash);
    let _ = writeln!(
        out,
        "config {}  version {}  {short}",
        cell(&c["path"]),
        cell(&c["version"])
    );
    let r = &s["last_reload"];
    if !r.is_null() {
        let _ = write!(
            out,
            "last reload: {} ({})",
            cell(&r["result"]),
            cell(&r["trigger"])
        );
        if let Some(e) = r["error"].as_str() {
            let _ = write!(out, ": {e}");
        }
        out.push('\n');
    }
    out.push('\n');
    let mut rows = vec![[
        "MODEL",
        "TIER",
        "READY",
        "STARTING",
        "DESIRED",
        "MIN/MAX",
        "QUEUE",
        "IN-FLIGHT",
        "COLD-STARTS",
        "OVERRIDE",
    ]
    .map(String::from)
    .to_vec()];
    let empty = Vec::new();
    let models = s["models"].as_array().unwrap_or(&empty);
    let mut instances = vec![[
        "MODEL",
        "INSTANCE",
        "STATE",
        "STARTED-FROM",
        "PID",
        "IN-FLIGHT",
        "STARTUP",
        "AGE",
        "GPU",
    ]
    .map(String::from)
    .to_vec()];
    let ms = |v: &Value| format!("{:.0} ms", v.as_f64().unwrap_or(0.0));
    let age = |v: &Value| format!("{:.0} s", v.as_f64().unwrap_or(0.0));
    for m in models {
        rows.push(vec![
            cell(&m["name"]),
            cell(&m["tier"]),
            cell(&m["ready_instances"]),
            cell(&m["starting_instances"]),
            cell(&m["desired_instances"]),
            format!("{}/{}", m["min_instances"], m["max_instances"]),
            cell(&m["queue_depth"]),
            cell(&m["in_flight"]),
            cell(&m["cold_starts"]),
            override_cell(&m["override"]),
        ]);
        for i in m["instances"].as_array().unwrap_or(&empty) {
            instances.push(vec![
                cell(&m["name"]),
                cell(&i["id"]),
                cell(&i["state"]),
                cell(&i["started_from"]),
                cell(&i["pid"]),
                cell(&i["in_flight"]),
                ms(&i["startup_ms"]),
                age(&i["age_s"]),
                cell(&i["gpu"]),
            ]);
        }
        let t = &m["template"];
        if !t.is_null() {
            instances.push(vec![
                cell(&m["name"]),
                "template".into(),
                "ready".into(),
                "-".into(),
                cell(&t["pid"]),
                "-".into(),
                ms(&t["startup_ms"]),
                age(&t["age_s"]),
                "-".into(),
            ]);
        }
    }
    out.push_str(&columns(&rows));
    if instances.len() > 1 {
        out.push('\n');
        out.push_str(&columns(&instances));
    }
    out.push_str(&gpus(&s["gpus"]));
    out
}

/// The GPUs with the memory promised on each; empty before the inventory
/// was read (no GPU model yet).
fn gpus(g: &Value) -> String {
    let Some(list) = g["gpus"].as_array() else {
        return String::new();
    };
    let gib = |v: &Value| {
        format!(
            "{:.1} GiB",
            v.as_f64().unwrap_or(0.0) / f64::from(1u32 << 30)
        )
    };
    let mut rows = vec![["GPU", "NAME", "UUID", "TOTAL", "FREE", "PROMISED"]
        .map(String::from)
        .to_vec()];
    for gpu in list {
        rows.push(vec![
            format!("cuda:{}", cell(&gpu["index"])),
            cell(&gpu["name"]),
            cell(&gpu["uuid"]),
            gib(&gpu["total_bytes"]),
            gib(&gpu["free_bytes"]),
            gib(&gpu["promised_bytes"]),
        ]);
    }
    let fake = if g["fake"] == true {
        " (fake inventory)"
    } else {
        ""
    };
    let mut out = format!("\ngpus{fake}: placement {}", cell(&g["policy"]));
    if let Some(reason) = g["reason"].as_str() {
        let _ = write!(out, "; {reason}");
    }
    out.push('\n');
    if list.is_empty() {
        return out;
    }
    out.push_str(&columns(&rows));
    out
}

/// A reload's report in one line.
pub fn reload(r: &Value) -> String {
    if r["result"] == "unchanged" {
        return format!("unchanged: config version {}", cell(&r["version"]));
    }
    let c = &r["changes"];
    let list = |key: &str| {
        let names: Vec<String> = c[key]
            .as_array()
            .map(|a| a.iter().map(cell).collect())
            .unwrap_or_default();
        (!names.is_empty()).then(|| format!("{key}: {}", names.join(", ")))
    };
    let changes: Vec<String> = ["added", "removed", "replaced", "retuned"]
        .iter()
        .filter_map(|k| list(k))
        .collect();
    let what = if changes.is_empty() {
        "no model changed".to_string()
    } else {
        changes.join("; ")
    };
    format!("reloaded: config version {} ({what})", cell(&r["version"]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_lists_models_instances_and_templates() {
        let s = json!({
            "config": {"path": "/etc/thaw.toml", "version": 3,
                       "hash": "sha256:0123456789abcdef0123"},
            "last_reload": {"result": "refused", "trigger": "signal",
                            "error": "thaw.toml:4: gateway.listen: cannot change"},
            "models": [{
                "name": "credit-score", "tier": "hot", "ready_instances": 1,
                "starting_instances": 0, "desired_instances": 1, "min_instances": 1,
                "max_instances": 4, "queue_depth": 0, "in_flight": 2, "cold_starts": 3,
                "override": {"kind": "scale", "min_instances": 1, "max_instances": 4},
                "instances": [{"id": 7, "state": "ready", "pid": 42,
                               "started_from": "template", "in_flight": 2, "startup_ms": 3.4}],
                "template": {"pid": 41},
            }, {"name": "minilm", "tier": "source", "override": {"kind": "drained"},
                "instances": [], "template": null}],
        });
        let out = status(&s);
        assert!(
            out.starts_with("config /etc/thaw.toml  version 3  sha256:0123456789ab\n"),
            "{out}"
        );
        assert!(
            out.contains("last reload: refused (signal): thaw.toml:4:"),
            "{out}"
        );
        let lines: Vec<&str> = out.lines().collect();
        let row = lines
            .iter()
            .find(|l| l.starts_with("credit-score"))
            .expect("row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "credit-score",
                "hot",
                "1",
                "0",
                "1",
                "1/4",
                "0",
                "2",
                "3",
                "scale",
                "1/4"
            ]
        );
        let minilm = lines.iter().find(|l| l.starts_with("minilm")).expect("row");
        assert!(minilm.ends_with("drained"), "{minilm}");
        let instance = lines
            .iter()
            .find(|l| l.starts_with("credit-score  7"))
            .expect("instance row");
        let cells: Vec<&str> = instance.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "credit-score",
                "7",
                "ready",
                "template",
                "42",
                "2",
                "3",
                "ms",
                "0",
                "s",
                "-"
            ]
        );
        assert!(out.contains("credit-score  template"), "{out}");
        assert!(!out.contains("gpus"), "no GPU section without an inventory");
    }

    #[test]
    fn status_shows_gpus_and_the_gpu_of_each_instance() {
        let s = json!({
            "config": {}, "last_reload": null,
            "models": [{"name": "m", "instances": [
                {"id": 1, "state": "ready", "gpu": 1, "startup_ms": 1.0, "age_s": 2.0}]}],
            "gpus": {"fake": true, "policy": "spread", "reason": null, "gpus": [
                {"index": 0, "name": "H200", "uuid": "GPU-a", "total_bytes": 16u64 << 30,
                 "free_bytes": 8u64 << 30, "promised_bytes": 0},
                {"index": 1, "name": "H200", "uuid": "GPU-b", "total_bytes": 16u64 << 30,
                 "free_bytes": 8u64 << 30, "promised_bytes": 3u64 << 29}]},
        });
        let out = status(&s);
        let instance = out
            .lines()
            .find(|l| l.starts_with("m ") && l.contains("ready"))
            .expect("instance row");
        assert!(instance.ends_with("  1"), "{instance}");
        assert!(
            out.contains("gpus (fake inventory): placement spread\n"),
            "{out}"
        );
        let gpu1 = out
            .lines()
            .find(|l| l.starts_with("cuda:1"))
            .expect("GPU row");
        let cells: Vec<&str> = gpu1.split_whitespace().collect();
        assert_eq!(
            cells,
            ["cuda:1", "H200", "GPU-b", "16.0", "GiB", "8.0", "GiB", "1.5", "GiB"]
        );
    }

    #[test]
    fn reload_reports() {
        let r = json!({"result": "ok", "version": 4, "changes": {
            "added": ["a"], "removed": [], "replaced": ["b", "c"], "retuned": []}});
        assert_eq!(
            reload(&r),
            "reloaded: config version 4 (added: a; replaced: b, c)"
        );
        let r = json!({"result": "ok", "version": 5, "changes": {}});
        assert_eq!(reload(&r), "reloaded: config version 5 (no model changed)");
        let r = json!({"result": "unchanged", "version": 5});
        assert_eq!(reload(&r), "unchanged: config version 5");
    }
}
