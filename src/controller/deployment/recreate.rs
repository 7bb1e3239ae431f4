//! The Recreate strategy (Kubernetes' recreate.go): every old ReplicaSet to 0, wait until no
//! old pod is left (terminating ones included: they may still hold ports and volumes), then
//! the new ReplicaSet at full size.

use super::{Rollout, int_field, spec_replicas};
use crate::api::pod::controller_of;
use crate::api::{Kind, ObjectMeta};
use crate::controller::runtime::ReconcileError;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

impl Rollout<'_> {
    pub(super) fn rollout_recreate(&mut self) -> Result<Option<Duration>, ReconcileError> {
        self.find_new_replica_set(false)?;
        let active_old: Vec<String> = self
            .old_replica_sets()
            .into_iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .filter_map(|rs| rs.meta_str("name").map(str::to_string))
            .collect();
        let mut scaled_down = false;
        for name in active_old {
            scaled_down |= self.scale_replica_set(&name, 0)?;
        }
        if scaled_down || self.old_pods_running()? {
            return Ok(self.sync_rollout_status());
        }
        if self.new_rs.is_none() {
            self.find_new_replica_set(true)?;
        }
        if let Some(name) = self.new_rs.clone() {
            self.scale_replica_set(&name, self.spec.replicas)?;
        }
        if self.is_complete_now() {
            self.cleanup_history()?;
        }
        Ok(self.sync_rollout_status())
    }

    /// Some old ReplicaSet still reports pods, or a pod it owns still exists and has not
    /// finished (Succeeded/Failed pods hold nothing).
    fn old_pods_running(&self) -> Result<bool, ReconcileError> {
        let old = self.old_replica_sets();
        if old.iter().any(|rs| int_field(rs, "/status/replicas") > 0) {
            return Ok(true);
        }
        let old_uids: HashSet<&str> = old.iter().filter_map(|rs| rs.meta_str("uid")).collect();
        if old_uids.is_empty() {
            return Ok(false);
        }
        let mut pods = Vec::new();
        for uid in &old_uids {
            pods.extend(
                self.ctx
                    .store
                    .list_owned(Kind::Pod, &self.key.namespace, uid)?,
            );
        }
        Ok(pods.iter().any(|pod| {
            let owned = matches!(controller_of(pod), Some(("ReplicaSet", _, uid)) if old_uids.contains(uid));
            let phase = pod.pointer("/status/phase").and_then(Value::as_str);
            owned && !matches!(phase, Some("Succeeded") | Some("Failed"))
        }))
    }
}
