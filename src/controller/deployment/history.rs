//! Revisions: finding the new ReplicaSet (the one whose template is the Deployment's) or
//! creating it with the next revision, and deleting old ReplicaSets beyond
//! revisionHistoryLimit (Kubernetes' getNewReplicaSet and cleanupDeployment).

use super::{Rollout, Strategy, annotations_mut, int_field, spec_replicas};
use crate::api::pod::{controller_of, is_terminating, owner_reference};
use crate::api::{ObjectKey, ObjectMeta};
use crate::controller::events;
use crate::controller::rollout::{
    self, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, POD_TEMPLATE_HASH_LABEL,
    REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION,
};
use crate::controller::runtime::ReconcileError;
use crate::store::{Op, StoreError};
use serde_json::{Map, Value, json};

/// Deployment annotations a ReplicaSet does not inherit: its own bookkeeping, and kubectl's.
const NOT_COPIED: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

/// Copies the Deployment's annotations (change-cause among them) onto a ReplicaSet; returns
/// whether any changed. Annotations are only added or updated, never removed.
fn copy_annotations(deployment: &Value, rs_annotations: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(from)) = deployment.pointer("/metadata/annotations") else {
        return false;
    };
    let mut changed = false;
    for (k, v) in from {
        if NOT_COPIED.contains(&k.as_str()) || rs_annotations.get(k) == Some(v) {
            continue;
        }
        rs_annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// One old ReplicaSet as history cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub name: String,
    pub revision: i64,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.replicas`: pods it still has.
    pub pods: i32,
    /// The ReplicaSet controller has seen its latest spec.
    pub observed: bool,
}

/// The old ReplicaSets to delete so that at most `limit` remain: the lowest revisions first,
/// skipping any that still has (or is meant to have) pods, as Kubernetes' cleanupDeployment.
pub fn replica_sets_to_delete(old: &[HistoryEntry], limit: usize) -> Vec<String> {
    let excess = old.len().saturating_sub(limit);
    let mut by_revision: Vec<&HistoryEntry> = old.iter().collect();
    by_revision.sort_by_key(|e| e.revision);
    by_revision
        .into_iter()
        .take(excess)
        .filter(|e| e.replicas == 0 && e.pods == 0 && e.observed)
        .map(|e| e.name.clone())
        .collect()
}

impl Rollout<'_> {
    /// Finds the new ReplicaSet and brings its revision (max old + 1), annotations and
    /// minReadySeconds up to date; creates it when `create` and there is none.
    pub(super) fn find_new_replica_set(&mut self, create: bool) -> Result<(), ReconcileError> {
        if self.new_rs.is_some() {
            return Ok(());
        }
        let existing = self
            .replica_sets
            .iter()
            .find(|rs| {
                rs.pointer("/spec/template")
                    .is_some_and(|t| rollout::templates_equal_ignoring_hash(t, &self.spec.template))
            })
            .cloned();
        let existing_name = existing
            .as_ref()
            .and_then(|rs| rs.meta_str("name"))
            .map(str::to_string);
        let max_old_revision = self
            .replica_sets
            .iter()
            .filter(|rs| rs.meta_str("name").map(str::to_string) != existing_name)
            .map(rollout::revision_of)
            .max()
            .unwrap_or(0);
        let revision = max_old_revision + 1;

        if let (Some(mut rs), Some(name)) = (existing, existing_name) {
            let min_ready = Value::from(self.spec.min_ready_seconds);
            let mut changed = false;
            if let Some(ann) = annotations_mut(&mut rs) {
                changed |= copy_annotations(&self.deployment, ann);
                changed |= rollout::advance_revision(ann, revision);
            }
            if rs.pointer("/spec/minReadySeconds").unwrap_or(&json!(0)) != &min_ready {
                if let Some(spec) = rs.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("minReadySeconds".into(), min_ready);
                }
                changed = true;
            }
            let rs_revision = rollout::revision_of(&rs).to_string();
            if changed {
                self.write_replica_set(rs)?;
            }
            self.new_rs = Some(name.clone());
            self.set_deployment_revision(&rs_revision)?;
            if self.spec.progress_deadline_seconds.is_some()
                && super::progress::condition(&self.status, super::PROGRESSING).is_none()
            {
                let cond = self.new_condition(
                    super::PROGRESSING,
                    "True",
                    super::REASON_FOUND_NEW_RS,
                    &format!("Found new replica set \"{name}\""),
                );
                super::progress::set_condition(&mut self.status, cond);
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        self.create_new_replica_set(revision)
    }

    fn create_new_replica_set(&mut self, revision: i64) -> Result<(), ReconcileError> {
        let collision_count = self
            .status
            .get("collisionCount")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok());
        let hash = rollout::pod_template_hash(&self.spec.template, collision_count);
        let name = format!("{}-{hash}", self.key.name);

        let mut template = self.spec.template.clone();
        if let Some(meta) = template
            .as_object_mut()
            .map(|t| t.entry("metadata").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(POD_TEMPLATE_HASH_LABEL.into(), Value::from(hash.clone()));
            }
        }
        let labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        let mut selector = match &self.spec.selector {
            s @ Value::Object(_) => s.clone(),
            _ => json!({}),
        };
        if let Some(sel) = selector.as_object_mut() {
            let match_labels = sel.entry("matchLabels").or_insert_with(|| json!({}));
            if let Some(m) = match_labels.as_object_mut() {
                m.insert(POD_TEMPLATE_HASH_LABEL.into(), Value::from(hash.clone()));
            }
        }

        let replicas = match self.spec.strategy {
            Strategy::Recreate => self.spec.replicas,
            Strategy::RollingUpdate { .. } => rollout::new_replica_set_next_size(
                self.spec.replicas,
                self.spec.max_surge(),
                self.replica_sets.iter().map(super::pods_held).sum(),
                0,
            ),
        };
        let mut annotations = Map::new();
        copy_annotations(&self.deployment, &mut annotations);
        rollout::advance_revision(&mut annotations, revision);
        rollout::set_replicas_annotations(
            &mut annotations,
            self.spec.replicas,
            self.spec.replicas + self.spec.max_surge(),
        );
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": self.key.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [owner_reference(&self.deployment)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": self.spec.min_ready_seconds,
                "selector": selector,
                "template": template,
            },
        });
        match self.ctx.store.commit(vec![Op::Create(rs)]) {
            Ok(committed) => {
                if let Some(stored) = committed.objects.into_iter().next() {
                    self.replica_sets.push(stored);
                }
            }
            Err(StoreError::AlreadyExists { .. }) => return self.resolve_name_taken(&name),
            Err(e) => return Err(e.into()),
        }
        self.new_rs = Some(name.clone());
        if replicas > 0 {
            self.record(
                events::NORMAL,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} to {replicas}"),
            );
        }
        self.set_deployment_revision(&revision.to_string())?;
        if self.spec.progress_deadline_seconds.is_some() {
            let cond = self.new_condition(
                super::PROGRESSING,
                "True",
                super::REASON_NEW_RS_CREATED,
                &format!("Created new replica set \"{name}\""),
            );
            super::progress::set_condition(&mut self.status, cond);
        }
        Ok(())
    }

    /// The name `<deployment>-<hash>` is taken. When it is ours with our template, a sync
    /// raced with itself: use it. Otherwise the hash collided with a foreign template: count
    /// the collision (the next hash differs) and retry.
    fn resolve_name_taken(&mut self, name: &str) -> Result<(), ReconcileError> {
        let key = ObjectKey::new(crate::api::Kind::ReplicaSet, &self.key.namespace, name);
        let uid = self.deployment.meta_str("uid").unwrap_or_default();
        if let Some(rs) = self.ctx.store.get(&key)? {
            let ours = matches!(controller_of(&rs), Some((_, _, owner)) if owner == uid);
            let same = rs
                .pointer("/spec/template")
                .is_some_and(|t| rollout::templates_equal_ignoring_hash(t, &self.spec.template));
            if ours && same {
                return Err(ReconcileError::Conflict(format!(
                    "replica set {name} appeared while syncing deployment {}",
                    self.key.name
                )));
            }
        }
        let count = self
            .status
            .get("collisionCount")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(status) = self.status.as_object_mut() {
            status.insert("collisionCount".into(), Value::from(count));
        }
        self.write_status()?;
        Err(ReconcileError::Conflict(format!(
            "pod-template-hash collision on replica set {name}; collisionCount now {count}"
        )))
    }

    /// Deletes old ReplicaSets beyond revisionHistoryLimit.
    pub(super) fn cleanup_history(&mut self) -> Result<(), ReconcileError> {
        let Some(limit) = self.spec.revision_history_limit else {
            return Ok(());
        };
        let entries: Vec<HistoryEntry> = self
            .old_replica_sets()
            .into_iter()
            .filter(|rs| !is_terminating(rs))
            .map(|rs| HistoryEntry {
                name: rs.meta_str("name").unwrap_or_default().to_string(),
                revision: rollout::revision_of(rs),
                replicas: spec_replicas(rs),
                pods: int_field(rs, "/status/replicas"),
                observed: rs
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    <= rs
                        .pointer("/status/observedGeneration")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
            })
            .collect();
        for name in replica_sets_to_delete(&entries, limit) {
            let Some(rs) = self.find(&name) else { continue };
            let key = ObjectKey::new(crate::api::Kind::ReplicaSet, &self.key.namespace, &name);
            let expect_rv = Some(rs.resource_version());
            self.ctx.store.commit(vec![Op::Delete { key, expect_rv }])?;
            self.replica_sets
                .retain(|rs| rs.meta_str("name") != Some(name.as_str()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, revision: i64, replicas: i32, pods: i32) -> HistoryEntry {
        HistoryEntry {
            name: name.into(),
            revision,
            replicas,
            pods,
            observed: true,
        }
    }

    #[test]
    fn history_keeps_the_newest_revisions() {
        let old = vec![
            entry("r3", 3, 0, 0),
            entry("r1", 1, 0, 0),
            entry("r2", 2, 0, 0),
            entry("r4", 4, 0, 0),
        ];
        assert_eq!(replica_sets_to_delete(&old, 3), vec!["r1"]);
        assert_eq!(replica_sets_to_delete(&old, 1), vec!["r1", "r2", "r3"]);
        assert!(replica_sets_to_delete(&old, 4).is_empty());
        // One still holding pods is kept, and not replaced by a newer one.
        let busy = vec![entry("r1", 1, 0, 2), entry("r2", 2, 0, 0)];
        assert!(replica_sets_to_delete(&busy, 1).is_empty());
    }

    #[test]
    fn copied_annotations_skip_bookkeeping() {
        let d = json!({"metadata": {"annotations": {"kubernetes.io/change-cause": "abc1234 v2",
            REVISION_ANNOTATION: "7"}}});
        let mut ann = Map::new();
        assert!(copy_annotations(&d, &mut ann));
        assert_eq!(ann["kubernetes.io/change-cause"], "abc1234 v2");
        assert!(ann.get(REVISION_ANNOTATION).is_none());
        assert!(!copy_annotations(&d, &mut ann));
    }
}
