//! The ReplicaSet controller, as Kubernetes' `pkg/controller/replicaset`: keeps
//! `spec.replicas` active pods that match the selector, adopting matching orphans and
//! releasing pods that stopped matching, replaces finished pods, and reports the status
//! counts. The decisions are pure functions: which pods a ReplicaSet claims (`claim`), which
//! go first on scale-down (`deletion_order`, `pods_to_delete`), how many pods each write
//! creates (`slow_start_batches`), and the status (`replica_set_status`).

use crate::api::pod::{self, controller_of, is_active, is_ready, is_terminating, node_name};
use crate::api::selector::{Requirement, Selector};
use crate::api::{Kind, ObjectKey, ObjectMeta};
use crate::controller::events;
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, StoreError, WatchEvent, WatchEventType};
use serde_json::{Map, Value, json};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The `source.component` of the events this controller records.
pub const COMPONENT: &str = "replicaset-controller";
/// Kubernetes' `burstReplicas`: at most this many pods created or deleted per reconcile, so
/// that one huge scale cannot starve the other ReplicaSets.
pub const BURST_REPLICAS: usize = 500;
/// Pods with a lower cost (an int32 annotation) are deleted first on scale-down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Kubernetes' name generator alphabet: no vowels (no words), no look-alikes (0/o, 1/l, 3/e).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Names are at most 63 characters; 5 go to the random suffix.
const MAX_GENERATED_PREFIX: usize = 58;
/// How often a batch of pods is retried with fresh names when a name is taken.
const NAME_ATTEMPTS: usize = 5;
/// The pod spec's `terminationGracePeriodSeconds` default.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Keeps the pods of every ReplicaSet at `spec.replicas`.
#[derive(Default)]
pub struct ReplicaSetController {
    /// The selector of each ReplicaSet seen, so that an event about an orphan pod can name the
    /// ReplicaSets that may adopt it without reading the store.
    selectors: Mutex<HashMap<ObjectKey, Selector>>,
}

impl ReplicaSetController {
    pub fn new() -> Self {
        Self::default()
    }

    fn selectors(&self) -> MutexGuard<'_, HashMap<ObjectKey, Selector>> {
        self.selectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_selector(&self, key: &ObjectKey, replica_set: &Value) {
        match label_selector(replica_set.pointer("/spec/selector")) {
            Some(selector) => self.selectors().insert(key.clone(), selector),
            None => self.selectors().remove(key),
        };
    }
}

