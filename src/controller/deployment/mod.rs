//! The Deployment controller, as Kubernetes' `pkg/controller/deployment`: it owns ReplicaSets
//! (one per pod template, named `<deployment>-<pod-template-hash>`), sizes them by the
//! strategy, and reports the Deployment's status from theirs. It never creates pods: that is
//! the ReplicaSet controller's job.
//!
//! Split by concern: `history` (finding or creating the new ReplicaSet, revisions, cleanup),
//! `sync` (scaling and status), `rolling` and `recreate` (the strategies), `progress`
//! (conditions and the progress deadline), `rollback` (auto-revert). The arithmetic lives in
//! `controller::rollout`.

mod history;
mod progress;
mod recreate;
mod rollback;
mod rolling;
mod sync;

pub use history::replica_sets_to_delete;
pub use progress::{
    AVAILABLE, PROGRESSING, REASON_FOUND_NEW_RS, REASON_NEW_RS_AVAILABLE, REASON_NEW_RS_CREATED,
    REASON_PAUSED, REASON_RESUMED, REASON_RS_UPDATED, REASON_TIMED_OUT,
};
pub use rollback::{
    AUTO_REVERT_ANNOTATION, AUTO_REVERTED_ANNOTATION, ROLLOUT_COMPLETE_ANNOTATION,
    last_good_replica_set,
};

use crate::api::pod::controller_of;
use crate::api::{Kind, ObjectKey, ObjectMeta};
use crate::controller::events;
use crate::controller::rollout::{
    self, Fenceposts, IntOrPercent, POD_TEMPLATE_HASH_LABEL, resolve_fenceposts,
};
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, WatchEvent, WatchEventType};
use serde_json::{Map, Value};
use std::time::Duration;

/// The `source.component` of the events this controller records.
pub const COMPONENT: &str = "deployment-controller";

/// How a Deployment replaces its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: IntOrPercent,
        max_unavailable: IntOrPercent,
    },
}

/// The fields of a Deployment's spec the controller acts on, with Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub replicas: i32,
    pub strategy: Strategy,
    pub min_ready_seconds: i64,
    pub revision_history_limit: Option<usize>,
    /// `None` when there is no deadline (absent or MaxInt32, as in Kubernetes).
    pub progress_deadline_seconds: Option<i64>,
    pub paused: bool,
    pub selector: Value,
    pub template: Value,
}

impl DeploymentSpec {
    pub fn from_deployment(d: &Value) -> Result<DeploymentSpec, ReconcileError> {
        let name = d.meta_str("name").unwrap_or("?");
        let invalid = |what: &str| ReconcileError::Other(format!("deployment {name}: {what}"));
        let spec = d.get("spec").ok_or_else(|| invalid("no spec"))?;
        let int = |field: &str| spec.get(field).and_then(Value::as_i64);
        let replicas = i32::try_from(int("replicas").unwrap_or(1))
            .ok()
            .filter(|r| *r >= 0)
            .ok_or_else(|| invalid("spec.replicas out of range"))?;
        let strategy = match spec.pointer("/strategy/type").and_then(Value::as_str) {
            Some("Recreate") => Strategy::Recreate,
            None | Some("RollingUpdate") => {
                let rolling = spec.pointer("/strategy/rollingUpdate");
                let field = |f: &str| rolling.and_then(|r| r.get(f));
                let pct25 = IntOrPercent::Percent(25);
                Strategy::RollingUpdate {
                    max_surge: IntOrPercent::from_json(field("maxSurge"), "maxSurge", pct25)
                        .map_err(|e| invalid(&e.to_string()))?,
                    max_unavailable: IntOrPercent::from_json(
                        field("maxUnavailable"),
                        "maxUnavailable",
                        pct25,
                    )
                    .map_err(|e| invalid(&e.to_string()))?,
                }
            }
            Some(other) => return Err(invalid(&format!("unknown strategy type {other:?}"))),
        };
        let template = spec
            .get("template")
            .cloned()
            .ok_or_else(|| invalid("no spec.template"))?;
        Ok(DeploymentSpec {
            replicas,
            strategy,
            min_ready_seconds: int("minReadySeconds").unwrap_or(0).max(0),
            revision_history_limit: Some(
                usize::try_from(int("revisionHistoryLimit").unwrap_or(10)).unwrap_or(0),
            ),
            progress_deadline_seconds: Some(int("progressDeadlineSeconds").unwrap_or(600))
                .filter(|s| *s != i64::from(i32::MAX) && *s > 0),
            paused: spec.get("paused").and_then(Value::as_bool).unwrap_or(false),
            selector: spec.get("selector").cloned().unwrap_or(Value::Null),
            template,
        })
    }

