//! An operator's overrides of a model's scaling (`thaw ctl scale|drain`
//! through the admin API): `scale` sets the running floor and cap without
//! editing the config; `drain` refuses new requests, lets the model serve
//! what it already accepted, then takes it to zero instances and holds it
//! there. An override lasts until the next reload or the other override.

use std::time::Duration;

use serde::Serialize;

use super::Models;

/// An override in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Override {
    /// `thaw ctl scale`: this floor and cap instead of the config's.
    Scale {
        /// The floor.
        min_instances: u32,
        /// The cap.
        max_instances: u32,
    },
    /// `thaw ctl drain`: held at zero, refusing new requests.
    Drained,
}

/// Why an operation on a model was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No model by that name (404).
    #[error("no model named {0:?}")]
    UnknownModel(String),
    /// The request makes no sense (400).
    #[error("{0}")]
    Invalid(String),
}

/// The override `scale` sets: `min ≤ max` and `max ≥ 1` (zero is `drain`).
pub fn scale_override(min: u32, max: u32) -> Result<Override, OpError> {
    if max == 0 {
        return Err(OpError::Invalid(
            "max_instances must be at least 1 (to stop a model, drain it)".into(),
        ));
    }
    if min > max {
        return Err(OpError::Invalid(format!(
            "min_instances {min} exceeds max_instances {max}"
        )));
    }
    Ok(Override::Scale {
        min_instances: min,
        max_instances: max,
    })
}

impl Models {
    /// Sets `name`'s running floor (and cap: the config's when `max` is
    /// `None`) until the next reload; lifts a drain.
    pub fn scale(&self, name: &str, min: u32, max: Option<u32>) -> Result<Override, OpError> {
        let model = self
            .get(name)
            .ok_or_else(|| OpError::UnknownModel(name.into()))?;
        let max = max.unwrap_or(model.config.scaling.max_instances);
        let set = scale_override(min, max)?;
        let mut overrides = model
            .control
            .overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *overrides == Some(Override::Drained) {
            model.admission.reopen();
        }
        *overrides = Some(set);
        model.control.knobs.send_modify(|k| {
            k.min_instances = min;
            k.max_instances = max;
        });
        tracing::info!(model = name, min, max, "scale override");
        Ok(set)
    }

    /// Drains `name`: new requests are refused (503) at once; those in
    /// flight and queued finish on its workers; then it goes to zero
    /// instances and stays there until a reload or a `scale`.
    pub fn drain(&self, name: &str) -> Result<(), OpError> {
        let model = self
            .get(name)
            .ok_or_else(|| OpError::UnknownModel(name.into()))?;
        {
            let mut overrides = model
                .control
                .overrides
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *overrides == Some(Override::Drained) {
                return Ok(());
            }
            *overrides = Some(Override::Drained);
            model.admission.retire();
        }
        tracing::info!(model = name, "draining");
        self.handle.spawn(async move {
            // The instances stay until the queue is served (a queued
            // request leaves by being served or by timing out).
            let mut activity = model.admission.activity();
            let limit = model.config.queue.timeout + Duration::from_secs(1);
            let _ = tokio::time::timeout(limit, activity.wait_for(|a| a.queue_empty)).await;
            let overrides = model
                .control
                .overrides
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // A `scale` or a reload since then has the last word.
            if *overrides == Some(Override::Drained) {
                model.control.knobs.send_modify(|k| {
                    k.min_instances = 0;
                    k.max_instances = 0;
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_overrides_are_validated() {
        assert_eq!(
            scale_override(2, 3),
            Ok(Override::Scale {
                min_instances: 2,
                max_instances: 3
            })
        );
        assert!(scale_override(0, 1).is_ok());
        assert!(matches!(scale_override(3, 2), Err(OpError::Invalid(m)) if m.contains("exceeds")));
        assert!(matches!(scale_override(0, 0), Err(OpError::Invalid(m)) if m.contains("drain")));
    }
}
