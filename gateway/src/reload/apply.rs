//! Applies a validated config to the running models: replacements start
//! and become ready beside the versions they replace, new models start,
//! and one store of the routing map switches every model at once; then
//! the models that left the map finish what they accepted and stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::diff::{self, Changes, Version};
use super::Live;
use crate::config::{Config, ModelConfig};
use crate::models::{source_fingerprint, Model, Models, Retire};

/// Applies `new`; on `Err` (a replacement could not become ready) nothing
/// changed and what was started for it is stopped.
pub async fn apply(
    models: &Models,
    new: &Config,
    live: &Live,
    ready_timeout: Duration,
) -> Result<Changes, String> {
    let current = models.current();
    let running: Vec<Version> = current
        .values()
        .map(|m| Version {
            config: m.config.clone(),
            fingerprint: m.fingerprint,
        })
        .collect();
    let wanted = fingerprints(&new.models).await?;
    let plan = diff::diff(&running, &wanted);
    let health = &new.gateway.health;
    let fingerprint_of = |m: &ModelConfig| {
        wanted
            .iter()
            .find(|v| v.config.name == m.name)
            .map_or(0, |v| v.fingerprint)
    };

    // Beside the old versions: start the replacements and the new models,
    // each with at least one instance (whatever its floor: a version that
    // cannot start must not take over), and wait for them.
    let mut fresh: Vec<Arc<Model>> = Vec::new();
    for m in plan.replaced.iter().chain(&plan.added) {
        let model = models.launch(m, health, fingerprint_of(m));
        model.hold_floor(Some(1));
        fresh.push(model);
    }
    for model in &fresh {
        // Dropping `fresh` on an error stops what was started.
        ready(model, ready_timeout).await?;
    }
    for model in &fresh {
        // Proven: its own floor from now on (an idle one scales to zero).
        model.hold_floor(None);
    }

    let mut next: HashMap<String, Arc<Model>> = HashMap::new();
    for m in &plan.kept {
        let Some(old) = current.get(&m.name) else {
            return Err(format!("model {:?} vanished during the reload", m.name));
        };
        next.insert(m.name.clone(), old.retuned(m.clone(), health));
    }
    for model in fresh {
        next.insert(model.config.name.clone(), model);
    }
    live.set(&new.gateway);
    models.publish(next);

    for name in &plan.removed {
        if let Some(old) = current.get(name) {
            models.retire(old.clone(), Retire::Removed);
        }
    }
    for m in &plan.replaced {
        if let Some(old) = current.get(&m.name) {
            models.retire(old.clone(), Retire::Replaced);
        }
        // The old version starts nothing more: only the new one's snapshot
        // stays.
        if let Some(new) = models.get(&m.name) {
            models.prune_snapshots(&m.name, new.pool.snapshot_dir().as_deref());
        }
    }
    Ok(plan.changes())
}

/// Each model's source fingerprint (off the async threads: it stats every
/// file of each source).
async fn fingerprints(models: &[ModelConfig]) -> Result<Vec<Version>, String> {
    let models = models.to_vec();
    tokio::task::spawn_blocking(move || {
        models
            .into_iter()
            .map(|config| Version {
                fingerprint: source_fingerprint(&config.source),
                config,
            })
            .collect()
    })
    .await
    .map_err(|e| format!("reading the models' sources: {e}"))
}

/// Waits until `model` has its `min_instances` ready, and at least one. A
/// start failure or the timeout fails the reload.
async fn ready(model: &Model, timeout: Duration) -> Result<(), String> {
    let want = (model.config.scaling.min_instances as usize).max(1);
    let name = &model.config.name;
    let mut activity = model.admission.activity();
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if activity.borrow_and_update().ready >= want {
            return Ok(());
        }
        if let Some(why) = model.pool.failure() {
            return Err(format!(
                "model {name:?}: the new version cannot start: {why}"
            ));
        }
        tokio::select! {
            changed = activity.changed() => if changed.is_err() {
                return Err(format!("model {name:?}: the new version stopped"));
            },
            // Start failures have no signal of their own.
            _ = check.tick() => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(format!(
                    "model {name:?}: the new version was not ready within {timeout:?}"
                ));
            }
        }
    }
}