    fn fenceposts(&self) -> Fenceposts {
        match self.strategy {
            Strategy::Recreate => Fenceposts {
                max_surge: 0,
                max_unavailable: 0,
            },
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            } => resolve_fenceposts(max_surge, max_unavailable, self.replicas),
        }
    }

    /// maxSurge as a count (0 for Recreate).
    pub fn max_surge(&self) -> i32 {
        self.fenceposts().max_surge
    }

    /// maxUnavailable as a count (0 for Recreate and for 0 replicas, at most the replicas).
    pub fn max_unavailable(&self) -> i32 {
        match self.strategy {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate { .. } => {
                rollout::effective_max_unavailable(self.fenceposts(), self.replicas)
            }
        }
    }

    pub fn is_rolling_update(&self) -> bool {
        matches!(self.strategy, Strategy::RollingUpdate { .. })
    }
}

/// The Deployment controller (see the module documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct DeploymentController;

impl Reconciler for DeploymentController {
    fn wants(&self, kind: Kind, event_type: WatchEventType) -> bool {
        match kind {
            Kind::Deployment | Kind::ReplicaSet => true,
            Kind::Pod => event_type == WatchEventType::Deleted,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        "deployment"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let object = &event.object;
        let namespace = object.meta_str("namespace").unwrap_or("default");
        match object.get("kind").and_then(Value::as_str) {
            Some("Deployment") => ObjectKey::of(object).into_iter().collect(),
            Some("ReplicaSet") => match controller_of(object) {
                Some(("Deployment", name, _)) => {
                    vec![ObjectKey::new(Kind::Deployment, namespace, name)]
                }
                _ => Vec::new(),
            },
            // Recreate waits for the old pods to be gone: their deletion is the signal.
            Some("Pod") if event.event_type == WatchEventType::Deleted => deployment_of_pod(object)
                .map(|name| ObjectKey::new(Kind::Deployment, namespace, name))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        let (deployments, _) = ctx.store.list(Kind::Deployment, None)?;
        Ok(deployments.iter().filter_map(ObjectKey::of).collect())
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        let Some(deployment) = ctx.store.get(key)? else {
            return Ok(Action::Done);
        };
        if crate::api::pod::is_terminating(&deployment) {
            return Ok(Action::Done);
        }
        let mut rollout = Rollout::load(ctx, key.clone(), deployment)?;
        rollout.sync()
    }
}

/// The Deployment a pod belongs to, from names alone: its ReplicaSet is
/// `<deployment>-<pod-template-hash>` and the pod carries the hash as a label.
fn deployment_of_pod(pod: &Value) -> Option<&str> {
    let (kind, rs_name, _) = controller_of(pod)?;
    if kind != "ReplicaSet" {
        return None;
    }
    let hash = pod.labels()?.get(POD_TEMPLATE_HASH_LABEL)?.as_str()?;
    rs_name
        .strip_suffix(hash)?
        .strip_suffix('-')
        .filter(|n| !n.is_empty())
}

/// `spec.replicas` of a ReplicaSet.
pub(crate) fn spec_replicas(rs: &Value) -> i32 {
    int_field(rs, "/spec/replicas")
}

/// The pods a ReplicaSet may have now: its `spec.replicas`, or more while its controller has
/// not yet removed the pods of a scale-down (`status.replicas` counts its active pods).
/// Kubernetes sizes a surge from the specs alone, so when an old ReplicaSet's pods outlive its
/// scale-down (a conflicted delete, a queue that reaches the new ReplicaSet first, a restart
/// between the two), the new ReplicaSet's pods come on top of them: more than replicas +
/// maxSurge pods at once. Counting the pods still there holds the bound at every moment.
pub(crate) fn pods_held(rs: &Value) -> i32 {
    spec_replicas(rs).max(int_field(rs, "/status/replicas"))
}

/// An integer field of a status (`/status/availableReplicas`), 0 when absent.
pub(crate) fn int_field(object: &Value, pointer: &str) -> i32 {
    object
        .pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(0)
}

fn annotations_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = object.get_mut("metadata")?.as_object_mut()?;
    meta.entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

/// One sync of one Deployment: what was read, and what this sync has written so far. Writes
/// replace the objects kept here so that later steps see them, as the Go controller does
/// with the objects its updates return.
pub(crate) struct Rollout<'a> {
    ctx: &'a Context,
    key: ObjectKey,
    deployment: Value,
    spec: DeploymentSpec,
    /// The status as this sync will leave it; written once, at the end.
    status: Value,
    /// The Deployment's ReplicaSets, oldest first.
    replica_sets: Vec<Value>,
    /// The name of the ReplicaSet whose template is the Deployment's, once found or created.
    new_rs: Option<String>,
}

impl<'a> Rollout<'a> {
    fn load(ctx: &'a Context, key: ObjectKey, deployment: Value) -> Result<Self, ReconcileError> {
        let spec = DeploymentSpec::from_deployment(&deployment)?;
        let uid = deployment.meta_str("uid").unwrap_or_default().to_string();
        let all = ctx
            .store
            .list_owned(Kind::ReplicaSet, &key.namespace, &uid)?;
        let mut replica_sets: Vec<Value> = all
            .into_iter()
            .filter(
                |rs| matches!(controller_of(rs), Some(("Deployment", _, owner)) if owner == uid),
            )
            .collect();
        replica_sets.sort_by(|a, b| {
            let created = |rs: &Value| rs.meta_str("creationTimestamp").unwrap_or("").to_string();
            created(a)
                .cmp(&created(b))
                .then(rollout::revision_of(a).cmp(&rollout::revision_of(b)))
                .then(a.meta_str("name").cmp(&b.meta_str("name")))
        });
        let status = match deployment.get("status") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => Value::Object(Map::new()),
        };
        Ok(Rollout {
            ctx,
            key,
            deployment,
            spec,
            status,
            replica_sets,
            new_rs: None,
        })
    }