impl Reconciler for ReplicaSetController {
    fn wants(&self, kind: Kind, _event_type: WatchEventType) -> bool {
        matches!(kind, Kind::ReplicaSet | Kind::Pod)
    }

    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let object = &event.object;
        let Some(key) = ObjectKey::of(object) else {
            return Vec::new();
        };
        match key.kind {
            Kind::ReplicaSet => {
                if event.event_type == WatchEventType::Deleted {
                    self.selectors().remove(&key);
                } else {
                    self.remember_selector(&key, object);
                }
                vec![key]
            }
            Kind::Pod => match controller_of(object) {
                Some(("ReplicaSet", owner, _)) => {
                    vec![ObjectKey::new(Kind::ReplicaSet, &key.namespace, owner)]
                }
                Some(_) => Vec::new(),
                None if event.event_type == WatchEventType::Deleted || !is_active(object) => {
                    Vec::new()
                }
                None => {
                    let labels = object.labels();
                    self.selectors()
                        .iter()
                        .filter(|(rs, selector)| {
                            rs.namespace == key.namespace && selector.matches(labels)
                        })
                        .map(|(rs, _)| rs.clone())
                        .collect()
                }
            },
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        let (replica_sets, _) = ctx.store.list(Kind::ReplicaSet, None)?;
        self.selectors().clear();
        let mut keys = Vec::with_capacity(replica_sets.len());
        for rs in &replica_sets {
            if let Some(key) = ObjectKey::of(rs) {
                self.remember_selector(&key, rs);
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        let Some(mut rs) = ctx.store.get(key)? else {
            // Deleted: its pods are the garbage collector's.
            return Ok(Action::Done);
        };
        let now = ctx.clock.now();
        // Its own pods, and orphans it may adopt: pods of other controllers are never its.
        let uid = rs.meta_str("uid").unwrap_or_default();
        let mut pods = ctx.store.list_owned(Kind::Pod, &key.namespace, uid)?;
        pods.extend(ctx.store.list_owned(Kind::Pod, &key.namespace, "")?);
        let owned = claim_pods(&rs, pods, ctx)?;

        let (mut active, finished): (Vec<Value>, Vec<Value>) =
            owned.into_iter().partition(is_active);
        // Failed or Succeeded pods never run again under restartPolicy Never/OnFailure: they
        // are removed, and the count below replaces them.
        let finished: Vec<Value> = finished
            .into_iter()
            .filter(|p| !is_terminating(p))
            .collect();

        let desired = desired_replicas(&rs);
        let mut removed = finished;
        if active.len() > desired {
            let related = related_active_pods(&rs, &active, ctx)?;
            let surplus = (active.len() - desired).min(BURST_REPLICAS);
            let chosen: Vec<String> = pods_to_delete(&active, &related, surplus)
                .into_iter()
                .filter_map(|p| p.meta_str("name").map(str::to_string))
                .collect();
            let (gone, kept): (Vec<Value>, Vec<Value>) = active.into_iter().partition(|p| {
                p.meta_str("name")
                    .is_some_and(|n| chosen.iter().any(|c| c == n))
            });
            active = kept;
            removed.extend(gone);
        }
        delete_pods(&rs, &removed, now, ctx)?;

        let mut failure = None;
        if active.len() < desired {
            let want = (desired - active.len()).min(BURST_REPLICAS);
            let taken = active
                .iter()
                .chain(&removed)
                .filter_map(|p| p.meta_str("name").map(str::to_string))
                .collect();
            let created = create_pods(&mut rs, &active, want, taken, now, ctx);
            if created.conflict {
                // The ReplicaSet changed since it was read (scaled down, most often): its pods
                // are decided again from its new spec.
                return Err(ReconcileError::Conflict(format!(
                    "{key} changed while its pods were created"
                )));
            }
            active.extend(created.pods);
            if let Some(error) = created.error {
                let message = format!("Error creating: {error}");
                record(ctx, &rs, events::WARNING, "FailedCreate", &message);
                failure = Some(ReplicaFailure {
                    reason: "FailedCreate".to_string(),
                    message,
                });
            }
        }

        let status = replica_set_status(&rs, &active, now, failure.as_ref());
        if rs.get("status") != Some(&status) {
            ctx.store.commit(vec![Op::PutStatus {
                key: key.clone(),
                status,
                expect_rv: Some(rs.resource_version()),
            }])?;
        }
        if let Some(failure) = failure {
            return Err(ReconcileError::Other(format!("{key}: {}", failure.message)));
        }
        Ok(
            match until_available(&active, min_ready_seconds(&rs), now) {
                Some(wait) => Action::RequeueAfter(wait),
                None => Action::Done,
            },
        )
    }
}

/// `spec.replicas`, 1 when unset (the Kubernetes default).
fn desired_replicas(rs: &Value) -> usize {
    rs.pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn min_ready_seconds(rs: &Value) -> i64 {
    rs.pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// A Kubernetes `LabelSelector` (`matchLabels`, `matchExpressions`) as a `Selector`. `None` for
/// a missing, empty or malformed one: such a ReplicaSet selects nothing rather than everything.
pub fn label_selector(selector: Option<&Value>) -> Option<Selector> {
    let selector = selector?;
    let mut requirements = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        requirements.extend(Selector::from_labels(labels).0);
    }
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    for expression in expressions.into_iter().flatten() {
        let key = expression.get("key")?.as_str()?.to_string();
        let values = expression
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        requirements.push(match expression.get("operator")?.as_str()? {
            "In" => Requirement::In(key, values),
            "NotIn" => Requirement::NotIn(key, values),
            "Exists" => Requirement::Exists(key),
            "DoesNotExist" => Requirement::NotExists(key),
            _ => return None,
        });
    }
    (!requirements.is_empty()).then_some(Selector(requirements))
}

// ---------------------------------------------------------------------------------------------
// Claiming pods (Kubernetes' ControllerRefManager.ClaimPods).

/// What a ReplicaSet does with one pod of its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by this ReplicaSet and still matching.
    Keep,
    /// An orphan that matches: becomes this ReplicaSet's.
    Adopt,
    /// Controlled by this ReplicaSet but no longer matching: let go (labels were edited).
    Release,
    /// Someone else's, or not a candidate.
    Ignore,
}

/// Decides what the ReplicaSet with uid `owner_uid` and `selector` (`None`: selects nothing)
/// does with `pod`. Terminating pods are neither adopted nor released, as in Kubernetes.
pub fn claim(owner_uid: &str, selector: Option<&Selector>, pod: &Value) -> Claim {
    let matches = selector.is_some_and(|s| s.matches(pod.labels()));
    match controller_of(pod) {
        Some((_, _, uid)) if uid == owner_uid => {
            if matches || is_terminating(pod) {
                Claim::Keep
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches && is_active(pod) => Claim::Adopt,
        None => Claim::Ignore,
    }
}

/// Adopts and releases pods as `claim` decides, in one transaction; returns the pods this
/// ReplicaSet controls afterwards.
fn claim_pods(rs: &Value, pods: Vec<Value>, ctx: &Context) -> Result<Vec<Value>, ReconcileError> {
    let uid = rs.meta_str("uid").unwrap_or_default();
    let selector = label_selector(rs.pointer("/spec/selector"));
    let mut owned = Vec::new();
    let mut changes = Vec::new();
    for pod in pods {
        match claim(uid, selector.as_ref(), &pod) {
            Claim::Keep => owned.push(pod),
            Claim::Adopt => changes.push(put_owner_references(&pod, |refs| {
                refs.push(pod::owner_reference(rs));
            })),
            Claim::Release => changes.push(put_owner_references(&pod, |refs| {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            })),
            Claim::Ignore => {}
        }
    }
    if changes.is_empty() {
        return Ok(owned);
    }
    let committed = ctx.store.commit(changes)?;
    owned.extend(
        committed
            .objects
            .into_iter()
            .filter(|p| matches!(controller_of(p), Some((_, _, u)) if u == uid)),
    );
    owned.sort_by(|a, b| a.meta_str("name").cmp(&b.meta_str("name")));
    Ok(owned)
}

/// A guarded Put of `pod` with its ownerReferences edited by `edit`.
fn put_owner_references(pod: &Value, edit: impl FnOnce(&mut Vec<Value>)) -> Op {
    let mut changed = pod.clone();
    if let Some(meta) = changed.get_mut("metadata").and_then(Value::as_object_mut) {
        let mut refs = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        edit(&mut refs);
        if refs.is_empty() {
            meta.remove("ownerReferences");
        } else {
            meta.insert("ownerReferences".into(), Value::Array(refs));
        }
    }
    Op::Put {
        object: changed,
        expect_rv: Some(pod.resource_version()),
    }
}

// ---------------------------------------------------------------------------------------------
// Scaling down (Kubernetes' getPodsToDelete and ActivePodsWithRanks).

/// The active pods that share nodes with this ReplicaSet's pods and belong to the same
/// workload: the pods of every ReplicaSet with the same controlling owner (the Deployment's
/// old and new ReplicaSets), or only this one's when it has no owner.
fn related_active_pods(
    rs: &Value,
    own_active: &[Value],
    ctx: &Context,
) -> Result<Vec<Value>, ReconcileError> {
    let Some((_, _, owner_uid)) = controller_of(rs) else {
        return Ok(own_active.to_vec());
    };
    let namespace = rs.meta_str("namespace").unwrap_or("default");
    let siblings = ctx
        .store
        .list_owned(Kind::ReplicaSet, namespace, owner_uid)?;
    let mut related = Vec::new();
    for uid in siblings.iter().filter_map(|s| s.meta_str("uid")) {
        related.extend(
            ctx.store
                .list_owned(Kind::Pod, namespace, uid)?
                .into_iter()
                .filter(is_active),
        );
    }
    Ok(related)
}

/// The `count` pods of `candidates` to delete first. A pod's rank is the number of active
/// `related` pods on its node: doubled-up pods go before lone ones, which spreads the
/// survivors.
pub fn pods_to_delete<'a>(
    candidates: &'a [Value],
    related: &[Value],
    count: usize,
) -> Vec<&'a Value> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_active(p)) {
        *per_node.entry(node_name(pod).unwrap_or("")).or_default() += 1;
    }
    let mut ranked: Vec<(&Value, usize)> = candidates
        .iter()
        .map(|p| {
            let colocated = per_node
                .get(node_name(p).unwrap_or(""))
                .copied()
                .unwrap_or(0);
            (p, colocated)
        })
        .collect();
    ranked.sort_by(|(a, ra), (b, rb)| deletion_order(a, *ra, b, *rb));
    ranked.into_iter().take(count).map(|(p, _)| p).collect()
}

/// Which of two pods to delete first (`Less`: `a`), as Kubernetes ranks them:
/// 1. not yet on a node before bound;
/// 2. Pending before Unknown before Running;
/// 3. not ready before ready;
/// 4. lower `controller.kubernetes.io/pod-deletion-cost` first;
/// 5. more pods of the workload on the same node (`colocated`) first;
/// 6. both ready: ready for a shorter time first;
/// 7. more container restarts first;
/// 8. newer first;
///
/// then by name, so that the choice is the same on every run.
///
/// Kubernetes compares the times of rules 6 and 8 on a logarithmic scale when its
/// LogarithmicScaleDown gate is on; tend compares them exactly.
pub fn deletion_order(a: &Value, a_colocated: usize, b: &Value, b_colocated: usize) -> Ordering {
    let ready_since = |p: &Value| is_ready(p).then(|| ready_transition(p)).flatten();
    node_name(a)
        .is_some()
        .cmp(&node_name(b).is_some())
        .then_with(|| phase_ordinal(a).cmp(&phase_ordinal(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
        .then_with(|| b_colocated.cmp(&a_colocated))
        .then_with(|| {
            if is_ready(a) && is_ready(b) {
                newest_first(ready_since(a), ready_since(b))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| max_restarts(b).cmp(&max_restarts(a)))
        .then_with(|| newest_first(created_at(a), created_at(b)))
        .then_with(|| a.meta_str("name").cmp(&b.meta_str("name")))
}

/// Unknown times first (Kubernetes' afterOrZero), then the later one.
fn newest_first(a: Option<jiff::Timestamp>, b: Option<jiff::Timestamp>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(&a),
    }
}

/// Pending 0, Unknown 1, Running 2; any other phase counts as Pending, as in Kubernetes.
fn phase_ordinal(pod: &Value) -> u8 {
    match pod.pointer("/status/phase").and_then(Value::as_str) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Value) -> i32 {
    pod.annotation(POD_DELETION_COST)
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Value) -> u64 {
    pod.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("restartCount").and_then(Value::as_u64))
        .max()
        .unwrap_or(0)
}

fn created_at(pod: &Value) -> Option<jiff::Timestamp> {
    pod.meta_str("creationTimestamp")?.parse().ok()
}

fn ready_transition(pod: &Value) -> Option<jiff::Timestamp> {
    pod.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?
        .get("lastTransitionTime")?
        .as_str()?
        .parse()
        .ok()
}

/// How to delete `pod` gracefully (see `api::pod`): a pod on a node gets a deletionTimestamp
/// `terminationGracePeriodSeconds` from `now` (as the API server sets it) for its node to act
/// on; a pod on no node is deleted at once. `None` when it is already terminating.
pub fn pod_deletion(pod: &Value, now: jiff::Timestamp) -> Option<Op> {
    if is_terminating(pod) {
        return None;
    }
    let key = ObjectKey::of(pod)?;
    let expect_rv = Some(pod.resource_version());
    if node_name(pod).is_none() {
        return Some(Op::Delete { key, expect_rv });
    }
    let grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0);
    let deadline = now
        .checked_add(jiff::SignedDuration::from_secs(grace))
        .unwrap_or(now);
    let mut marked = pod.clone();
    let meta = marked.get_mut("metadata")?.as_object_mut()?;
    meta.insert("deletionTimestamp".into(), json!(rfc3339(deadline)));
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    Some(Op::Put {
        object: marked,
        expect_rv,
    })
}

/// Deletes `pods` (gracefully) in one transaction and records an event for each.
fn delete_pods(
    rs: &Value,
    pods: &[Value],
    now: jiff::Timestamp,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let deletions: Vec<(Op, &str)> = pods
        .iter()
        .filter_map(|p| Some((pod_deletion(p, now)?, p.meta_str("name")?)))
        .collect();
    if deletions.is_empty() {
        return Ok(());
    }
    let (ops, names): (Vec<Op>, Vec<&str>) = deletions.into_iter().unzip();
    ctx.store.commit(ops)?;
    for name in names {
        record(
            ctx,
            rs,
            events::NORMAL,
            "SuccessfulDelete",
            &format!("Deleted pod: {name}"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scaling up.

/// Batch sizes for creating `count` pods with Kubernetes' slow start (1, 2, 4, ...): a
/// ReplicaSet whose pods all fail to be created fails after one attempt, not `count`.
///
/// Example: 10 pods -> [1, 2, 4, 3].
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let (mut remaining, mut size) = (count, 1usize);
    while remaining > 0 {
        let batch = size.min(remaining);
        batches.push(batch);
        remaining -= batch;
        size = size.saturating_mul(2);
    }
    batches
}

/// `<replicaset>-`, cut so that the generated name stays within 63 characters.
pub fn generated_name_prefix(replica_set: &str) -> String {
    format!("{replica_set}-")
        .chars()
        .take(MAX_GENERATED_PREFIX)
        .collect()
}

/// Five random characters from Kubernetes' name alphabet.
pub fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())]))
        .collect()
}

/// The pod `rs` creates under `name`: the template's labels, annotations and spec, an
/// ownerReference to `rs`, phase Pending.
pub fn pod_from_template(rs: &Value, name: &str) -> Value {
    let template = rs.pointer("/spec/template");
    let template_meta = |field: &str| {
        template
            .and_then(|t| t.pointer(&format!("/metadata/{field}")))
            .filter(|v| v.is_object())
            .cloned()
    };
    let rs_name = rs.meta_str("name").unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    metadata.insert("generateName".into(), json!(generated_name_prefix(rs_name)));
    metadata.insert(
        "namespace".into(),
        json!(rs.meta_str("namespace").unwrap_or("default")),
    );
    metadata.insert(
        "labels".into(),
        template_meta("labels").unwrap_or_else(|| json!({})),
    );
    if let Some(annotations) = template_meta("annotations") {
        metadata.insert("annotations".into(), annotations);
    }
    metadata.insert("ownerReferences".into(), json!([pod::owner_reference(rs)]));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.and_then(|t| t.get("spec")).cloned().unwrap_or_else(|| json!({})),
        "status": {"phase": "Pending"},
    })
}

