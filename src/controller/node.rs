//! The node lifecycle controller: gives every Node a /24 pod CIDR, notices nodes that stopped
//! heartbeating, and evicts the pods of nodes that stay NotReady so that their ReplicaSets
//! replace them elsewhere.
//!
//! - **Pod CIDRs.** Each node gets the lowest free /24 of `--pod-cidr` in `spec.podCIDR` and
//!   `spec.podCIDRs`. An allocation belongs to the node name for the life of the controller,
//!   even if the Node object goes away and comes back; on start the allocations are rebuilt
//!   from the stored Nodes, so a node keeps its CIDR across control-plane restarts too (as
//!   long as its Node object exists).
//! - **Heartbeats.** A node's agent posts its status (Ready `True` and `lastHeartbeatTime`)
//!   every few seconds. A node whose last heartbeat is older than `node_grace` is marked
//!   Ready=`Unknown` (`NodeStatusUnknown`, "Kubelet stopped posting node status.") with a
//!   `NodeNotReady` event, as Kubernetes' node lifecycle controller does. Each node is
//!   requeued at its heartbeat deadline. When the agent posts again, the node is Ready.
//! - **Eviction.** Once a node has been NotReady (`False` or `Unknown`) for `node_grace`, its
//!   pods are deleted outright (not gracefully: nobody is left to stop them), each with a
//!   `NodeNotReady` event naming the node.
//! - **Labels.** Node labels belong to the control plane (`tend label nodes`), not to the
//!   agent: an agent creates its Node with its `--labels` only when the Node does not exist,
//!   and afterwards, restarts included, only writes its status. This controller writes only
//!   `spec.podCIDR(s)` and the Ready condition, so admin labels survive both.

use crate::api::pod;
use crate::api::{Kind, ObjectKey, ObjectMeta};
use crate::controller::events;
use crate::controller::runtime::{Action, Context, ReconcileError, Reconciler};
use crate::store::{Op, StoreError, WatchEvent, WatchEventType};
use jiff::Timestamp;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

const COMPONENT: &str = "node-controller";
/// What Kubernetes writes on a node whose kubelet went silent.
pub const STALE_REASON: &str = "NodeStatusUnknown";
pub const STALE_MESSAGE: &str = "Kubelet stopped posting node status.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("--pod-cidr {cidr:?}: {reason}")]
    InvalidPodCidr { cidr: String, reason: String },
}

/// The range node CIDRs are cut from: an IPv4 network of prefix /24 or shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodCidrRange {
    base: u32,
    prefix: u8,
}

/// Every node gets a /24: 254 pod addresses, as kube-controller-manager's default.
const NODE_PREFIX: u8 = 24;

impl PodCidrRange {
    pub fn parse(cidr: &str) -> Result<PodCidrRange, NodeError> {
        let err = |reason: &str| NodeError::InvalidPodCidr {
            cidr: cidr.to_string(),
            reason: reason.to_string(),
        };
        let (addr, prefix) = cidr
            .trim()
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX, e.g. 10.244.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix is not a number"))?;
        if prefix > NODE_PREFIX {
            return Err(err(
                "the prefix must be /24 or shorter (each node gets a /24)",
            ));
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(PodCidrRange {
            base: u32::from(addr) & mask,
            prefix,
        })
    }

    /// How many /24s the range holds (a /16 holds 256).
    pub fn subnets(&self) -> u32 {
        1u32 << (NODE_PREFIX - self.prefix)
    }

    /// The `index`-th /24, e.g. 3 -> `10.244.3.0/24`.
    pub fn subnet(&self, index: u32) -> String {
        let addr = Ipv4Addr::from(self.base.wrapping_add(index << 8));
        format!("{addr}/{NODE_PREFIX}")
    }

    /// The index of `cidr` when it is one of this range's /24s.
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let (addr, prefix) = cidr.split_once('/')?;
        if prefix != "24" {
            return None;
        }
        let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
        let offset = addr.checked_sub(self.base)?;
        (offset & 0xff == 0 && (offset >> 8) < self.subnets()).then_some(offset >> 8)
    }
}

/// The lowest index below `count` that is not taken.
pub fn lowest_free(taken: &BTreeMap<u32, String>, count: u32) -> Option<u32> {
    (0..count).find(|i| !taken.contains_key(i))
}

