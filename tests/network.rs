//! The pod network for real, entirely inside network namespaces these tests create: a
//! "node" namespace gets the bridge, pods are namespaces beside it, nodes are joined by a
//! veth pair. Needs root, iproute2, nftables and busybox (for ping); without them the tests
//! skip with a reason, unless `CI` is set, where they fail. Everything created is removed by
//! a Drop guard, also when a test fails.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use tend::agent::network::ip::IpCommands;
use tend::agent::network::ipam::{Cidr, IpamStore};
use tend::agent::network::plan::pod_names;
use tend::agent::network::{NodeNetwork, PeerRoute, PodNetwork};

fn missing_lab() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("busybox", "--help")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Whether to run; skipping is a failure under CI.
fn lab() -> bool {
    match missing_lab() {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but the network lab cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping: {reason}");
            false
        }
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => o,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn must(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the namespaces it was told about (pods first, then nodes; links and nft tables
/// inside them go with them).
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
}

impl Cleanup {
    fn netns(&mut self, name: &str) -> String {
        self.netns.push(name.to_string());
        name.to_string()
    }

    fn node(&mut self, name: &str) -> String {
        let name = self.netns(name);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in self.netns.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn cidr(s: &str) -> Cidr {
    match s.parse() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A pod uid unique to this process and test: its first 12 hex digits name the netns.
fn uid(tag: &str) -> String {
    format!(
        "{:08x}{tag}-0000-4000-8000-000000000000",
        std::process::id()
    )
}

/// ping from a pod, a few tries (the first may wait for ARP).
fn ping(netns: &str, ip: Ipv4Addr) -> bool {
    let ip = ip.to_string();
    (0..3).any(|_| {
        sh(&[
            "ip", "netns", "exec", netns, "busybox", "ping", "-c1", "-W1", &ip,
        ])
        .status
        .success()
    })
}

fn open(node_ns: &str, node: NodeNetwork, dir: &tempfile::TempDir) -> PodNetwork<IpCommands> {
    let store = IpamStore::new(dir.path().join(format!("{node_ns}.json")));
    match PodNetwork::open(IpCommands::in_netns(node_ns), node, store) {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    }
}

macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => panic!("{}: {e}", stringify!($e)),
        }
    };
}

#[test]
fn pods_on_one_node_reach_each_other_and_the_gateway() {
    if !lab() {
        return;
    }
    let mut cleanup = Cleanup::default();
    let dir = ok!(tempfile::tempdir());
    let node_ns = cleanup.node(&format!("tnet{}a", std::process::id()));
    let (a, b) = (uid("a001"), uid("b001"));
    let (a_ns, b_ns) = (pod_names(&a).netns, pod_names(&b).netns);
    cleanup.netns(&a_ns);
    cleanup.netns(&b_ns);
    let node = NodeNetwork {
        pod_cidr: cidr("10.244.77.0/24"),
        cluster_cidr: cidr("10.244.0.0/16"),
        peers: vec![],
    };
    let mut net = open(&node_ns, node.clone(), &dir);

    assert!(!ok!(net.setup_node()).is_empty());
    let pa = ok!(net.setup_pod(&a));
    let pb = ok!(net.setup_pod(&b));
    assert_eq!(pa.ip, Ipv4Addr::new(10, 244, 77, 2));
    assert_eq!(pb.ip, Ipv4Addr::new(10, 244, 77, 3));

    assert!(ping(&a_ns, pb.ip), "pod A cannot reach pod B at {}", pb.ip);
    assert!(
        ping(&a_ns, Ipv4Addr::new(10, 244, 77, 1)),
        "pod A cannot reach the gateway"
    );

    // Everything is there: a second setup does nothing, and changes nothing.
    let before = must(&["ip", "-n", &node_ns, "-br", "addr"]);
    let pod_before = must(&["ip", "-n", &a_ns, "route"]);
    assert_eq!(ok!(net.setup_node()), vec![]);
    assert_eq!(ok!(net.setup_pod(&a)).steps, vec![]);
    assert_eq!(ok!(net.setup_pod(&b)).steps, vec![]);
    assert_eq!(must(&["ip", "-n", &node_ns, "-br", "addr"]), before);
    assert_eq!(must(&["ip", "-n", &a_ns, "route"]), pod_before);
    assert!(
        pod_before.contains("default via 10.244.77.1 dev eth0"),
        "{pod_before}"
    );

    // Reopened (an agent restart), the IPs come from the record.
    drop(net);
    let mut net = open(&node_ns, node.clone(), &dir);
    assert_eq!(net.allocations().get(&b), Some(pb.ip));

    let table = must(&[
        "ip", "netns", "exec", &node_ns, "nft", "list", "table", "ip", "tend-nat",
    ]);
    assert!(
        table.contains("ip saddr 10.244.77.0/24 ip daddr != 10.244.0.0/16 masquerade"),
        "{table}"
    );

    // Pod B goes: its IP is free, its namespace and veth are gone, A no longer reaches it.
    assert_eq!(ok!(net.teardown_pod(&b)).len(), 2);
    assert_eq!(net.allocations().get(&b), None);
    assert!(!must(&["ip", "netns", "list"]).contains(&b_ns));
    let links = must(&["ip", "-n", &node_ns, "link"]);
    assert!(!links.contains(&pod_names(&b).host_veth), "{links}");
    assert!(!ping(&a_ns, pb.ip), "pod B's IP still answers");
    assert_eq!(ok!(net.teardown_pod(&b)), vec![], "teardown twice");
    // The freed IP goes to the next pod.
    let c = uid("c001");
    cleanup.netns(&pod_names(&c).netns);
    assert_eq!(ok!(net.setup_pod(&c)).ip, pb.ip);

    ok!(net.teardown_pod(&a));
    ok!(net.teardown_pod(&c));
    assert!(!ok!(net.teardown_node()).is_empty());
    assert_eq!(ok!(net.teardown_node()), vec![]);
    let gone = sh(&[
        "ip", "netns", "exec", &node_ns, "nft", "list", "table", "ip", "tend-nat",
    ]);
    assert!(!gone.status.success(), "tend-nat is still there");
    assert!(!must(&["ip", "-n", &node_ns, "link"]).contains("tend0"));
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_leave_masqueraded() {
    if !lab() {
        return;
    }
    let pid = std::process::id();
    let mut cleanup = Cleanup::default();
    let dir = ok!(tempfile::tempdir());
    let n1 = cleanup.node(&format!("tnet{pid}n1"));
    let n2 = cleanup.node(&format!("tnet{pid}n2"));
    let outside = cleanup.node(&format!("tnet{pid}o"));
    // Node addresses in 172.31.P.0/25, a host outside the pod network on 172.31.P.128/25
    // that knows no route to any pod CIDR.
    let p = pid % 250;
    let addr = |last: u8| format!("172.31.{p}.{last}");
    must(&[
        "ip", "-n", &n1, "link", "add", "nd", "type", "veth", "peer", "name", "nd", "netns", &n2,
    ]);
    must(&[
        "ip", "-n", &n1, "link", "add", "out", "type", "veth", "peer", "name", "out", "netns",
        &outside,
    ]);
    for (ns, dev, a) in [
        (&n1, "nd", addr(1) + "/25"),
        (&n2, "nd", addr(2) + "/25"),
        (&n1, "out", addr(129) + "/25"),
        (&outside, "out", addr(130) + "/25"),
    ] {
        must(&["ip", "-n", ns, "addr", "add", &a, "dev", dev]);
        must(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let via = |last: u8| -> Ipv4Addr { ok!(addr(last).parse()) };
    let node1 = NodeNetwork {
        pod_cidr: cidr("10.244.77.0/24"),
        cluster_cidr: cidr("10.244.0.0/16"),
        peers: vec![PeerRoute {
            pod_cidr: cidr("10.244.78.0/24"),
            via: via(2),
        }],
    };
    let node2 = NodeNetwork {
        pod_cidr: cidr("10.244.78.0/24"),
        cluster_cidr: cidr("10.244.0.0/16"),
        peers: vec![PeerRoute {
            pod_cidr: cidr("10.244.77.0/24"),
            via: via(1),
        }],
    };
    let mut net1 = open(&n1, node1, &dir);
    let mut net2 = open(&n2, node2, &dir);
    ok!(net1.setup_node());
    ok!(net2.setup_node());
    let (a, b) = (uid("a002"), uid("b002"));
    cleanup.netns(&pod_names(&a).netns);
    cleanup.netns(&pod_names(&b).netns);
    let pa = ok!(net1.setup_pod(&a));
    let pb = ok!(net2.setup_pod(&b));
    assert_eq!(pb.ip, Ipv4Addr::new(10, 244, 78, 2));

    assert!(
        ping(&pa.netns, pb.ip),
        "pod on node 1 cannot reach pod on node 2"
    );
    assert!(
        ping(&pb.netns, pa.ip),
        "pod on node 2 cannot reach pod on node 1"
    );
    // The outside host has no route back to 10.244.77.0/24: only masquerade makes this work.
    assert!(
        ping(&pa.netns, via(130)),
        "traffic leaving the pod network is not masqueraded"
    );

    // Node 2 leaves: node 1's route to it goes, the rest stays.
    let steps = ok!(net1.set_peers(vec![]));
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(!must(&["ip", "-n", &n1, "route"]).contains("10.244.78.0/24"));
    assert!(!ping(&pa.netns, pb.ip), "still routed after the peer left");

    ok!(net1.teardown_pod(&a));
    ok!(net2.teardown_pod(&b));
    ok!(net1.teardown_node());
    ok!(net2.teardown_node());
}