struct Created {
    pods: Vec<Value>,
    /// Why creation stopped early.
    error: Option<String>,
    /// The ReplicaSet changed since it was read: nothing more was created.
    conflict: bool,
}

/// Creates `count` pods for `rs` in slow-start batches, avoiding the names in `taken`; stops
/// at the first batch that fails. Each batch is one transaction with the ReplicaSet's status
/// counting the new pods, guarded by the ReplicaSet's resourceVersion: pods are only made for
/// the spec they were decided from (a scale-down committed meanwhile makes the batch a
/// conflict, not a surplus pod), and `status.replicas` is never behind the pods that exist,
/// which the Deployment controller relies on to bound a surge (`pods_held`). `rs` follows the
/// stored ReplicaSet.
fn create_pods(
    rs: &mut Value,
    active: &[Value],
    count: usize,
    mut taken: Vec<String>,
    now: jiff::Timestamp,
    ctx: &Context,
) -> Created {
    let prefix = generated_name_prefix(rs.meta_str("name").unwrap_or_default());
    let mut pods: Vec<Value> = Vec::new();
    for batch in slow_start_batches(count) {
        let mut attempt = 0;
        let committed = loop {
            attempt += 1;
            let batch_pods: Vec<Value> = (0..batch)
                .map(|_| {
                    let name = unused_name(&prefix, &taken);
                    taken.push(name.clone());
                    pod_from_template(rs, &name)
                })
                .collect();
            let counted: Vec<Value> = active
                .iter()
                .chain(&pods)
                .chain(&batch_pods)
                .cloned()
                .collect();
            let mut ops: Vec<Op> = batch_pods.into_iter().map(Op::Create).collect();
            if let Some(key) = ObjectKey::of(rs) {
                ops.push(Op::PutStatus {
                    key,
                    status: replica_set_status(rs, &counted, now, None),
                    expect_rv: Some(rs.resource_version()),
                });
            }
            match ctx.store.commit(ops) {
                // Someone else took a name between our list and this write: draw again.
                Err(StoreError::AlreadyExists { .. }) if attempt < NAME_ATTEMPTS => continue,
                result => break result,
            }
        };
        match committed {
            Ok(mut committed) => {
                if committed.objects.len() > batch
                    && let Some(stored) = committed.objects.pop()
                {
                    *rs = stored;
                }
                for pod in &committed.objects {
                    let name = pod.meta_str("name").unwrap_or_default();
                    record(
                        ctx,
                        rs,
                        events::NORMAL,
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                    );
                }
                pods.extend(committed.objects);
            }
            Err(StoreError::Conflict { .. }) => {
                return Created {
                    pods,
                    error: None,
                    conflict: true,
                };
            }
            Err(error) => {
                return Created {
                    pods,
                    error: Some(error.to_string()),
                    conflict: false,
                };
            }
        }
    }
    Created {
        pods,
        error: None,
        conflict: false,
    }
}

