//! What the scheduler knows, pre-parsed so that no JSON is read while scheduling: each node's
//! labels (interned), readiness, allocatable resources and what its pods already use; each
//! pod's requests, nodeSelector, host ports and controlling owner.

use super::quantity::{cpu_millis, whole_units};
use serde_json::Value;
use std::collections::HashMap;

/// Requests scored for a container that sets none (Kubernetes' `GetNonzeroRequests`), so that
/// pods without requests still spread: 100m cpu and 200Mi memory.
pub const DEFAULT_SCORE_MILLI_CPU: i64 = 100;
pub const DEFAULT_SCORE_MEMORY: i64 = 200 << 20;
/// The kubelet's default `maxPods`, for a node that reports no pod capacity.
pub const DEFAULT_MAX_PODS: i64 = 110;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    fn add(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }
    fn sub(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
    }
    fn max(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
        }
    }
}

/// A host port a pod binds: two pods clash on the same port and protocol when either listens
/// on every address (`hostIP` empty or `0.0.0.0`) or both on the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: u16,
}

impl HostPort {
    pub fn clashes_with(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (wildcard(&self.ip) || wildcard(&other.ip) || self.ip == other.ip)
    }
}

/// What scheduling needs from a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequirements {
    /// Summed container requests (or the largest init container's), unset = 0: for fit.
    pub requests: Resources,
    /// The same with Kubernetes' non-zero defaults for unset requests: for scoring.
    pub score_requests: Resources,
    pub node_selector: Vec<(String, String)>,
    pub host_ports: Vec<HostPort>,
    /// The uid of the controlling owner (the ReplicaSet): pods of one owner are spread.
    pub owner_uid: Option<String>,
}

impl PodRequirements {
    pub fn of(pod: &Value) -> PodRequirements {
        let spec = pod.get("spec");
        let containers = |field: &str| {
            spec.and_then(|s| s.get(field))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let (mut requests, mut score_requests) = (Resources::default(), Resources::default());
        for c in containers("containers") {
            let (fit, score) = container_requests(c);
            requests.add(fit);
            score_requests.add(score);
        }
        // Init containers run one at a time before the others: the pod needs the largest.
        for c in containers("initContainers") {
            let (fit, score) = container_requests(c);
            requests = requests.max(fit);
            score_requests = score_requests.max(score);
        }
        let host_ports = containers("containers")
            .iter()
            .filter_map(|c| c.get("ports").and_then(Value::as_array))
            .flatten()
            .filter_map(|p| {
                let port = p.get("hostPort").and_then(Value::as_u64)?;
                Some(HostPort {
                    ip: p
                        .get("hostIP")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    protocol: p
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_string(),
                    port: u16::try_from(port).ok().filter(|p| *p > 0)?,
                })
            })
            .collect();
        let node_selector = spec
            .and_then(|s| s.get("nodeSelector"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        PodRequirements {
            requests,
            score_requests,
            node_selector,
            host_ports,
            owner_uid: crate::api::pod::controller_of(pod).map(|(_, _, uid)| uid.to_string()),
        }
    }
}

/// One container's requests for fit and for scoring. An unset request defaults to the limit,
/// as the API server's defaulting does.
fn container_requests(container: &Value) -> (Resources, Resources) {
    let resources = container.get("resources");
    let quantity = |name: &str| {
        let from = |section: &str| {
            resources
                .and_then(|r| r.get(section))
                .and_then(|s| s.get(name))
        };
        from("requests").or_else(|| from("limits"))
    };
    let cpu = quantity("cpu").and_then(cpu_millis);
    let memory = quantity("memory").and_then(whole_units);
    (
        Resources {
            milli_cpu: cpu.unwrap_or(0),
            memory: memory.unwrap_or(0),
        },
        Resources {
            milli_cpu: cpu.unwrap_or(DEFAULT_SCORE_MILLI_CPU),
            memory: memory.unwrap_or(DEFAULT_SCORE_MEMORY),
        },
    )
}

/// What scheduling needs from a Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub ready: bool,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub max_pods: i64,
}

impl NodeSpec {
    /// `None` for an object without a name. A node that reports no allocatable (nor capacity)
    /// for a resource is not limited by it: simulated nodes may leave it out.
    pub fn of(node: &Value) -> Option<NodeSpec> {
        let name = node.pointer("/metadata/name")?.as_str()?.to_string();
        let labels = node
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .is_some_and(|c| c["status"] == "True");
        let unschedulable = node
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let resource = |name: &str| {
            node.pointer(&format!("/status/allocatable/{name}"))
                .or_else(|| node.pointer(&format!("/status/capacity/{name}")))
        };
        Some(NodeSpec {
            name,
            labels,
            ready,
            unschedulable,
            allocatable: Resources {
                milli_cpu: resource("cpu").and_then(cpu_millis).unwrap_or(i64::MAX),
                memory: resource("memory").and_then(whole_units).unwrap_or(i64::MAX),
            },
            max_pods: resource("pods")
                .and_then(whole_units)
                .unwrap_or(DEFAULT_MAX_PODS),
        })
    }
}

/// A node as the scheduler sees it: its spec and what the pods bound (or assumed) to it use.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    /// Interned `key=value` label ids, sorted.
    pub(super) labels: Vec<u32>,
    pub allocatable: Resources,
    pub max_pods: i64,
    pub requested: Resources,
    pub score_requested: Resources,
    pub pods: i64,
    pub(super) host_ports: Vec<HostPort>,
    /// (interned owner id, pods of that owner here); a handful per node, scanned linearly.
    pub(super) owners: Vec<(u32, u32)>,
}

impl NodeInfo {
    pub fn host_ports(&self) -> &[HostPort] {
        &self.host_ports
    }

