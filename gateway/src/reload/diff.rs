//! What a reload changes, as pure functions of the running config and the
//! new one: which gateway fields need a restart, and which models are
//! added, removed, replaced (their instances must change: another source,
//! or the same source with other files) or only retuned (knobs).

use serde::Serialize;

use crate::config::{Gateway, ModelConfig};

/// `[gateway]` fields that a reload cannot change: the listeners are bound
/// and the state directory holds the running workers' sockets.
pub const RESTART_ONLY: [&str; 4] = ["listen", "admin_listen", "state_dir", "admin_token"];

/// The restart-only fields whose value differs, by name.
pub fn restart_only(running: &Gateway, new: &Gateway) -> Vec<&'static str> {
    let changed = [
        running.listen != new.listen,
        running.admin_listen != new.admin_listen,
        running.state_dir != new.state_dir,
        running.admin_token != new.admin_token,
    ];
    RESTART_ONLY
        .iter()
        .zip(changed)
        .filter(|(_, c)| *c)
        .map(|(f, _)| *f)
        .collect()
}

/// A model as the diff sees it: its config and its source's fingerprint.
#[derive(Debug, Clone)]
pub struct Version {
    /// The model's config.
    pub config: ModelConfig,
    /// Its source's fingerprint (`models::source_fingerprint`).
    pub fingerprint: u64,
}

/// What to do to go from the running models to the new ones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New names: start them.
    pub added: Vec<ModelConfig>,
    /// Names no longer configured: drain and stop them.
    pub removed: Vec<String>,
    /// Same name, other instances (source, its files, kind, device or
    /// memory limit): start the new version, then retire the old.
    pub replaced: Vec<ModelConfig>,
    /// Same instances; the knobs (or nothing) changed: apply in place.
    pub kept: Vec<ModelConfig>,
    /// Names among `kept` whose knobs changed.
    pub retuned: Vec<String>,
}

impl Plan {
    /// The names changed, by kind, for reports.
    pub fn changes(&self) -> Changes {
        let names = |v: &[ModelConfig]| v.iter().map(|m| m.name.clone()).collect();
        Changes {
            added: names(&self.added),
            removed: self.removed.clone(),
            replaced: names(&self.replaced),
            retuned: self.retuned.clone(),
        }
    }
}

/// The names a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Models started.
    pub added: Vec<String>,
    /// Models drained and stopped.
    pub removed: Vec<String>,
    /// Models replaced by rolling.
    pub replaced: Vec<String>,
    /// Models whose knobs changed in place.
    pub retuned: Vec<String>,
}

/// Whether two versions of a model can share instances.
fn same_instances(a: &Version, b: &Version) -> bool {
    let (x, y) = (&a.config, &b.config);
    x.source == y.source
        && a.fingerprint == b.fingerprint
        && x.kind == y.kind
        && x.device == y.device
        && x.memory_limit == y.memory_limit
}

/// The plan from `running` to `new` (both in any order; names unique).
pub fn diff(running: &[Version], new: &[Version]) -> Plan {
    let mut plan = Plan::default();
    for n in new {
        match running.iter().find(|r| r.config.name == n.config.name) {
            None => plan.added.push(n.config.clone()),
            Some(r) if !same_instances(r, n) => plan.replaced.push(n.config.clone()),
            Some(r) => {
                if r.config != n.config {
                    plan.retuned.push(n.config.name.clone());
                }
                plan.kept.push(n.config.clone());
            }
        }
    }
    for r in running {
        if !new.iter().any(|n| n.config.name == r.config.name) {
            plan.removed.push(r.config.name.clone());
        }
    }
    plan.removed.sort();
    plan
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{QueuePolicy, Scaling};

    fn model(name: &str, source: &str) -> ModelConfig {
        ModelConfig {
            name: name.into(),
            source: PathBuf::from(source),
            kind: None,
            device: "cpu".into(),
            memory_limit: None,
            scaling: Scaling::default(),
            queue: QueuePolicy::default(),
        }
    }

    fn v(config: ModelConfig, fingerprint: u64) -> Version {
        Version {
            config,
            fingerprint,
        }
    }

    #[test]
    fn each_kind_of_change_lands_in_its_place() {
        let mut knobs = model("knobs", "/k");
        knobs.scaling.min_instances = 2;
        let mut queue = model("queue", "/q");
        queue.queue.max_depth = 5;
        let running = [
            v(model("same", "/s"), 1),
            v(model("knobs", "/k"), 1),
            v(model("queue", "/q"), 1),
            v(model("moved", "/old"), 1),
            v(model("edited", "/e"), 1),
            v(model("gone", "/g"), 1),
        ];
        let new = [
            v(model("same", "/s"), 1),
            v(knobs, 1),
            v(queue, 1),
            v(model("moved", "/new"), 1),
            v(model("edited", "/e"), 2),
            v(model("fresh", "/f"), 1),
        ];
        let plan = diff(&running, &new);
        let c = plan.changes();
        assert_eq!(c.added, ["fresh"]);
        assert_eq!(c.removed, ["gone"]);
        assert_eq!(c.replaced, ["moved", "edited"]);
        assert_eq!(c.retuned, ["knobs", "queue"]);
        let kept: Vec<_> = plan.kept.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(kept, ["same", "knobs", "queue"]);
    }

    #[test]
    fn kind_device_and_memory_limit_replace() {
        let base = model("m", "/m");
        let mut kind = base.clone();
        kind.kind = Some(thaw_snapshot::ModelKind::Tabular);
        let mut memory = base.clone();
        memory.memory_limit = Some(1 << 30);
        for changed in [kind, memory] {
            let plan = diff(&[v(base.clone(), 7)], &[v(changed, 7)]);
            assert_eq!(plan.changes().replaced, ["m"]);
        }
        assert_eq!(diff(&[v(base.clone(), 7)], &[v(base, 7)]), {
            Plan {
                kept: vec![model("m", "/m")],
                ..Plan::default()
            }
        });
    }

    #[test]
    fn restart_only_fields_are_named() {
        let c = crate::config::parse("", std::path::Path::new("a.toml")).expect("empty is valid");
        let mut g = c.gateway.clone();
        assert!(restart_only(&c.gateway, &g).is_empty());
        g.listen = "127.0.0.1:1".into();
        g.state_dir = "/elsewhere".into();
        g.max_body_bytes += 1;
        assert_eq!(restart_only(&c.gateway, &g), ["listen", "state_dir"]);
    }
}
