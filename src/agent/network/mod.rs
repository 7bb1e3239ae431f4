//! The pod network of a node (issue 4 part 5): a bridge `tend0` holding the gateway `.1` of
//! the node's pod CIDR; per pod a network namespace `tend-<uid prefix>`, a veth whose host
//! side is on the bridge and whose pod side is `eth0` with the pod's IP and a default route
//! through the gateway; routes to other nodes' pod CIDRs through their node addresses; one
//! nftables table `tend-nat` masquerading what leaves the cluster's pod network.
//!
//! - [`ipam`]: which pod holds which IP, kept on disk.
//! - [`plan`]: pure: desired + observed -> ordered [`Step`]s.
//! - [`ip`]: the real [`NetOps`] (iproute2 and nft); [`RecordingNetOps`] is the fake.
//!
//! [`PodNetwork`] ties them: observe, plan, apply, record the IPs.

pub mod ip;
pub mod ipam;
pub mod plan;

use ipam::{Allocations, IpamError, IpamStore};
pub use plan::{NodeNetwork, Observed, PeerRoute, Step};
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("could not run `{command}` (is iproute2/nftables installed?): {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("could not read the output of `{command}`: {source}")]
    Output {
        command: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("pod network of pod {uid}: {source}")]
    Pod {
        uid: String,
        #[source]
        source: Box<NetError>,
    },
}

/// The side effects of the pod network: look at what exists, do one step.
pub trait NetOps {
    fn observe(&mut self) -> Result<Observed, NetError>;
    fn apply(&mut self, step: &Step) -> Result<(), NetError>;
    /// Does `steps` in order, stopping at the first that fails. One at a time unless the
    /// ops know better ([`ip::IpCommands`] runs consecutive `ip` steps as one batch).
    fn apply_all(&mut self, steps: &[Step]) -> Result<(), NetError> {
        steps.iter().try_for_each(|s| self.apply(s))
    }
}

/// The routes to the other nodes' pod CIDRs: every Node but `me` with a `spec.podCIDR` and an
/// `InternalIP` address, sorted. Nodes without either (still registering) get no route yet.
pub fn peer_routes(nodes: &[serde_json::Value], me: &str) -> Vec<PeerRoute> {
    let mut routes: Vec<PeerRoute> = nodes
        .iter()
        .filter(|n| n.pointer("/metadata/name").and_then(|v| v.as_str()) != Some(me))
        .filter_map(|n| {
            let pod_cidr = n.pointer("/spec/podCIDR")?.as_str()?.parse().ok()?;
            let via = n
                .pointer("/status/addresses")?
                .as_array()?
                .iter()
                .find(|a| a.get("type").and_then(|t| t.as_str()) == Some("InternalIP"))?
                .get("address")?
                .as_str()?
                .parse()
                .ok()?;
            Some(PeerRoute { pod_cidr, via })
        })
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

/// A fake that records the steps it is given and keeps a simulated [`Observed`].
#[derive(Clone, Debug, Default)]
pub struct RecordingNetOps {
    pub observed: Observed,
    pub applied: Vec<Step>,
}

impl NetOps for RecordingNetOps {
    fn observe(&mut self) -> Result<Observed, NetError> {
        Ok(self.observed.clone())
    }

    fn apply(&mut self, step: &Step) -> Result<(), NetError> {
        plan::apply_to(&mut self.observed, step);
        self.applied.push(step.clone());
        Ok(())
    }
}

/// What a pod got from [`PodNetwork::setup_pod`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    pub ip: Ipv4Addr,
    /// The network namespace to give runc (`/var/run/netns/<netns>`).
    pub netns: String,
    /// The steps that were needed: none when the pod was already set up.
    pub steps: Vec<Step>,
}

/// A node's pod network: the desired node state, the IP record, and the ops that act.
pub struct PodNetwork<O: NetOps> {
    ops: O,
    node: NodeNetwork,
    store: IpamStore,
    allocations: Allocations,
}

impl<O: NetOps> PodNetwork<O> {
    /// Loads the IP record (none yet is fine); changes nothing on the system.
    pub fn open(ops: O, node: NodeNetwork, store: IpamStore) -> Result<Self, NetError> {
        let allocations = store.load(node.pod_cidr)?;
        Ok(Self {
            ops,
            node,
            store,
            allocations,
        })
    }

    pub fn ops(&self) -> &O {
        &self.ops
    }

    pub fn allocations(&self) -> &Allocations {
        &self.allocations
    }

    fn apply_all(&mut self, steps: &[Step]) -> Result<(), NetError> {
        self.ops.apply_all(steps)
    }

    /// Brings the node's part (bridge, forwarding, routes, masquerade) to the desired state;
    /// returns the steps taken (none when it already was).
    pub fn setup_node(&mut self) -> Result<Vec<Step>, NetError> {
        let observed = self.ops.observe()?;
        let steps = plan::node_setup(&self.node, &observed);
        self.apply_all(&steps)?;
        Ok(steps)
    }

    /// New peers (nodes joined or left): only the routes change.
    pub fn set_peers(&mut self, peers: Vec<PeerRoute>) -> Result<Vec<Step>, NetError> {
        self.node.peers = peers;
        let observed = self.ops.observe()?;
        let steps = plan::route_sync(&self.node, &observed);
        self.apply_all(&steps)?;
        Ok(steps)
    }