fn unused_name(prefix: &str, taken: &[String]) -> String {
    loop {
        let name = format!("{prefix}{}", random_suffix());
        if !taken.contains(&name) {
            return name;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status.

/// Why pods could not be created or deleted (the ReplicaFailure condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFailure {
    pub reason: String,
    pub message: String,
}

/// The status of `rs` given its active pods: replicas, fullyLabeledReplicas (pods carrying
/// every template label), readyReplicas, availableReplicas (ready for minReadySeconds at
/// `now`), observedGeneration, and the ReplicaFailure condition while `failure` lasts (an
/// existing one is kept as it was, with its transition time).
pub fn replica_set_status(
    rs: &Value,
    active: &[Value],
    now: jiff::Timestamp,
    failure: Option<&ReplicaFailure>,
) -> Value {
    let template_labels = rs
        .pointer("/spec/template/metadata/labels")
        .and_then(Value::as_object);
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels.is_none_or(|wanted| {
                wanted
                    .iter()
                    .all(|(k, v)| p.labels().and_then(|l| l.get(k)) == Some(v))
            })
        })
        .count();
    let min_ready = min_ready_seconds(rs);
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pod::is_available(p, min_ready, now))
        .count();

    let mut conditions: Vec<Value> = rs
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_failure = |c: &Value| c.get("type").and_then(Value::as_str) == Some("ReplicaFailure");
    match failure {
        Some(failure) if !conditions.iter().any(is_failure) => conditions.push(json!({
            "type": "ReplicaFailure",
            "status": "True",
            "reason": failure.reason,
            "message": failure.message,
            "lastTransitionTime": rfc3339(now),
        })),
        Some(_) => {}
        None => conditions.retain(|c| !is_failure(c)),
    }

    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0),
    });
    if !conditions.is_empty()
        && let Some(fields) = status.as_object_mut()
    {
        fields.insert("conditions".into(), Value::Array(conditions));
    }
    status
}

