//! The pod network as `tend agent` runs it: from inside its node's network namespace
//! (`IpCommands::new()`, no `-n NODE`), where consecutive `ip` steps run as one `ip -batch`
//! and the forwarding flag is read and written without a process. The test's thread joins a
//! node namespace the test makes (commands it starts are in it too). Needs root, iproute2,
//! nftables and busybox (ping); skips with a reason without them unless `CI` is set, where
//! it fails. The namespaces (and all inside) are removed in Drop, also on failure.

use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use tend::agent::network::ip::IpCommands;
use tend::agent::network::ipam::IpamStore;
use tend::agent::network::plan::pod_names;
use tend::agent::network::{NetOps, NodeNetwork, PodNetwork, Step};

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

fn must(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces removed in Drop, last made first.
#[derive(Default)]
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn an_agent_inside_its_node_sets_pods_up_in_batches() {
    if let Some(reason) = missing_lab() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but the network lab cannot run: {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    let pid = std::process::id();
    let mut cleanup = Cleanup::default();
    let node = format!("tnin{pid}");
    cleanup.0.push(node.clone());
    must(&["ip", "netns", "add", &node]);
    must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
    let uids: Vec<String> = ["a", "b"]
        .iter()
        .map(|t| format!("{pid:08x}c{t}0-0000-4000-8000-000000000000"))
        .collect();
    cleanup.0.extend(uids.iter().map(|u| pod_names(u).netns));
    let dir = tempfile::tempdir().expect("tempdir");
    let ns_file = std::fs::File::open(format!("/var/run/netns/{node}")).expect("node netns");
    let uids_in = uids.clone();
    let store = IpamStore::new(dir.path().join("ipam.json"));
    // Everything below runs in the node namespace, as the agent does.
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it changes only this thread.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let node = NodeNetwork {
            pod_cidr: "10.244.9.0/24".parse().expect("cidr"),
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            peers: Vec::new(),
        };
        let mut net = PodNetwork::open(IpCommands::new(), node, store).expect("open");
        let steps = net.setup_node().expect("node");
        assert!(steps.contains(&Step::EnableForwarding), "{steps:?}");
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read"),
            "1\n"
        );
        assert!(net.setup_node().expect("node again").is_empty());
        let a = net.setup_pod(&uids_in[0]).expect("pod a");
        let b = net.setup_pod(&uids_in[1]).expect("pod b");
        assert_eq!(a.steps.len(), 8, "{:?}", a.steps);
        assert!(
            net.setup_pod(&uids_in[1])
                .expect("b again")
                .steps
                .is_empty()
        );
        let ping = Command::new("ip")
            .args(["netns", "exec", &a.netns, "busybox", "ping", "-c1", "-W2"])
            .arg(b.ip.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("ping");
        assert!(ping.success(), "pod a cannot reach pod b at {}", b.ip);

        // A tolerated failure in the middle of a batch: the rest still runs.
        let mut ops = IpCommands::new();
        ops.apply_all(&[
            Step::CreateNetns {
                name: a.netns.clone(),
            },
            Step::CreateBridge { name: "tb0".into() },
            Step::LinkUp { dev: "tb0".into() },
        ])
        .expect("tolerated");
        assert_eq!(
            ops.observe().expect("observe").links.get("tb0"),
            Some(&true)
        );
        // Any other failure stops the batch and names the step.
        let err = ops
            .apply_all(&[
                Step::LinkUp {
                    dev: "nosuch0".into(),
                },
                Step::CreateBridge { name: "tb1".into() },
            ])
            .expect_err("no such device");
        assert!(err.to_string().contains("link set nosuch0 up"), "{err}");
        assert!(!ops.observe().expect("observe").links.contains_key("tb1"));

        for u in &uids_in {
            net.teardown_pod(u).expect("teardown");
        }
        let observed = IpCommands::new().observe().expect("observe");
        for u in &uids_in {
            let names = pod_names(u);
            assert!(!observed.netns.contains(&names.netns), "{names:?} left");
            assert!(
                !observed.links.contains_key(&names.host_veth),
                "{names:?} left"
            );
        }
        assert!(net.allocations().pods.is_empty());
    })
    .join()
    .expect("the test thread in the node namespace");
    let links = must(&["ip", "-n", &node, "-o", "link", "show"]);
    assert!(links.contains("tend0"), "{links}");
}