/// What a node's Ready condition says at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Ready and posting in time: look again at `recheck_at`, when its heartbeat goes stale.
    Ready { recheck_at: Timestamp },
    /// Its last heartbeat is older than the grace, and it is not yet marked Unknown.
    Stale,
    /// Not Ready (`False` from its agent, or `Unknown`) since `since`; if it still posts,
    /// its heartbeat goes stale at `recheck_at`.
    NotReady {
        since: Timestamp,
        recheck_at: Option<Timestamp>,
    },
}

fn timestamp(v: Option<&Value>) -> Option<Timestamp> {
    v?.as_str()?.parse().ok()
}

/// The `Ready` condition of a Node (or Pod).
pub fn ready_condition(object: &Value) -> Option<&Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

/// Judges a node by its Ready condition. A node that never posted a status counts from its
/// creation, so an agent that registers and dies is noticed too.
pub fn assess(node: &Value, now: Timestamp, grace: Duration) -> Health {
    let ready = ready_condition(node);
    let status = ready
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let heartbeat = ready
        .and_then(|c| timestamp(c.get("lastHeartbeatTime")))
        .or_else(|| timestamp(node.pointer("/metadata/creationTimestamp")))
        .unwrap_or(now);
    let deadline = heartbeat.checked_add(grace).unwrap_or(heartbeat);
    if status != "Unknown" && now >= deadline {
        return Health::Stale;
    }
    if status == "True" {
        return Health::Ready {
            recheck_at: deadline,
        };
    }
    let since = ready
        .and_then(|c| timestamp(c.get("lastTransitionTime")))
        .unwrap_or(heartbeat);
    Health::NotReady {
        since,
        recheck_at: (status != "Unknown").then_some(deadline),
    }
}

/// The node's status with Ready turned `Unknown` at `now` (other conditions kept).
pub fn mark_unknown(status: &Value, now: Timestamp) -> Value {
    let mut status = match status {
        Value::Object(_) => status.clone(),
        _ => json!({}),
    };
    let previous = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let heartbeat = previous
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("lastHeartbeatTime").cloned())
        .unwrap_or(Value::Null);
    let mut conditions: Vec<Value> = previous
        .into_iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
        .collect();
    conditions.push(json!({
        "type": "Ready",
        "status": "Unknown",
        "reason": STALE_REASON,
        "message": STALE_MESSAGE,
        "lastHeartbeatTime": heartbeat,
        "lastTransitionTime": seconds(now),
    }));
    status["conditions"] = Value::Array(conditions);
    status
}

/// RFC 3339 with second precision, as Kubernetes writes conditions.
pub fn seconds(t: Timestamp) -> String {
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

/// How long from `now` until `at`, at least a millisecond (a requeue in the past is now).
fn until(at: Timestamp, now: Timestamp) -> Duration {
    let ms = at.as_millisecond().saturating_sub(now.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1))
}

#[derive(Default)]
struct Allocations {
    /// Whether the stored Nodes have been read since start.
    loaded: bool,
    by_name: BTreeMap<String, u32>,
    by_index: BTreeMap<u32, String>,
}

impl Allocations {
    fn record(&mut self, name: &str, index: u32) -> bool {
        match self.by_index.get(&index) {
            Some(owner) if owner != name => false,
            _ => {
                self.by_index.insert(index, name.to_string());
                self.by_name.insert(name.to_string(), index);
                true
            }
        }
    }
}

pub struct NodeController {
    grace: Duration,
    range: PodCidrRange,
    allocations: Mutex<Allocations>,
    /// Nodes this controller saw NotReady, so that their recovery gets a `NodeReady` event.
    not_ready: Mutex<HashSet<String>>,
}

impl NodeController {
    pub fn new(node_grace: Duration, pod_cidr: &str) -> Result<NodeController, NodeError> {
        Ok(NodeController {
            grace: node_grace,
            range: PodCidrRange::parse(pod_cidr)?,
            allocations: Mutex::new(Allocations::default()),
            not_ready: Mutex::new(HashSet::new()),
        })
    }