    /// One pass of Kubernetes' syncDeployment.
    fn sync(&mut self) -> Result<Action, ReconcileError> {
        self.check_paused_conditions();
        let mut requeue = None;
        if self.spec.paused {
            self.sync_scale()?;
        } else {
            self.find_new_replica_set(false)?;
            if self.is_scaling_event() {
                self.sync_scale()?;
            } else {
                requeue = match self.spec.strategy {
                    Strategy::Recreate => self.rollout_recreate()?,
                    Strategy::RollingUpdate { .. } => self.rollout_rolling()?,
                };
                self.mark_rollout_complete()?;
                self.auto_revert_if_failed()?;
            }
        }
        self.write_status()?;
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    fn now(&self) -> jiff::Timestamp {
        self.ctx.clock.now()
    }

    fn now_rfc3339(&self) -> String {
        let now = self.now();
        now.round(jiff::Unit::Second).unwrap_or(now).to_string()
    }

    fn find(&self, name: &str) -> Option<&Value> {
        self.replica_sets
            .iter()
            .find(|rs| rs.meta_str("name") == Some(name))
    }

    fn new_replica_set(&self) -> Option<&Value> {
        self.new_rs.as_deref().and_then(|n| self.find(n))
    }

    /// The ReplicaSets other than the new one, oldest first.
    fn old_replica_sets(&self) -> Vec<&Value> {
        self.replica_sets
            .iter()
            .filter(|rs| rs.meta_str("name") != self.new_rs.as_deref())
            .collect()
    }

    fn record(&self, event_type: &str, reason: &str, message: &str) {
        if let Err(e) =
            self.ctx
                .events
                .record(&self.deployment, event_type, reason, message, COMPONENT)
        {
            tracing::warn!(deployment = %self.key, "recording event {reason}: {e}");
        }
    }

    /// Writes a changed ReplicaSet (guarded by the resourceVersion it was read at) and keeps
    /// the stored result.
    fn write_replica_set(&mut self, rs: Value) -> Result<(), ReconcileError> {
        let expect_rv = Some(rs.resource_version());
        let committed = self.ctx.store.commit(vec![Op::Put {
            object: rs,
            expect_rv,
        }])?;
        if let Some(stored) = committed.objects.into_iter().next() {
            let name = stored.meta_str("name").map(str::to_string);
            match self
                .replica_sets
                .iter_mut()
                .find(|r| r.meta_str("name").map(str::to_string) == name)
            {
                Some(slot) => *slot = stored,
                None => self.replica_sets.push(stored),
            }
        }
        Ok(())
    }

    /// Sizes a ReplicaSet (and stamps the desired/max-replicas annotations that proportional
    /// scaling reads); records `Scaled up|down replica set NAME to N` when the size changed.
    /// Returns whether the size changed.
    fn scale_replica_set(&mut self, name: &str, size: i32) -> Result<bool, ReconcileError> {
        let Some(mut rs) = self.find(name).cloned() else {
            return Ok(false);
        };
        let before = spec_replicas(&rs);
        let desired = self.spec.replicas;
        let max_replicas = desired + self.spec.max_surge();
        let annotated = annotations_mut(&mut rs)
            .is_some_and(|a| rollout::set_replicas_annotations(a, desired, max_replicas));
        if before == size && !annotated {
            return Ok(false);
        }
        if let Some(spec) = rs.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), Value::from(size));
        }
        self.write_replica_set(rs)?;
        if before != size {
            let direction = if size > before { "up" } else { "down" };
            self.record(
                events::NORMAL,
                "ScalingReplicaSet",
                &format!("Scaled {direction} replica set {name} to {size}"),
            );
        }
        Ok(before != size)
    }

    /// Sets the Deployment's revision annotation (the new ReplicaSet's revision), keeping the
    /// rest of the object as it is.
    fn set_deployment_revision(&mut self, revision: &str) -> Result<(), ReconcileError> {
        if self.deployment.annotation(rollout::REVISION_ANNOTATION) == Some(revision) {
            return Ok(());
        }
        let mut d = self.deployment.clone();
        if let Some(ann) = annotations_mut(&mut d) {
            ann.insert(rollout::REVISION_ANNOTATION.into(), Value::from(revision));
        }
        let expect_rv = Some(d.resource_version());
        let committed = self.ctx.store.commit(vec![Op::Put {
            object: d,
            expect_rv,
        }])?;
        if let Some(stored) = committed.objects.into_iter().next() {
            self.deployment = stored;
        }
        Ok(())
    }

    /// Writes the status this sync computed, when it differs from the stored one.
    fn write_status(&mut self) -> Result<(), ReconcileError> {
        let stored = self
            .deployment
            .get("status")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        if stored == self.status {
            return Ok(());
        }
        let committed = self.ctx.store.commit(vec![Op::PutStatus {
            key: self.key.clone(),
            status: self.status.clone(),
            expect_rv: Some(self.deployment.resource_version()),
        }])?;
        if let Some(stored) = committed.objects.into_iter().next() {
            self.deployment = stored;
        }
        Ok(())
    }
}

