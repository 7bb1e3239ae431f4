//! The node side: what runs on every node and talks to the control plane through the API.
//!
//! - [`bench`]: `tend bench agent`: pod start, image pull and agent memory, measured for
//!   real.
//! - [`client`]: the agents' HTTP client (several servers, join token, node status, pod
//!   list+watch that resumes and relists).
//! - [`events`]: the Events a node reports about its pods (pulls, starts, kills, back-offs).
//! - [`image`]: the image store: references, pulls from OCI registries (oci-client), blobs
//!   by verified digest, layers unpacked with whiteouts, `--images` archive import.
//! - [`network`]: the pod network: IPs from the node's pod CIDR, a bridge, a network
//!   namespace and veth per pod, routes to other nodes, masquerade (iproute2 and nft).
//! - [`lb`]: Service load balancing in the `ip tend-lb` nftables table (ClusterIPs,
//!   NodePorts, affinity, no-endpoint rejects), synced incrementally.
//! - [`logs`]: the log endpoint the control plane asks (`/containerLogs/...`, signed with
//!   the join token), log files kept across one restart.
//! - [`memory`]: freed memory handed back to the system every few seconds.
//! - [`node`]: `tend agent`: preflight, registration, heartbeats, following its pods,
//!   adopting containers after a restart.
//! - [`init`]: init containers, one at a time before the app containers (pure).
//! - [`hooks`]: postStart and preStop hooks (exec, httpGet, sleep) behind a runner trait.
//! - [`services`]: Service environment variables for containers and the node's Service cache.
//! - [`views`]: the fields of Services and Endpoints the agent keeps in its informers.
//! - [`proxy`]: the node's Service proxy: Services and Endpoints -> the `tend-lb` nftables
//!   table, incrementally, with drift checks.
//! - [`pods`]: one pod's sync: a pure plan (image, network, containers, restart policy,
//!   deletion) and the executor that applies it through the traits below, returning status.
//! - [`probe`]: container probes, the pure part: specs with Kubernetes' defaults, named
//!   ports, thresholds, startup gating, what a failed liveness probe does to restarts.
//! - [`prober`]: running the probes (HTTP, TCP, exec) in a task per container instance on
//!   their own schedule; a changed result makes the agent sync the pod at once.
//! - [`runtime`]: containers with runc: OCI bundles from the image config and the pod spec,
//!   the runc driver, restart policy and CrashLoopBackOff decisions.
//! - [`teardown`]: what `tend up` removes when it stops (pods, pod network, load balancer,
//!   `route_localnet`, the reaper), unless asked to keep the workloads.
//! - [`sim`]: `tend sim-node`, a simulated node that marks its pods Running and Ready without
//!   running anything, for tests and demos.
//!
//! Registration keeps the control plane's labels: an agent creates its Node, with its
//! `--labels`, only when the Node does not exist; when it exists (a restart, or a node an
//! admin has labelled with `tend label nodes`) the agent only writes the Node's status. The
//! labels an admin sets therefore survive agent restarts, as in Kubernetes.

pub mod bench;
pub mod client;
pub mod credential;
pub mod events;
pub mod hooks;
pub mod image;
pub mod informer;
pub mod init;
pub mod lb;
pub mod logs;
pub mod memory;
pub mod network;
pub mod node;
pub mod periodic;
pub mod pods;
pub mod probe;
pub mod prober;
pub mod proxy;
pub mod registration;
pub mod runtime;
pub mod service_vars;
pub mod services;
pub mod sim;
pub mod teardown;
pub mod views;

use serde_json::{Map, Value, json};

/// Parses `k=v,k=v` (labels, capacity); an empty string is no pairs.
pub fn parse_pairs(flag: &str, input: &str) -> Result<Map<String, Value>, String> {
    let mut pairs = Map::new();
    for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let Some((k, v)) = term.split_once('=') else {
            return Err(format!("{flag} {input:?}: {term:?} is not key=value"));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{flag} {input:?}: {term:?} has an empty key"));
        }
        pairs.insert(k.to_string(), Value::String(v.trim().to_string()));
    }
    Ok(pairs)
}

