//! `tend bench schedule`: 10,000 pods of 100 owners (Deployments' ReplicaSets), a quarter of
//! them selecting `disk: ssd` nodes and a quarter one zone, with cpu and memory requests, onto
//! 1,000 nodes through the pure core: each pod is parsed from its object, scheduled against the
//! snapshot, and counted on its node at once (assumed), as the controller does.

use super::{PodRequirements, Snapshot, schedule};
use anyhow::bail;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

pub const NODES: usize = 1000;
pub const PODS: usize = 10_000;
pub const OWNERS: usize = 100;

pub fn node(i: usize) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": format!("node-{i:04}"),
        "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
    });
    if i.is_multiple_of(4) {
        labels["disk"] = json!("ssd");
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{i:04}"), "labels": labels},
        "spec": {"podCIDR": format!("10.244.{}.0/24", i % 256)},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// Replica `r` of owner `o`: owners 0, 4, 8, ... want `disk: ssd` (250 nodes), owners 1, 5,
/// 9, ... want `zone-1` (333 nodes), the others any node.
pub fn pod(o: usize, r: usize) -> Value {
    let selector = match o % 4 {
        0 => json!({"disk": "ssd"}),
        1 => json!({"topology.kubernetes.io/zone": "zone-1"}),
        _ => json!({}),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("app-{o}-7d4b9c8f6-{r:05}"), "namespace": "default",
            "labels": {"app": format!("app-{o}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("app-{o}-7d4b9c8f6"), "uid": format!("uid-rs-{o}"), "controller": true}],
        },
        "spec": {
            "nodeSelector": selector,
            "containers": [{"name": "web", "image": "registry.local:5000/app:v1",
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
        },
    })
}

pub fn run() -> anyhow::Result<ExitCode> {
    let nodes: Vec<Value> = (0..NODES).map(node).collect();
    let per_owner = PODS / OWNERS;
    // Interleaved, as several Deployments scaling at once would queue them.
    let pods: Vec<Value> = (0..per_owner)
        .flat_map(|r| (0..OWNERS).map(move |o| pod(o, r)))
        .collect();

    let started = Instant::now();
    let mut snapshot = Snapshot::build(&nodes, &[]);
    let build_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut placed: HashMap<(usize, String), u32> = HashMap::new();
    let mut unschedulable = 0;
    for (i, object) in pods.iter().enumerate() {
        let requirements = PodRequirements::of(object);
        match schedule(&requirements, &snapshot) {
            Ok(node) => {
                snapshot.add_pod(&node, &requirements);
                *placed.entry((i % OWNERS, node)).or_default() += 1;
            }
            Err(_) => unschedulable += 1,
        }
    }
    let schedule_s = started.elapsed().as_secs_f64();

    // Spreading check: every owner's replicas differ by at most one pod between its nodes.
    let mut most = vec![0u32; OWNERS];
    let mut nodes_used = vec![0usize; OWNERS];
    for ((o, _), n) in &placed {
        most[*o] = most[*o].max(*n);
        nodes_used[*o] += 1;
    }
    if unschedulable > 0 {
        bail!("{unschedulable} pods found no node");
    }
    let worst = most.iter().max().copied().unwrap_or(0);

    println!(
        "tend bench schedule: {PODS} pods of {OWNERS} owners onto {NODES} nodes (selectors: 1/4 disk=ssd, 1/4 one zone)"
    );
    println!(
        "  {:<44} {:>10.0} pods/s (goal >= 10,000; {:.3} s)",
        "schedule + assume, one pod at a time",
        PODS as f64 / schedule_s,
        schedule_s
    );
    println!(
        "  {:<44} {:>10.3} ms  (baseline: parse {NODES} Node objects)",
        "  build the snapshot",
        build_s * 1000.0
    );
    println!(
        "  {:<44} {:>10}     (100 replicas over 250+ nodes: 1 expected)",
        "  most pods of one owner on one node", worst
    );
    Ok(ExitCode::SUCCESS)
}