/// How long until a stalled rollout's deadline, for the requeue.
fn until(deadline: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    let seconds = deadline.as_second() - now.as_second();
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_defaults_match_kubernetes() {
        let d = json!({"metadata": {"name": "web"}, "spec": {"template": {}}});
        let spec = DeploymentSpec::from_deployment(&d).unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.revision_history_limit, Some(10));
        assert_eq!(spec.progress_deadline_seconds, Some(600));
        assert_eq!(
            spec.strategy,
            Strategy::RollingUpdate {
                max_surge: IntOrPercent::Percent(25),
                max_unavailable: IntOrPercent::Percent(25)
            }
        );
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 10, "template": {},
            "progressDeadlineSeconds": 2147483647, "strategy": {"type": "Recreate"}}});
        let spec = DeploymentSpec::from_deployment(&d).unwrap();
        assert_eq!(spec.progress_deadline_seconds, None);
        assert_eq!((spec.max_surge(), spec.max_unavailable()), (0, 0));
        let bad = json!({"metadata": {"name": "web"}, "spec": {"template": {}, "strategy": {"rollingUpdate": {"maxSurge": "x"}}}});
        assert!(DeploymentSpec::from_deployment(&bad).is_err());
    }

    #[test]
    fn pods_lead_to_their_deployment_by_name() {
        let pod = json!({"metadata": {"labels": {"pod-template-hash": "5d8f7c9b6"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "xgp-web-5d8f7c9b6", "uid": "u", "controller": true}]}});
        assert_eq!(deployment_of_pod(&pod), Some("xgp-web"));
        let stray = json!({"metadata": {"labels": {"pod-template-hash": "zz"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": true}]}});
        assert_eq!(deployment_of_pod(&stray), None);
    }
}
