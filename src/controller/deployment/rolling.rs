//! The RollingUpdate strategy (Kubernetes' rolling.go): grow the new ReplicaSet within
//! maxSurge, shrink the old ones within maxUnavailable, one step per sync; each step waits for
//! the ReplicaSets' statuses to move before the next.

use super::progress::{StatusCounts, is_complete};
use super::{Rollout, int_field, spec_replicas};
use crate::api::ObjectMeta;
use crate::controller::rollout::{self, ReplicaCounts};
use crate::controller::runtime::ReconcileError;
use serde_json::Value;
use std::time::Duration;

impl Rollout<'_> {
    pub(super) fn rollout_rolling(&mut self) -> Result<Option<Duration>, ReconcileError> {
        self.find_new_replica_set(true)?;
        if self.reconcile_new_replica_set()? || self.reconcile_old_replica_sets()? {
            return Ok(self.sync_rollout_status());
        }
        if self.is_complete_now() {
            self.cleanup_history()?;
        }
        Ok(self.sync_rollout_status())
    }

    /// The rollout was complete as of the last status (the cue for history cleanup).
    pub(super) fn is_complete_now(&self) -> bool {
        let generation = self
            .deployment
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        is_complete(
            self.spec.replicas,
            generation,
            StatusCounts::of(&self.status),
        )
    }

    fn reconcile_new_replica_set(&mut self) -> Result<bool, ReconcileError> {
        let Some(new) = self.new_replica_set() else {
            return Ok(false);
        };
        let name = new.meta_str("name").unwrap_or_default().to_string();
        let current = spec_replicas(new);
        let replicas = self.spec.replicas;
        if current == replicas {
            return Ok(false);
        }
        let next = if current > replicas {
            replicas
        } else {
            rollout::new_replica_set_next_size(
                replicas,
                self.spec.max_surge(),
                self.replica_sets.iter().map(super::pods_held).sum(),
                current,
            )
        };
        self.scale_replica_set(&name, next)
    }

    fn reconcile_old_replica_sets(&mut self) -> Result<bool, ReconcileError> {
        let counts = |rs: &Value| ReplicaCounts {
            replicas: spec_replicas(rs),
            available: int_field(rs, "/status/availableReplicas"),
        };
        let old: Vec<(String, ReplicaCounts)> = self
            .old_replica_sets()
            .into_iter()
            .map(|rs| {
                (
                    rs.meta_str("name").unwrap_or_default().to_string(),
                    counts(rs),
                )
            })
            .collect();
        let new = self.new_replica_set().map_or(
            ReplicaCounts {
                replicas: 0,
                available: 0,
            },
            counts,
        );
        let old_counts: Vec<ReplicaCounts> = old.iter().map(|(_, c)| *c).collect();
        let sizes = rollout::old_replica_sets_next_sizes(
            &old_counts,
            new,
            self.spec.replicas,
            self.spec.max_unavailable(),
        );
        let mut scaled = false;
        for ((name, before), size) in old.iter().zip(sizes) {
            if size != before.replicas {
                scaled |= self.scale_replica_set(name, size)?;
            }
        }
        Ok(scaled)
    }
}
