//! The `Scheduler` reconciler: one key per pending pod. It reads the pod, brings the cache up
//! to date, picks a node, and binds: `spec.nodeName` (guarded by the pod's resourceVersion)
//! and the PodScheduled condition in one transaction, plus a `Scheduled` event. A pod that fits
//! nowhere gets PodScheduled=False (Unschedulable) and a `FailedScheduling` event, and is
//! tried again after a back-off, and whenever a node appears or changes in a way that matters
//! (labels, readiness, cordon, allocatable) or a bound pod goes away.

use super::cache::SchedulerCache;
use super::snapshot::{NodeSpec, PodRequirements};
use super::{Unschedulable, schedule};
use crate::api::{Kind, ObjectKey};
use crate::controller::events;
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, WatchEvent, WatchEventType};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The `source.component` of the scheduler's events, as in Kubernetes.
pub const COMPONENT: &str = "default-scheduler";
/// How long an unschedulable pod first waits before it is tried again without any node
/// change; the wait doubles with each failed attempt up to `UNSCHEDULABLE_RETRY_MAX` (node
/// changes retry pending pods at once, whatever their wait). Like kube-scheduler's back-off,
/// this keeps thousands of pods that fit nowhere from rewriting their events every few
/// seconds.
pub const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(5);
pub const UNSCHEDULABLE_RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait before the `attempt`-th retry (1-based) of an unschedulable pod.
pub fn unschedulable_retry(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(10);
    (UNSCHEDULABLE_RETRY * factor).min(UNSCHEDULABLE_RETRY_MAX)
}

#[derive(Default)]
pub struct Scheduler {
    cache: Mutex<SchedulerCache>,
    triggers: Mutex<Triggers>,
}