/// The Node's conditions after a heartbeat at `now`: Ready as given, `lastTransitionTime`
/// kept when the status did not change (so that "Ready since" means something), other
/// conditions kept.
pub fn heartbeat_conditions(previous: Option<&Value>, ready: bool, now: &str) -> Vec<Value> {
    let previous: Vec<Value> = previous
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let status = if ready { "True" } else { "False" };
    let (reason, message) = if ready {
        ("KubeletReady", "kubelet is posting ready status")
    } else {
        ("KubeletNotReady", "kubelet is not ready")
    };
    let transition = previous
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now));
    let mut conditions: Vec<Value> = previous
        .into_iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some("Ready"))
        .collect();
    conditions.push(json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition,
    }));
    conditions
}

/// Waits until `shutdown` turns true (or its sender is gone). Unlike `wait_for`, it holds no
/// borrow of the value, so the waiting future stays `Send`.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A Node as an agent registers it: its labels (with `kubernetes.io/hostname`) and status.
pub fn node_object(name: &str, labels: &Map<String, Value>, status: Value) -> Value {
    let mut labels = labels.clone();
    labels
        .entry("kubernetes.io/hostname")
        .or_insert_with(|| json!(name));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": status,
    })
}

/// What a node says about itself in its status.
pub struct NodeIdentity<'a> {
    pub name: &'a str,
    pub address: std::net::IpAddr,
    /// `kubeletVersion` and `kubeProxyVersion`.
    pub version: &'a str,
    /// `containerRuntimeVersion`.
    pub runtime: &'a str,
    /// The port of the node's log endpoint (`daemonEndpoints.kubeletEndpoint.Port`), if any.
    pub port: Option<u16>,
}

/// A node's status after a heartbeat at `now` (conditions as [`heartbeat_conditions`]).
pub fn node_status(
    node: &NodeIdentity,
    capacity: &Map<String, Value>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let mut status = json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": node.address.to_string()},
            {"type": "Hostname", "address": node.name},
        ],
        "conditions": heartbeat_conditions(previous, true, now),
        "nodeInfo": {
            "kubeletVersion": node.version,
            "kubeProxyVersion": node.version,
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH,
            "containerRuntimeVersion": node.runtime,
        },
    });
    if let Some(port) = node.port {
        status["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": port}});
    }
    status
}

/// Now, with millisecond precision, for heartbeats: short grace periods work in tests.
pub fn now_millis() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Millisecond)
        .unwrap_or(now)
        .to_string()
}

/// The pod's conditions after a sync: those a node does not own are kept; PodScheduled and
/// Initialized are True; ContainersReady and Ready follow `ready` (with `not_ready_reason`
/// when False). A condition keeps its `lastTransitionTime` while its status holds.
pub fn pod_conditions(
    previous_status: &Value,
    ready: bool,
    not_ready_reason: &str,
    now: &str,
) -> Vec<Value> {
    let previous: Vec<Value> = previous_status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let condition = |kind: &str, status: bool| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        let mut c = json!({"type": kind, "status": status, "lastTransitionTime": since});
        if status == "False" {
            c["reason"] = json!(not_ready_reason);
        }
        c
    };
    let owned = ["Initialized", "ContainersReady", "Ready", "PodScheduled"];
    let mut conditions: Vec<Value> = previous
        .iter()
        .filter(|c| !owned.contains(&c.get("type").and_then(Value::as_str).unwrap_or_default()))
        .cloned()
        .collect();
    conditions.push(condition("PodScheduled", true));
    conditions.push(condition("Initialized", true));
    conditions.push(condition("ContainersReady", ready));
    conditions.push(condition("Ready", ready));
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let p = parse_pairs("--labels", "disk=ssd, zone=a").expect("ok");
        assert_eq!(p["disk"], "ssd");
        assert_eq!(p["zone"], "a");
        assert!(parse_pairs("--labels", "").expect("ok").is_empty());
        assert!(parse_pairs("--labels", "disk").is_err());
        assert!(parse_pairs("--labels", "=x").is_err());
    }

    #[test]
    fn heartbeats_keep_the_transition_time_while_ready() {
        let first = heartbeat_conditions(None, true, "T1");
        assert_eq!(first[0]["lastTransitionTime"], "T1");
        let status = json!({"conditions": first});
        let second = heartbeat_conditions(Some(&status), true, "T2");
        assert_eq!(second[0]["lastHeartbeatTime"], "T2");
        assert_eq!(second[0]["lastTransitionTime"], "T1");
        let unknown = json!({"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "T3"}]});
        let back = heartbeat_conditions(Some(&unknown), true, "T4");
        assert_eq!(back[0]["status"], "True");
        assert_eq!(back[0]["lastTransitionTime"], "T4");
    }
}