/// How long until the next ready pod becomes available, when one is ready but has not been
/// for `min_ready_seconds` yet: nothing else would wake the controller to count it.
pub fn until_available(
    active: &[Value],
    min_ready_seconds: i64,
    now: jiff::Timestamp,
) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    active
        .iter()
        .filter(|p| is_ready(p) && !pod::is_available(p, min_ready_seconds, now))
        .map(|p| {
            let waited = ready_transition(p).map_or(0, |t| now.as_second() - t.as_second());
            (min_ready_seconds - waited).max(1)
        })
        .min()
        .map(|secs| Duration::from_secs(secs.unsigned_abs()))
}

fn rfc3339(t: jiff::Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

/// Events are best effort: a failure to record one does not undo the work it describes.
fn record(ctx: &Context, rs: &Value, event_type: &str, reason: &str, message: &str) {
    if let Err(e) = ctx
        .events
        .record(rs, event_type, reason, message, COMPONENT)
    {
        tracing::warn!("recording event {reason} ({message}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_since: Option<&str>) -> Value {
        let mut p = json!({
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {},
            "status": {"phase": phase},
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        if let Some(t) = ready_since {
            p["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        p
    }

    fn names(pods: Vec<&Value>) -> Vec<&str> {
        pods.into_iter()
            .map(|p| p.meta_str("name").unwrap_or("?"))
            .collect()
    }

    #[test]
    fn deletion_prefers_unbound_then_pending_then_not_ready() {
        let t = Some("2026-01-01T00:00:00Z");
        let pods = vec![
            pod("running-ready", Some("n1"), "Running", t),
            pod("unbound", None, "Pending", None),
            pod("running-not-ready", Some("n2"), "Running", None),
            pod("pending-bound", Some("n3"), "Pending", None),
            pod("unknown", Some("n4"), "Unknown", None),
        ];
        assert_eq!(
            names(pods_to_delete(&pods, &pods, 5)),
            [
                "unbound",
                "pending-bound",
                "unknown",
                "running-not-ready",
                "running-ready"
            ]
        );
    }

    #[test]
    fn deletion_among_ready_pods_uses_cost_colocation_ready_time_restarts_age() {
        let mut cheap = pod("cheap", Some("n1"), "Running", Some("2026-01-01T00:00:00Z"));
        cheap["metadata"]["annotations"] = json!({POD_DELETION_COST: "-5"});
        let doubled_a = pod(
            "doubled-a",
            Some("n2"),
            "Running",
            Some("2026-01-01T00:00:00Z"),
        );
        let doubled_b = pod(
            "doubled-b",
            Some("n2"),
            "Running",
            Some("2026-01-01T00:00:00Z"),
        );
        let fresh = pod("fresh", Some("n3"), "Running", Some("2026-01-01T00:10:00Z"));
        let old = pod("old", Some("n4"), "Running", Some("2026-01-01T00:00:00Z"));
        let mut crashy = pod(
            "crashy",
            Some("n5"),
            "Running",
            Some("2026-01-01T00:00:00Z"),
        );
        crashy["status"]["containerStatuses"] = json!([{"name": "c", "restartCount": 4}]);
        let mut newer = pod("newer", Some("n6"), "Running", Some("2026-01-01T00:00:00Z"));
        newer["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:01Z");
        let pods = vec![old, crashy, fresh, doubled_a, newer, cheap, doubled_b];
        assert_eq!(
            names(pods_to_delete(&pods, &pods, 7)),
            [
                "cheap",
                "doubled-a",
                "doubled-b",
                "fresh",
                "crashy",
                "newer",
                "old"
            ]
        );
        assert_eq!(
            names(pods_to_delete(&pods, &pods, 2)),
            ["cheap", "doubled-a"]
        );
    }

    #[test]
    fn slow_start_doubles_batches() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(3), [1, 2]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(16).iter().sum::<usize>(), 16);
    }

    #[test]
    fn names_are_prefix_plus_five_safe_characters() {
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|b| NAME_ALPHABET.contains(&b)));
        let long = "x".repeat(70);
        assert_eq!(generated_name_prefix(&long).len(), 58);
        assert_eq!(generated_name_prefix("web-5d8f7c9b6"), "web-5d8f7c9b6-");
    }

    #[test]
    fn claims_adopt_matching_orphans_and_release_mismatches() {
        let selector = label_selector(Some(&json!({"matchLabels": {"app": "web"}})));
        let selector = selector.as_ref();
        let mut orphan = pod("o", None, "Pending", None);
        orphan["metadata"]["labels"] = json!({"app": "web"});
        assert_eq!(claim("u1", selector, &orphan), Claim::Adopt);
        let mut owned = orphan.clone();
        owned["metadata"]["ownerReferences"] =
            json!([{"kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": true}]);
        assert_eq!(claim("u1", selector, &owned), Claim::Keep);
        assert_eq!(claim("u2", selector, &owned), Claim::Ignore);
        owned["metadata"]["labels"] = json!({"app": "debug"});
        assert_eq!(claim("u1", selector, &owned), Claim::Release);
        let mut failed = orphan.clone();
        failed["status"]["phase"] = json!("Failed");
        assert_eq!(claim("u1", selector, &failed), Claim::Ignore);
        assert_eq!(claim("u1", None, &orphan), Claim::Ignore);
    }

    #[test]
    fn selectors_with_expressions() {
        let s = label_selector(Some(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        })))
        .unwrap();
        assert!(s.matches(json!({"app": "web", "tier": "b"}).as_object()));
        assert!(!s.matches(json!({"app": "web", "tier": "b", "canary": "1"}).as_object()));
        assert!(label_selector(Some(&json!({}))).is_none());
        assert!(label_selector(None).is_none());
    }

    #[test]
    fn graceful_deletion_marks_bound_pods_and_deletes_unbound() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut bound = pod("b", Some("n1"), "Running", None);
        bound["spec"]["terminationGracePeriodSeconds"] = json!(10);
        match pod_deletion(&bound, now) {
            Some(Op::Put { object, .. }) => {
                assert_eq!(
                    object["metadata"]["deletionTimestamp"],
                    "2026-01-01T00:00:10Z"
                );
                assert_eq!(object["metadata"]["deletionGracePeriodSeconds"], 10);
                assert!(pod_deletion(&object, now).is_none());
            }
            other => panic!("expected a Put, got {other:?}"),
        }
        assert!(matches!(
            pod_deletion(&pod("u", None, "Pending", None), now),
            Some(Op::Delete { .. })
        ));
    }

    #[test]
    fn availability_wait_is_the_shortest_remaining() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let pods = vec![
            pod("a", Some("n"), "Running", Some("2026-01-01T00:00:00Z")),
            pod("b", Some("n"), "Running", Some("2026-01-01T00:00:07Z")),
            pod("c", Some("n"), "Running", None),
        ];
        assert_eq!(
            until_available(&pods, 15, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(until_available(&pods, 5, now), Some(Duration::from_secs(2)));
        assert_eq!(until_available(&pods, 0, now), None);
    }
}