/// What `keys_for` remembers to turn node changes into retries of the pending pods.
#[derive(Default)]
struct Triggers {
    pending: BTreeSet<ObjectKey>,
    /// Failed attempts of each pending pod, for its back-off.
    attempts: HashMap<ObjectKey, u32>,
    /// The last seen spec of each node: heartbeats change nothing here and retry nothing.
    nodes: HashMap<String, NodeSpec>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for a node: not bound, not being deleted, not finished.
pub fn is_pending(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    crate::api::pod::node_name(pod).is_none()
        && !crate::api::pod::is_terminating(pod)
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    fn bind(
        &self,
        ctx: &Context,
        key: &ObjectKey,
        pod: &Value,
        node: &str,
        requirements: PodRequirements,
        cache: &mut SchedulerCache,
    ) -> Result<Action, ReconcileError> {
        let mut bound = pod.clone();
        match bound.get_mut("spec").and_then(Value::as_object_mut) {
            Some(spec) => {
                spec.insert("nodeName".into(), json!(node));
            }
            None => bound["spec"] = json!({"nodeName": node}),
        }
        let status = with_pod_scheduled(pod.get("status"), "True", None, None, &now(ctx));
        ctx.store.commit(vec![
            Op::Put {
                object: bound,
                expect_rv: resource_version(pod),
            },
            Op::PutStatus {
                key: key.clone(),
                status,
                expect_rv: None,
            },
        ])?;
        cache.assume(key, node, requirements);
        {
            let mut triggers = lock(&self.triggers);
            triggers.pending.remove(key);
            triggers.attempts.remove(key);
        }
        let message = format!(
            "Successfully assigned {}/{} to {node}",
            key.namespace, key.name
        );
        ctx.events
            .record(pod, events::NORMAL, "Scheduled", &message, COMPONENT)?;
        Ok(Action::Done)
    }

    fn reject(
        &self,
        ctx: &Context,
        key: &ObjectKey,
        pod: &Value,
        why: Unschedulable,
    ) -> Result<Action, ReconcileError> {
        let attempt = {
            let mut triggers = lock(&self.triggers);
            triggers.pending.insert(key.clone());
            let n = triggers.attempts.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let status = with_pod_scheduled(
            pod.get("status"),
            "False",
            Some("Unschedulable"),
            Some(&why.message),
            &now(ctx),
        );
        if pod.get("status") != Some(&status) {
            ctx.store.commit(vec![Op::PutStatus {
                key: key.clone(),
                status,
                expect_rv: resource_version(pod),
            }])?;
        }
        ctx.events.record(
            pod,
            events::WARNING,
            "FailedScheduling",
            &why.message,
            COMPONENT,
        )?;
        Ok(Action::RequeueAfter(unschedulable_retry(attempt)))
    }
}

impl Reconciler for Scheduler {
    fn wants(&self, kind: Kind, _event_type: WatchEventType) -> bool {
        matches!(kind, Kind::Pod | Kind::Node)
    }

    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let deleted = event.event_type == WatchEventType::Deleted;
        let object = &event.object;
        match object.get("kind").and_then(Value::as_str) {
            Some("Pod") => {
                let Some(key) = ObjectKey::of(object) else {
                    return Vec::new();
                };
                let mut triggers = lock(&self.triggers);
                if !deleted && is_pending(object) {
                    triggers.pending.insert(key.clone());
                    return vec![key];
                }
                triggers.pending.remove(&key);
                triggers.attempts.remove(&key);
                // A bound pod that goes away frees room on its node.
                if deleted && crate::api::pod::node_name(object).is_some() {
                    return triggers.pending.iter().cloned().collect();
                }
                Vec::new()
            }
            Some("Node") => {
                let Some(spec) = NodeSpec::of(object) else {
                    return Vec::new();
                };
                let mut triggers = lock(&self.triggers);
                if deleted {
                    triggers.nodes.remove(&spec.name);
                    return Vec::new();
                }
                let changed = triggers.nodes.get(&spec.name) != Some(&spec);
                if !changed {
                    return Vec::new();
                }
                triggers.nodes.insert(spec.name.clone(), spec);
                triggers.pending.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        let (pods, _) = ctx.store.list(Kind::Pod, None)?;
        let (nodes, _) = ctx.store.list(Kind::Node, None)?;
        let pending: BTreeSet<ObjectKey> = pods
            .iter()
            .filter(|p| is_pending(p))
            .filter_map(ObjectKey::of)
            .collect();
        {
            let mut triggers = lock(&self.triggers);
            triggers.pending = pending.clone();
            triggers.nodes = nodes
                .iter()
                .filter_map(NodeSpec::of)
                .map(|n| (n.name.clone(), n))
                .collect();
        }
        lock(&self.cache).invalidate();
        Ok(pending.into_iter().collect())
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        if key.kind != Kind::Pod {
            return Ok(Action::Done);
        }
        let pod = match ctx.store.get(key)? {
            Some(pod) if is_pending(&pod) => pod,
            _ => {
                {
                    let mut triggers = lock(&self.triggers);
                    triggers.pending.remove(key);
                    triggers.attempts.remove(key);
                }
                return Ok(Action::Done);
            }
        };
        let requirements = PodRequirements::of(&pod);
        let mut cache = lock(&self.cache);
        cache.sync(ctx.store.as_ref())?;
        match schedule(&requirements, cache.snapshot()) {
            Ok(node) => self.bind(ctx, key, &pod, &node, requirements, &mut cache),
            Err(why) => {
                drop(cache);
                self.reject(ctx, key, &pod, why)
            }
        }
    }
}

fn now(ctx: &Context) -> String {
    let t = ctx.clock.now();
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

fn resource_version(object: &Value) -> Option<u64> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
}

/// The pod's status with its PodScheduled condition set; `lastTransitionTime` moves only when
/// the condition's status changes, and an unchanged condition leaves the status as it was.
/// A status without a phase gets `Pending`, as the API server gives new pods.
pub fn with_pod_scheduled(
    status: Option<&Value>,
    condition_status: &str,
    reason: Option<&str>,
    message: Option<&str>,
    now: &str,
) -> Value {
    let mut status = match status {
        Some(Value::Object(s)) => Value::Object(s.clone()),
        _ => json!({}),
    };
    if status.get("phase").is_none() {
        status["phase"] = json!("Pending");
    }
    let mut condition = json!({
        "type": "PodScheduled",
        "status": condition_status,
        "lastProbeTime": null,
        "lastTransitionTime": now,
    });
    if let Some(reason) = reason {
        condition["reason"] = json!(reason);
    }
    if let Some(message) = message {
        condition["message"] = json!(message);
    }
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) else {
        return status;
    };
    match conditions.iter_mut().find(|c| c["type"] == "PodScheduled") {
        Some(old) => {
            let same = |field: &str| old.get(field) == condition.get(field);
            if same("status") && same("reason") && same("message") {
                return status;
            }
            if same("status")
                && let Some(t) = old.get("lastTransitionTime")
            {
                condition["lastTransitionTime"] = t.clone();
            }
            *old = condition;
        }
        None => conditions.insert(0, condition),
    }
    status
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn unschedulable_retries_double_up_to_five_minutes() {
        assert_eq!(unschedulable_retry(1), Duration::from_secs(5));
        assert_eq!(unschedulable_retry(2), Duration::from_secs(10));
        assert_eq!(unschedulable_retry(4), Duration::from_secs(40));
        assert_eq!(unschedulable_retry(7), Duration::from_secs(300));
        assert_eq!(unschedulable_retry(40), Duration::from_secs(300));
    }
}