    pub fn pods_of_owner(&self, owner: Option<u32>) -> u32 {
        owner.map_or(0, |o| {
            self.owners
                .iter()
                .find(|(id, _)| *id == o)
                .map_or(0, |(_, n)| *n)
        })
    }

    pub fn has_labels(&self, required: &[u32]) -> bool {
        required
            .iter()
            .all(|l| self.labels.binary_search(l).is_ok())
    }
}

/// A pod with its selector and owner resolved against a snapshot's interned names.
pub struct ResolvedPod<'a> {
    pub pod: &'a PodRequirements,
    /// Interned label ids the node must carry; `None` when some pair is on no node at all.
    pub selector: Option<Vec<u32>>,
    pub owner: Option<u32>,
}

/// All nodes, pre-parsed, with their usage; updated incrementally as nodes and pods change.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    by_name: HashMap<String, usize>,
    /// label key -> value -> id: looked up by `&str` without building a key.
    label_ids: HashMap<String, HashMap<String, u32>>,
    label_count: u32,
    owner_ids: HashMap<String, u32>,
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// Nodes from Node objects, then the pods bound to them (those with `spec.nodeName` that
    /// have not finished).
    pub fn build(nodes: &[Value], pods: &[Value]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for node in nodes.iter().filter_map(NodeSpec::of) {
            snapshot.upsert_node(node);
        }
        for pod in pods.iter().filter(|p| occupies_node(p)) {
            if let Some(node) = crate::api::pod::node_name(pod) {
                snapshot.add_pod(node, &PodRequirements::of(pod));
            }
        }
        snapshot
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// Adds a node or updates its spec, keeping what its pods use.
    pub fn upsert_node(&mut self, spec: NodeSpec) {
        let mut labels: Vec<u32> = spec
            .labels
            .iter()
            .map(|(k, v)| self.intern_label(k, v))
            .collect();
        labels.sort_unstable();
        match self.by_name.get(&spec.name) {
            Some(&i) => {
                let node = &mut self.nodes[i];
                node.ready = spec.ready;
                node.unschedulable = spec.unschedulable;
                node.labels = labels;
                node.allocatable = spec.allocatable;
                node.max_pods = spec.max_pods;
            }
            None => {
                self.by_name.insert(spec.name.clone(), self.nodes.len());
                self.nodes.push(NodeInfo {
                    name: spec.name,
                    ready: spec.ready,
                    unschedulable: spec.unschedulable,
                    labels,
                    allocatable: spec.allocatable,
                    max_pods: spec.max_pods,
                    requested: Resources::default(),
                    score_requested: Resources::default(),
                    pods: 0,
                    host_ports: Vec::new(),
                    owners: Vec::new(),
                });
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.by_name.remove(name) else {
            return;
        };
        self.nodes.swap_remove(i);
        if let Some(moved) = self.nodes.get(i) {
            self.by_name.insert(moved.name.clone(), i);
        }
    }

    /// Counts a pod on `node` (bound or assumed). Returns false when the node is unknown.
    pub fn add_pod(&mut self, node: &str, pod: &PodRequirements) -> bool {
        let owner = pod.owner_uid.as_deref().map(|uid| self.intern_owner(uid));
        let Some(&i) = self.by_name.get(node) else {
            return false;
        };
        let node = &mut self.nodes[i];
        node.requested.add(pod.requests);
        node.score_requested.add(pod.score_requests);
        node.pods += 1;
        node.host_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = owner {
            match node.owners.iter_mut().find(|(id, _)| *id == owner) {
                Some((_, n)) => *n += 1,
                None => node.owners.push((owner, 1)),
            }
        }
        true
    }

    /// Stops counting a pod previously added to `node`.
    pub fn remove_pod(&mut self, node: &str, pod: &PodRequirements) {
        let Some(&i) = self.by_name.get(node) else {
            return;
        };
        let owner = pod
            .owner_uid
            .as_deref()
            .and_then(|uid| self.owner_ids.get(uid).copied());
        let node = &mut self.nodes[i];
        node.requested.sub(pod.requests);
        node.score_requested.sub(pod.score_requests);
        node.pods = (node.pods - 1).max(0);
        for port in &pod.host_ports {
            if let Some(at) = node.host_ports.iter().position(|p| p == port) {
                node.host_ports.swap_remove(at);
            }
        }
        if let Some(owner) = owner
            && let Some(at) = node.owners.iter().position(|(id, _)| *id == owner)
        {
            node.owners[at].1 -= 1;
            if node.owners[at].1 == 0 {
                node.owners.swap_remove(at);
            }
        }
    }

    /// Resolves a pod's selector and owner against the interned names.
    pub fn resolve<'a>(&self, pod: &'a PodRequirements) -> ResolvedPod<'a> {
        let selector = pod
            .node_selector
            .iter()
            .map(|(k, v)| self.label_ids.get(k.as_str())?.get(v.as_str()).copied())
            .collect();
        ResolvedPod {
            pod,
            selector,
            owner: pod
                .owner_uid
                .as_deref()
                .and_then(|uid| self.owner_ids.get(uid).copied()),
        }
    }

    fn intern_label(&mut self, key: &str, value: &str) -> u32 {
        if let Some(id) = self.label_ids.get(key).and_then(|vs| vs.get(value)) {
            return *id;
        }
        let id = self.label_count;
        self.label_count += 1;
        self.label_ids
            .entry(key.to_string())
            .or_default()
            .insert(value.to_string(), id);
        id
    }

    fn intern_owner(&mut self, uid: &str) -> u32 {
        if let Some(id) = self.owner_ids.get(uid) {
            return *id;
        }
        let id = u32::try_from(self.owner_ids.len()).unwrap_or(u32::MAX);
        self.owner_ids.insert(uid.to_string(), id);
        id
    }
}

/// A pod that holds resources on its node: bound, and not Succeeded or Failed. (Terminating
/// pods still hold them until their node has stopped them.)
pub fn occupies_node(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    crate::api::pod::node_name(pod).is_some() && !matches!(phase, Some("Succeeded" | "Failed"))
}