    fn allocations(&self) -> std::sync::MutexGuard<'_, Allocations> {
        self.allocations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn not_ready(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.not_ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the allocations from the stored Nodes, once.
    fn load(&self, ctx: &Context, force: bool) -> Result<Vec<Value>, ReconcileError> {
        if !force && self.allocations().loaded {
            return Ok(Vec::new());
        }
        let (nodes, _) = ctx.store.list(Kind::Node, None)?;
        let mut allocations = self.allocations();
        for node in &nodes {
            let (Some(name), Some(cidr)) = (
                node.meta_str("name"),
                node.pointer("/spec/podCIDR").and_then(Value::as_str),
            ) else {
                continue;
            };
            if let Some(index) = self.range.index_of(cidr)
                && !allocations.record(name, index)
            {
                tracing::warn!(node = name, cidr, "pod CIDR is also held by another node");
            }
        }
        allocations.loaded = true;
        Ok(nodes)
    }

    /// Gives `node` a pod CIDR when it has none; returns the node as stored afterwards.
    fn assign_pod_cidr(&self, node: Value, ctx: &Context) -> Result<Value, ReconcileError> {
        let name = node.meta_str("name").unwrap_or_default().to_string();
        if let Some(cidr) = node.pointer("/spec/podCIDR").and_then(Value::as_str) {
            if let Some(index) = self.range.index_of(cidr) {
                self.allocations().record(&name, index);
            }
            return Ok(node);
        }
        let index = {
            let mut allocations = self.allocations();
            let index = match allocations.by_name.get(&name) {
                Some(index) => Some(*index),
                None => lowest_free(&allocations.by_index, self.range.subnets()),
            };
            if let Some(index) = index {
                allocations.record(&name, index);
            }
            index
        };
        let Some(index) = index else {
            ctx.events.record(
                &node,
                events::WARNING,
                "CIDRNotAvailable",
                &format!("Node {name} status is now: CIDRNotAvailable"),
                COMPONENT,
            )?;
            return Ok(node);
        };
        let cidr = self.range.subnet(index);
        let mut updated = node.clone();
        updated["spec"]["podCIDR"] = json!(cidr);
        updated["spec"]["podCIDRs"] = json!([cidr]);
        let committed = ctx.store.commit(vec![Op::Put {
            object: updated,
            expect_rv: Some(node.resource_version()),
        }])?;
        ctx.events.record(
            &node,
            events::NORMAL,
            "CIDRAssigned",
            &format!("Node {name} was given pod CIDR {cidr}"),
            COMPONENT,
        )?;
        Ok(committed.objects.into_iter().next().unwrap_or(node))
    }

    /// Deletes every pod bound to `node`; a pod changed meanwhile is retried.
    fn evict_pods(&self, node: &str, ctx: &Context) -> Result<(), ReconcileError> {
        let (pods, _) = ctx.store.list(Kind::Pod, None)?;
        let mut conflict = None;
        for pod in pods.iter().filter(|p| pod::node_name(p) == Some(node)) {
            let Some(key) = ObjectKey::of(pod) else {
                continue;
            };
            let delete = Op::Delete {
                key: key.clone(),
                expect_rv: Some(pod.resource_version()),
            };
            match ctx.store.commit(vec![delete]) {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => continue,
                Err(e @ StoreError::Conflict { .. }) => {
                    conflict = Some(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let grace = self.grace.as_secs();
            ctx.events.record(
                pod,
                events::WARNING,
                "NodeNotReady",
                &format!("Evicted: node {node} has been NotReady for more than {grace}s"),
                COMPONENT,
            )?;
        }
        match conflict {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Reconciler for NodeController {
    fn wants(&self, kind: Kind, _event_type: WatchEventType) -> bool {
        matches!(kind, Kind::Node | Kind::Pod)
    }

    fn name(&self) -> &'static str {
        "node"
    }

    fn keys_for(&self, event: &WatchEvent) -> Vec<ObjectKey> {
        let object = &event.object;
        match object.get("kind").and_then(Value::as_str) {
            Some("Node") => ObjectKey::of(object).into_iter().collect(),
            // A pod landing on a NotReady node must be evicted too.
            Some("Pod") if event.event_type != WatchEventType::Deleted => pod::node_name(object)
                .map(|node| ObjectKey::new(Kind::Node, "", node))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    fn initial_keys(&self, ctx: &Context) -> Result<Vec<ObjectKey>, ReconcileError> {
        let nodes = self.load(ctx, true)?;
        Ok(nodes.iter().filter_map(ObjectKey::of).collect())
    }

    fn reconcile(&self, key: &ObjectKey, ctx: &Context) -> Result<Action, ReconcileError> {
        self.load(ctx, false)?;
        let Some(node) = ctx.store.get(key)? else {
            self.not_ready().remove(&key.name);
            return Ok(Action::Done);
        };
        let node = self.assign_pod_cidr(node, ctx)?;
        let now = ctx.clock.now();
        match assess(&node, now, self.grace) {
            Health::Ready { recheck_at } => {
                if self.not_ready().remove(&key.name) {
                    ctx.events.record(
                        &node,
                        events::NORMAL,
                        "NodeReady",
                        &format!("Node {} status is now: NodeReady", key.name),
                        COMPONENT,
                    )?;
                }
                Ok(Action::RequeueAfter(until(recheck_at, now)))
            }
            Health::Stale => {
                let status = mark_unknown(node.get("status").unwrap_or(&Value::Null), now);
                ctx.store.commit(vec![Op::PutStatus {
                    key: key.clone(),
                    status,
                    expect_rv: Some(node.resource_version()),
                }])?;
                self.not_ready().insert(key.name.clone());
                ctx.events.record(
                    &node,
                    events::NORMAL,
                    "NodeNotReady",
                    &format!("Node {} status is now: NodeNotReady", key.name),
                    COMPONENT,
                )?;
                Ok(Action::RequeueAfter(self.grace))
            }
            Health::NotReady { since, recheck_at } => {
                self.not_ready().insert(key.name.clone());
                let evict_at = since.checked_add(self.grace).unwrap_or(since);
                if now < evict_at {
                    let next = recheck_at.map_or(evict_at, |r| r.min(evict_at));
                    return Ok(Action::RequeueAfter(until(next, now)));
                }
                self.evict_pods(&key.name, ctx)?;
                Ok(match recheck_at {
                    Some(at) => Action::RequeueAfter(until(at, now)),
                    None => Action::Done,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_ranges() {
        let r = PodCidrRange::parse("10.244.0.0/16").unwrap();
        assert_eq!(r.subnets(), 256);
        assert_eq!(r.subnet(0), "10.244.0.0/24");
        assert_eq!(r.subnet(255), "10.244.255.0/24");
        assert_eq!(r.index_of("10.244.7.0/24"), Some(7));
        assert_eq!(r.index_of("10.245.0.0/24"), None);
        assert_eq!(r.index_of("10.244.7.1/24"), None);
        assert_eq!(r.index_of("10.244.7.0/25"), None);
        assert!(PodCidrRange::parse("10.244.0.0/25").is_err());
        assert!(PodCidrRange::parse("nope").is_err());
        assert_eq!(PodCidrRange::parse("10.1.2.3/24").unwrap().subnets(), 1);
        let mut taken = BTreeMap::new();
        taken.insert(0, "a".to_string());
        taken.insert(2, "b".to_string());
        assert_eq!(lowest_free(&taken, 256), Some(1));
        assert_eq!(lowest_free(&taken, 1), None);
    }

    #[test]
    fn health_from_the_ready_condition() {
        let grace = Duration::from_secs(40);
        let node = |status: &str| {
            json!({"status": {"conditions": [{"type": "Ready", "status": status,
                "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2025-12-31T00:00:00Z"}]}})
        };
        assert_eq!(
            assess(&node("True"), t("2026-01-01T00:00:39Z"), grace),
            Health::Ready {
                recheck_at: t("2026-01-01T00:00:40Z")
            }
        );
        assert_eq!(
            assess(&node("True"), t("2026-01-01T00:00:40Z"), grace),
            Health::Stale
        );
        assert_eq!(
            assess(&node("Unknown"), t("2026-01-02T00:00:00Z"), grace),
            Health::NotReady {
                since: t("2025-12-31T00:00:00Z"),
                recheck_at: None
            }
        );
        let fresh = json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(matches!(
            assess(&fresh, t("2026-01-01T00:00:01Z"), grace),
            Health::NotReady { .. }
        ));
        assert_eq!(
            assess(&fresh, t("2026-01-01T00:01:00Z"), grace),
            Health::Stale
        );
        let marked = mark_unknown(&node("True")["status"], t("2026-01-01T00:00:41Z"));
        assert_eq!(marked["conditions"][0]["status"], "Unknown");
        assert_eq!(marked["conditions"][0]["reason"], STALE_REASON);
        assert_eq!(
            marked["conditions"][0]["lastHeartbeatTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            marked["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:41Z"
        );
    }
}
