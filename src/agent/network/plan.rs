//! The pod network as data: what the node and each pod should have, what was observed, and
//! the ordered [`Step`]s between the two. Pure: no step here touches the system; a
//! [`super::NetOps`] executes them. Plans are computed against what exists, so setting up
//! what is already there gives no step, and tearing down what is gone gives none either.

use super::ipam::Cidr;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The node's bridge; pods' host-side veths are its ports, its address is their gateway.
pub const BRIDGE: &str = "tend0";
/// The pod side of each veth, inside the pod's namespace.
pub const POD_INTERFACE: &str = "eth0";
/// The one nftables table this module owns (masquerade only); Services use another.
pub const NAT_TABLE: &str = "tend-nat";

/// What the node's pod network should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetwork {
    /// This node's pod CIDR, from its Node object.
    pub pod_cidr: Cidr,
    /// The whole pod network of the cluster (every node's pod CIDR is inside): traffic to it
    /// keeps its pod source address, traffic elsewhere is masqueraded.
    pub cluster_cidr: Cidr,
    /// Other nodes' pod CIDRs and the node addresses that reach them.
    pub peers: Vec<PeerRoute>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerRoute {
    pub pod_cidr: Cidr,
    pub via: Ipv4Addr,
}

/// The names a pod's network pieces get, from its uid: the namespace `tend-<12 hex>` and
/// the host-side veth `vt<12 hex>` (interface names are at most 15 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub netns: String,
    pub host_veth: String,
}

/// Names from the first 12 letters and digits of the uid, lowercased (a Kubernetes uid is a
/// UUID, so these are its first 48 bits).
pub fn pod_names(uid: &str) -> PodNames {
    let prefix: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    PodNames {
        netns: format!("tend-{prefix}"),
        host_veth: format!("vt{prefix}"),
    }
}

/// What exists, as far as the plans care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Named network namespaces.
    pub netns: BTreeSet<String>,
    /// The node's links, and whether each is up.
    pub links: BTreeMap<String, bool>,
    /// The bridge's IPv4 addresses with their prefix lengths.
    pub bridge_addresses: BTreeSet<(Ipv4Addr, u8)>,
    /// The node's routes that have a gateway, by destination.
    pub routes: BTreeMap<Cidr, Ipv4Addr>,
    /// Whether the node forwards IPv4.
    pub forwarding: bool,
    /// The `tend-nat` table when it exists: the (pod CIDR, cluster CIDR) of each masquerade
    /// rule in it.
    pub nat_table: Option<Vec<(Cidr, Cidr)>>,
}