    /// Gives the pod its IP (recorded on disk before anything is created, so a crash never
    /// hands it to another pod) and its namespace and veth.
    pub fn setup_pod(&mut self, uid: &str) -> Result<PodAttachment, NetError> {
        let wrap = |source: NetError| NetError::Pod {
            uid: uid.to_string(),
            source: Box::new(source),
        };
        let known = self.allocations.get(uid).is_some();
        let ip = self.allocations.allocate(uid).map_err(|e| wrap(e.into()))?;
        if !known {
            self.store
                .save(&self.allocations)
                .map_err(|e| wrap(e.into()))?;
        }
        let observed = self.ops.observe().map_err(wrap)?;
        let steps = plan::pod_setup(uid, ip, &self.node, &observed);
        self.apply_all(&steps).map_err(wrap)?;
        Ok(PodAttachment {
            ip,
            netns: plan::pod_names(uid).netns,
            steps,
        })
    }

    /// Removes the pod's veth and namespace (what is already gone is fine) and frees its IP.
    pub fn teardown_pod(&mut self, uid: &str) -> Result<Vec<Step>, NetError> {
        let wrap = |source: NetError| NetError::Pod {
            uid: uid.to_string(),
            source: Box::new(source),
        };
        let observed = self.ops.observe().map_err(wrap)?;
        let steps = plan::pod_teardown(uid, &observed);
        self.apply_all(&steps).map_err(wrap)?;
        if self.allocations.release(uid).is_some() {
            self.store
                .save(&self.allocations)
                .map_err(|e| wrap(e.into()))?;
        }
        Ok(steps)
    }

    /// Removes the node's part (routes, masquerade table, bridge). Pods are torn down first by
    /// the caller.
    pub fn teardown_node(&mut self) -> Result<Vec<Step>, NetError> {
        let observed = self.ops.observe()?;
        let steps = plan::node_teardown(&self.node, &observed);
        self.apply_all(&steps)?;
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_routes_skip_self_and_incomplete_nodes() {
        let node = |name: &str, cidr: Option<&str>, ip: Option<&str>| {
            let mut n = serde_json::json!({"metadata": {"name": name}, "spec": {}, "status": {}});
            if let Some(c) = cidr {
                n["spec"]["podCIDR"] = c.into();
            }
            if let Some(ip) = ip {
                n["status"]["addresses"] = serde_json::json!([
                    {"type": "Hostname", "address": name},
                    {"type": "InternalIP", "address": ip},
                ]);
            }
            n
        };
        let nodes = [
            node("n3", Some("10.244.3.0/24"), Some("172.31.0.13")),
            node("n1", Some("10.244.1.0/24"), Some("172.31.0.11")),
            node("n2", Some("10.244.2.0/24"), Some("172.31.0.12")),
            node("n4", None, Some("172.31.0.14")),
            node("n5", Some("10.244.5.0/24"), None),
            node("n6", Some("not a cidr"), Some("172.31.0.16")),
        ];
        let routes = peer_routes(&nodes, "n1");
        assert_eq!(
            routes,
            vec![
                PeerRoute {
                    pod_cidr: "10.244.2.0/24".parse().expect("cidr"),
                    via: Ipv4Addr::new(172, 31, 0, 12)
                },
                PeerRoute {
                    pod_cidr: "10.244.3.0/24".parse().expect("cidr"),
                    via: Ipv4Addr::new(172, 31, 0, 13)
                },
            ]
        );
    }
    use ipam::Cidr;

    fn node() -> NodeNetwork {
        let cidr = |s: &str| s.parse::<Cidr>().expect("cidr");
        NodeNetwork {
            pod_cidr: cidr("10.244.77.0/24"),
            cluster_cidr: cidr("10.244.0.0/16"),
            peers: vec![],
        }
    }

    #[test]
    fn pods_get_ips_kept_across_restarts_and_freed_on_teardown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = IpamStore::new(dir.path().join("ipam.json"));
        let mut net =
            PodNetwork::open(RecordingNetOps::default(), node(), store.clone()).expect("open");
        assert!(!net.setup_node().expect("node").is_empty());
        assert!(net.setup_node().expect("node again").is_empty());
        let a = net.setup_pod("aaaa").expect("a");
        let b = net.setup_pod("bbbb").expect("b");
        assert_eq!(a.ip, Ipv4Addr::new(10, 244, 77, 2));
        assert_eq!(b.ip, Ipv4Addr::new(10, 244, 77, 3));
        assert_eq!(b.netns, "tend-bbbb");
        let again = net.setup_pod("bbbb").expect("b again");
        assert_eq!((again.ip, again.steps), (b.ip, vec![]));

        // A restarted agent: same record, same system.
        let ops = net.ops().clone();
        let mut net = PodNetwork::open(ops, node(), store.clone()).expect("reopen");
        assert_eq!(net.allocations().get("aaaa"), Some(a.ip));
        assert!(net.setup_pod("aaaa").expect("a again").steps.is_empty());

        let down = net.teardown_pod("bbbb").expect("down");
        assert_eq!(down.len(), 2);
        assert!(net.teardown_pod("bbbb").expect("down again").is_empty());
        assert_eq!(store.load(node().pod_cidr).expect("load").get("bbbb"), None);
        assert_eq!(net.setup_pod("cccc").expect("c").ip, b.ip);
    }
}
