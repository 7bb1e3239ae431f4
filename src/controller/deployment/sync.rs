//! Scaling and status (Kubernetes' sync.go): a scale when nothing rolls resizes the one active
//! ReplicaSet; a scale in the middle of a rollout resizes every active ReplicaSet in
//! proportion; the status is summed from the ReplicaSets' statuses.

use super::progress::{AVAILABLE, REASON_MIN_AVAILABLE, REASON_MIN_UNAVAILABLE, set_condition};
use super::{Rollout, int_field, spec_replicas};
use crate::api::ObjectMeta;
use crate::controller::rollout::{
    self, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, ProportionalShare,
};
use crate::controller::runtime::ReconcileError;
use serde_json::Value;

impl Rollout<'_> {
    /// A Deployment scaled while nothing else changed: some active ReplicaSet was sized for
    /// another replica count (its desired-replicas annotation says so).
    pub(super) fn is_scaling_event(&self) -> bool {
        self.replica_sets
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .filter_map(|rs| rollout::int_annotation(rs, DESIRED_REPLICAS_ANNOTATION))
            .any(|desired| desired != self.spec.replicas)
    }

    /// Scales without rolling (paused, or a scaling event), then reports the status
    /// (Kubernetes' sync).
    pub(super) fn sync_scale(&mut self) -> Result<(), ReconcileError> {
        self.find_new_replica_set(false)?;
        self.scale()?;
        if self.spec.paused {
            self.cleanup_history()?;
        }
        self.status = self.calculate_status();
        Ok(())
    }

    /// The only active ReplicaSet, or the latest when none is active; `None` when several are
    /// active (a rollout is under way).
    fn active_or_latest(&self) -> Option<String> {
        let active: Vec<&Value> = self
            .replica_sets
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .collect();
        let name = |rs: &Value| rs.meta_str("name").map(str::to_string);
        match active.as_slice() {
            [] => self
                .new_rs
                .clone()
                .or_else(|| self.old_replica_sets().last().and_then(|rs| name(rs))),
            [only] => name(only),
            _ => None,
        }
    }

    fn scale(&mut self) -> Result<(), ReconcileError> {
        let replicas = self.spec.replicas;
        if let Some(name) = self.active_or_latest() {
            if self.find(&name).map(spec_replicas) != Some(replicas) {
                self.scale_replica_set(&name, replicas)?;
            }
            return Ok(());
        }
        // The new ReplicaSet holds every replica, all available: the old ones may all go.
        if let Some(new) = self.new_replica_set()
            && spec_replicas(new) == replicas
            && rollout::int_annotation(new, DESIRED_REPLICAS_ANNOTATION) == Some(replicas)
            && int_field(new, "/status/availableReplicas") == replicas
        {
            let old: Vec<String> = self
                .old_replica_sets()
                .into_iter()
                .filter(|rs| spec_replicas(rs) > 0)
                .filter_map(|rs| rs.meta_str("name").map(str::to_string))
                .collect();
            for name in old {
                self.scale_replica_set(&name, 0)?;
            }
            return Ok(());
        }
        if !self.spec.is_rolling_update() {
            return Ok(());
        }
        let active: Vec<(String, ProportionalShare)> = self
            .replica_sets
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .map(|rs| {
                (
                    rs.meta_str("name").unwrap_or_default().to_string(),
                    ProportionalShare {
                        replicas: spec_replicas(rs),
                        max_replicas: rollout::int_annotation(rs, MAX_REPLICAS_ANNOTATION),
                    },
                )
            })
            .collect();
        let shares: Vec<ProportionalShare> = active.iter().map(|(_, s)| *s).collect();
        let sizes = rollout::proportional_sizes(
            &shares,
            replicas,
            self.spec.max_surge(),
            int_field(&self.status, "/replicas"),
        );
        for ((name, _), size) in active.iter().zip(sizes) {
            self.scale_replica_set(name, size)?;
        }
        Ok(())
    }

    /// The Deployment's status from its ReplicaSets' (Kubernetes' calculateStatus), with the
    /// Available condition; other conditions are carried over.
    pub(super) fn calculate_status(&self) -> Value {
        let sum = |pointer: &str| -> i32 {
            self.replica_sets
                .iter()
                .map(|rs| int_field(rs, pointer))
                .sum()
        };
        let available = sum("/status/availableReplicas");
        let wanted: i32 = self.replica_sets.iter().map(spec_replicas).sum();
        let updated = self
            .new_replica_set()
            .map_or(0, |rs| int_field(rs, "/status/replicas"));
        let mut status = self.status.clone();
        if let Some(s) = status.as_object_mut() {
            let generation = self
                .deployment
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            s.insert("observedGeneration".into(), Value::from(generation));
            s.insert("replicas".into(), Value::from(sum("/status/replicas")));
            s.insert("updatedReplicas".into(), Value::from(updated));
            s.insert(
                "readyReplicas".into(),
                Value::from(sum("/status/readyReplicas")),
            );
            s.insert("availableReplicas".into(), Value::from(available));
            // Negative while scaling down (more available than wanted): none missing.
            s.insert(
                "unavailableReplicas".into(),
                Value::from((wanted - available).max(0)),
            );
        }
        let cond = if available >= self.spec.replicas - self.spec.max_unavailable() {
            self.new_condition(
                AVAILABLE,
                "True",
                REASON_MIN_AVAILABLE,
                "Deployment has minimum availability.",
            )
        } else {
            self.new_condition(
                AVAILABLE,
                "False",
                REASON_MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(&mut status, cond);
        status
    }
}