/// One change to the system. `netns` fields name a pod's namespace; the rest is the node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    EnableForwarding,
    CreateBridge {
        name: String,
    },
    AddAddress {
        dev: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    LinkUp {
        dev: String,
    },
    /// A route to another node's pod CIDR (replacing one with another gateway).
    ReplaceRoute {
        dst: Cidr,
        via: Ipv4Addr,
    },
    DeleteRoute {
        dst: Cidr,
    },
    /// The `tend-nat` table, replaced whole in one transaction.
    ReplaceNatTable {
        pod_cidr: Cidr,
        cluster_cidr: Cidr,
    },
    DeleteNatTable,
    CreateNetns {
        name: String,
    },
    /// A veth pair whose peer is created directly inside `netns` as `peer`.
    CreateVeth {
        host: String,
        netns: String,
        peer: String,
    },
    /// The host side joins the bridge and comes up.
    AttachToBridge {
        dev: String,
        bridge: String,
    },
    /// The bridge may send a pod's frames back out of the port they came in by: a pod that
    /// reaches its own Service and is picked as the endpoint (hairpin), as kubenet does.
    Hairpin {
        dev: String,
    },
    PodAddress {
        netns: String,
        dev: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    PodLinkUp {
        netns: String,
        dev: String,
    },
    PodDefaultRoute {
        netns: String,
        via: Ipv4Addr,
    },
    DeleteLink {
        name: String,
    },
    DeleteNetns {
        name: String,
    },
}

/// The node's part: forwarding on, the bridge with the gateway address and up, the routes to
/// other nodes' pod CIDRs (stale ones inside the cluster CIDR removed), the masquerade table.
pub fn node_setup(node: &NodeNetwork, observed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    if !observed.forwarding {
        steps.push(Step::EnableForwarding);
    }
    if !observed.links.contains_key(BRIDGE) {
        steps.push(Step::CreateBridge {
            name: BRIDGE.into(),
        });
    }
    if let Some(gateway) = node.pod_cidr.gateway() {
        let prefix = node.pod_cidr.prefix();
        if !observed.bridge_addresses.contains(&(gateway, prefix)) {
            steps.push(Step::AddAddress {
                dev: BRIDGE.into(),
                addr: gateway,
                prefix,
            });
        }
    }
    if observed.links.get(BRIDGE) != Some(&true) {
        steps.push(Step::LinkUp { dev: BRIDGE.into() });
    }
    steps.extend(route_sync(node, observed));
    let nat_rule = vec![(node.pod_cidr, node.cluster_cidr)];
    if observed.nat_table.as_ref() != Some(&nat_rule) {
        steps.push(Step::ReplaceNatTable {
            pod_cidr: node.pod_cidr,
            cluster_cidr: node.cluster_cidr,
        });
    }
    steps
}

/// Routes to peers that are missing or go through another gateway are replaced; gateway
/// routes inside the cluster CIDR to no current peer (a node that left) are deleted.
pub fn route_sync(node: &NodeNetwork, observed: &Observed) -> Vec<Step> {
    let wanted: BTreeMap<Cidr, Ipv4Addr> = node
        .peers
        .iter()
        .filter(|p| p.pod_cidr != node.pod_cidr)
        .map(|p| (p.pod_cidr, p.via))
        .collect();
    let stale = observed
        .routes
        .keys()
        .filter(|dst| node.cluster_cidr.covers(dst) && !wanted.contains_key(dst))
        .map(|dst| Step::DeleteRoute { dst: *dst });
    let missing = wanted
        .iter()
        .filter(|(dst, via)| observed.routes.get(dst) != Some(via))
        .map(|(dst, via)| Step::ReplaceRoute {
            dst: *dst,
            via: *via,
        });
    stale.chain(missing).collect()
}

/// The node's part removed: routes to peers, the masquerade table, the bridge. Forwarding is
/// left as it is (something else on the node may rely on it).
pub fn node_teardown(node: &NodeNetwork, observed: &Observed) -> Vec<Step> {
    let mut steps: Vec<Step> = observed
        .routes
        .keys()
        .filter(|dst| node.cluster_cidr.covers(dst))
        .map(|dst| Step::DeleteRoute { dst: *dst })
        .collect();
    if observed.nat_table.is_some() {
        steps.push(Step::DeleteNatTable);
    }
    if observed.links.contains_key(BRIDGE) {
        steps.push(Step::DeleteLink {
            name: BRIDGE.into(),
        });
    }
    steps
}

/// A pod's part: its namespace, a veth with the host side on the bridge and the pod side
/// `eth0` holding `ip` in the node's pod CIDR, `lo` and `eth0` up, the default route through
/// the gateway. A pod whose namespace and host veth both exist is left alone.
pub fn pod_setup(uid: &str, ip: Ipv4Addr, node: &NodeNetwork, observed: &Observed) -> Vec<Step> {
    let names = pod_names(uid);
    let mut steps = Vec::new();
    if !observed.netns.contains(&names.netns) {
        steps.push(Step::CreateNetns {
            name: names.netns.clone(),
        });
    }
    if observed.links.contains_key(&names.host_veth) {
        return steps;
    }
    steps.push(Step::CreateVeth {
        host: names.host_veth.clone(),
        netns: names.netns.clone(),
        peer: POD_INTERFACE.into(),
    });
    steps.push(Step::AttachToBridge {
        dev: names.host_veth.clone(),
        bridge: BRIDGE.into(),
    });
    steps.push(Step::Hairpin {
        dev: names.host_veth,
    });
    steps.push(Step::PodAddress {
        netns: names.netns.clone(),
        dev: POD_INTERFACE.into(),
        addr: ip,
        prefix: node.pod_cidr.prefix(),
    });
    for dev in ["lo", POD_INTERFACE] {
        steps.push(Step::PodLinkUp {
            netns: names.netns.clone(),
            dev: dev.into(),
        });
    }
    if let Some(gateway) = node.pod_cidr.gateway() {
        steps.push(Step::PodDefaultRoute {
            netns: names.netns,
            via: gateway,
        });
    }
    steps
}

/// A pod's part removed: the host veth (its peer goes with it) and the namespace, each only
/// if it exists.
pub fn pod_teardown(uid: &str, observed: &Observed) -> Vec<Step> {
    let names = pod_names(uid);
    let mut steps = Vec::new();
    if observed.links.contains_key(&names.host_veth) {
        steps.push(Step::DeleteLink {
            name: names.host_veth,
        });
    }
    if observed.netns.contains(&names.netns) {
        steps.push(Step::DeleteNetns { name: names.netns });
    }
    steps
}

/// The `tend-nat` table as an nft script that replaces it whole in one transaction (the
/// `add` makes the `delete` safe when it does not exist yet).
pub fn nat_table_script(pod_cidr: Cidr, cluster_cidr: Cidr) -> String {
    format!(
        "add table ip {NAT_TABLE}\n\
         delete table ip {NAT_TABLE}\n\
         table ip {NAT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The masquerade rules of a `nft list table ip tend-nat` listing, as (pod CIDR, cluster
/// CIDR); the inverse of [`nat_table_script`].
pub fn parse_nat_table(listing: &str) -> Vec<(Cidr, Cidr)> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [
                    "ip",
                    "saddr",
                    pod,
                    "ip",
                    "daddr",
                    "!=",
                    cluster,
                    "masquerade",
                ] => Some((pod.parse().ok()?, cluster.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// Removes `tend-nat` whether or not it exists.
pub fn nat_table_delete_script() -> String {
    format!("add table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n")
}

/// What `observed` becomes once `step` is done: the recording fake uses it, and it documents
/// what each step is meant to achieve.
pub fn apply_to(observed: &mut Observed, step: &Step) {
    match step {
        Step::EnableForwarding => observed.forwarding = true,
        Step::CreateBridge { name } => {
            observed.links.entry(name.clone()).or_insert(false);
        }
        Step::AddAddress { dev, addr, prefix } if dev == BRIDGE => {
            observed.bridge_addresses.insert((*addr, *prefix));
        }
        Step::AddAddress { .. } => {}
        Step::LinkUp { dev } => {
            observed.links.insert(dev.clone(), true);
        }
        Step::ReplaceRoute { dst, via } => {
            observed.routes.insert(*dst, *via);
        }
        Step::DeleteRoute { dst } => {
            observed.routes.remove(dst);
        }
        Step::ReplaceNatTable {
            pod_cidr,
            cluster_cidr,
        } => observed.nat_table = Some(vec![(*pod_cidr, *cluster_cidr)]),
        Step::DeleteNatTable => observed.nat_table = None,
        Step::CreateNetns { name } => {
            observed.netns.insert(name.clone());
        }
        Step::CreateVeth { host, .. } => {
            observed.links.insert(host.clone(), false);
        }
        Step::AttachToBridge { dev, .. } => {
            observed.links.insert(dev.clone(), true);
        }
        Step::Hairpin { .. } => {}
        Step::DeleteLink { name } => {
            observed.links.remove(name);
            if name == BRIDGE {
                observed.bridge_addresses.clear();
            }
        }
        Step::DeleteNetns { name } => {
            observed.netns.remove(name);
        }
        Step::PodAddress { .. } | Step::PodLinkUp { .. } | Step::PodDefaultRoute { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    fn node() -> NodeNetwork {
        NodeNetwork {
            pod_cidr: cidr("10.244.77.0/24"),
            cluster_cidr: cidr("10.244.0.0/16"),
            peers: vec![PeerRoute {
                pod_cidr: cidr("10.244.78.0/24"),
                via: Ipv4Addr::new(172, 31, 0, 2),
            }],
        }
    }

    fn run(observed: &mut Observed, steps: &[Step]) {
        for s in steps {
            apply_to(observed, s);
        }
    }

    #[test]
    fn names_fit_in_an_interface_name() {
        let n = pod_names("3F2A9C1E-77b0-4c1d-9e2f-0123456789ab");
        assert_eq!(n.netns, "tend-3f2a9c1e77b0");
        assert_eq!(n.host_veth, "vt3f2a9c1e77b0");
        assert!(n.host_veth.len() <= 15);
    }

    #[test]
    fn node_setup_from_nothing_then_nothing() {
        let mut observed = Observed::default();
        let steps = node_setup(&node(), &observed);
        assert_eq!(
            steps,
            vec![
                Step::EnableForwarding,
                Step::CreateBridge {
                    name: "tend0".into()
                },
                Step::AddAddress {
                    dev: "tend0".into(),
                    addr: Ipv4Addr::new(10, 244, 77, 1),
                    prefix: 24
                },
                Step::LinkUp {
                    dev: "tend0".into()
                },
                Step::ReplaceRoute {
                    dst: cidr("10.244.78.0/24"),
                    via: Ipv4Addr::new(172, 31, 0, 2)
                },
                Step::ReplaceNatTable {
                    pod_cidr: cidr("10.244.77.0/24"),
                    cluster_cidr: cidr("10.244.0.0/16")
                },
            ]
        );
        run(&mut observed, &steps);
        assert_eq!(node_setup(&node(), &observed), vec![]);
        let down = node_teardown(&node(), &observed);
        assert_eq!(
            down,
            vec![
                Step::DeleteRoute {
                    dst: cidr("10.244.78.0/24")
                },
                Step::DeleteNatTable,
                Step::DeleteLink {
                    name: "tend0".into()
                },
            ]
        );
        run(&mut observed, &down);
        assert_eq!(node_teardown(&node(), &observed), vec![]);
    }

    #[test]
    fn routes_follow_the_peers() {
        let mut observed = Observed::default();
        observed
            .routes
            .insert(cidr("10.244.78.0/24"), Ipv4Addr::new(172, 31, 0, 9));
        observed
            .routes
            .insert(cidr("10.244.79.0/24"), Ipv4Addr::new(172, 31, 0, 3));
        // Not ours: outside the cluster CIDR.
        observed
            .routes
            .insert(cidr("192.168.0.0/16"), Ipv4Addr::new(172, 31, 0, 1));
        let steps = route_sync(&node(), &observed);
        assert_eq!(
            steps,
            vec![
                Step::DeleteRoute {
                    dst: cidr("10.244.79.0/24")
                },
                Step::ReplaceRoute {
                    dst: cidr("10.244.78.0/24"),
                    via: Ipv4Addr::new(172, 31, 0, 2)
                },
            ]
        );
    }

    #[test]
    fn pod_setup_and_teardown() {
        let mut observed = Observed::default();
        let ip = Ipv4Addr::new(10, 244, 77, 2);
        let steps = pod_setup("abc", ip, &node(), &observed);
        assert_eq!(steps.len(), 8, "{steps:?}");
        assert!(steps.contains(&Step::Hairpin {
            dev: "vtabc".into()
        }));
        assert_eq!(
            steps[0],
            Step::CreateNetns {
                name: "tend-abc".into()
            }
        );
        assert!(steps.contains(&Step::PodDefaultRoute {
            netns: "tend-abc".into(),
            via: Ipv4Addr::new(10, 244, 77, 1)
        }));
        run(&mut observed, &steps);
        assert_eq!(pod_setup("abc", ip, &node(), &observed), vec![]);
        // A namespace left without its veth (a crash between the two) gets the veth.
        observed.links.remove("vtabc");
        let again = pod_setup("abc", ip, &node(), &observed);
        assert_eq!(again.len(), 7);
        run(&mut observed, &again);
        let down = pod_teardown("abc", &observed);
        assert_eq!(
            down,
            vec![
                Step::DeleteLink {
                    name: "vtabc".into()
                },
                Step::DeleteNetns {
                    name: "tend-abc".into()
                }
            ]
        );
        run(&mut observed, &down);
        assert_eq!(pod_teardown("abc", &observed), vec![]);
    }

    #[test]
    fn the_nat_script_masquerades_only_traffic_leaving_the_pod_network() {
        let s = nat_table_script(cidr("10.244.77.0/24"), cidr("10.244.0.0/16"));
        assert!(s.starts_with("add table ip tend-nat\ndelete table ip tend-nat\n"));
        assert!(s.contains("ip saddr 10.244.77.0/24 ip daddr != 10.244.0.0/16 masquerade"));
        // What nft 1.0.6 lists back.
        let listing = "table ip tend-nat {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.244.77.0/24 ip daddr != 10.244.0.0/16 masquerade\n\t}\n}\n";
        let rules = parse_nat_table(listing);
        assert_eq!(rules, vec![(cidr("10.244.77.0/24"), cidr("10.244.0.0/16"))]);
        // A table for another pod CIDR is replaced; the right one is left alone.
        let mut observed = Observed {
            nat_table: Some(vec![(cidr("10.244.9.0/24"), cidr("10.244.0.0/16"))]),
            ..Observed::default()
        };
        assert!(
            node_setup(&node(), &observed).contains(&Step::ReplaceNatTable {
                pod_cidr: cidr("10.244.77.0/24"),
                cluster_cidr: cidr("10.244.0.0/16")
            })
        );
        observed.nat_table = Some(rules);
        assert!(
            !node_setup(&node(), &observed)
                .iter()
                .any(|s| matches!(s, Step::ReplaceNatTable { .. }))
        );
    }
}
