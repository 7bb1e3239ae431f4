//! The netlink path against the `nft -j -f` path, for real: each test makes two scratch
//! network namespaces, programs one through `NetlinkNft` and the other through
//! `NftCommand` (nft's JSON), and compares what `nft list table ip tend-lb` prints in each.
//! Needs root, iproute2 and nftables; without them the tests skip with a reason, unless
//! `CI` is set, where they fail. The namespaces (and the tables in them) are removed in
//! Drop, also when a test fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use tend::agent::lb::diff::{self, Op};
use tend::agent::lb::model::{
    self, Desired, Endpoint, NodeInput, Protocol, ServiceInput, ServiceKind, ServicePort,
    ServiceSpec,
};
use tend::agent::lb::netlink::NetlinkNft;
use tend::agent::lb::nft::{NftApply, NftCommand, NftError};
use tend::agent::lb::{LbSync, SyncKind};

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Whether to run; skipping is a failure under CI.
fn lab() -> bool {
    match missing() {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but the netlink tests cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping: {reason}");
            false
        }
    }
}

fn must(args: &[&str]) -> String {
    let out = match Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("{args:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Scratch namespaces, deleted in Drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(n: usize) -> Namespaces {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut made = Namespaces(Vec::new());
        for i in 0..n {
            let name = format!("tnl{id}x{i}");
            must(&["ip", "netns", "add", &name]);
            made.0.push(name);
        }
        made
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn nft_in(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", ns, "nft"];
    full.extend_from_slice(args);
    must(&full)
}

/// `nft list table ip tend-lb`, with the elements of each set sorted (a hash set lists
/// them in an order of its own).
fn listing(ns: &str) -> String {
    normalize(&nft_in(ns, &["list", "table", "ip", "tend-lb"]))
}

fn normalize(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(at) = line.find("elements = {") else {
            out.push(line.trim_end().to_string());
            continue;
        };
        let mut block = line[at + "elements = {".len()..].to_string();
        while !block.trim_end().ends_with('}') {
            match lines.next() {
                Some(l) => block.push_str(l),
                None => break,
            }
        }
        let block = block.trim_end().trim_end_matches('}');
        let mut items: Vec<String> = block
            .split(',')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .collect();
        items.sort();
        out.push(format!(
            "{}elements = {{ {} }}",
            &line[..at],
            items.join(", ")
        ));
    }
    out.join("\n")
}

fn eps(first: u8, n: u8, port: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, first + i),
            port,
        })
        .collect()
}

fn service(
    name: &str,
    kind: ServiceKind,
    ip: Option<[u8; 4]>,
    ports: Vec<(&str, Protocol, u16, Option<u16>)>,
    endpoints: Vec<(&str, Vec<Endpoint>)>,
    affinity: Option<u32>,
) -> ServiceInput {
    ServiceInput {
        spec: ServiceSpec {
            namespace: "default".into(),
            name: name.into(),
            kind,
            cluster_ip: ip.map(Ipv4Addr::from),
            ports: ports
                .into_iter()
                .map(|(n, protocol, port, node_port)| ServicePort {
                    name: n.into(),
                    protocol,
                    port,
                    node_port,
                })
                .collect(),
            affinity_timeout: affinity,
        },
        endpoints: endpoints
            .into_iter()
            .map(|(n, e)| (n.to_string(), e))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A realistic cluster: ClusterIP, NodePort, multi-port (TCP + UDP), affinity, no
/// endpoints, headless with a NodePort, ExternalName; `web` has `web_endpoints`.
fn cluster(web_endpoints: u8, sticky: Option<u32>, with_api: bool) -> Vec<ServiceInput> {
    let tcp = Protocol::Tcp;
    let mut out = vec![
        service(
            "web",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 10]),
            vec![("http", tcp, 80, None)],
            vec![("http", eps(10, web_endpoints, 8080))],
            None,
        ),
        service(
            "shop",
            ServiceKind::NodePort,
            Some([10, 96, 0, 11]),
            vec![("", tcp, 80, Some(30080))],
            vec![("", eps(20, 2, 8080))],
            None,
        ),
        service(
            "dns",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 53]),
            vec![("dns", Protocol::Udp, 53, None), ("dns-tcp", tcp, 53, None)],
            vec![("dns", eps(30, 2, 5353)), ("dns-tcp", eps(30, 2, 5353))],
            None,
        ),
        service(
            "sticky",
            ServiceKind::LoadBalancer,
            Some([10, 96, 0, 12]),
            vec![("", tcp, 443, Some(30443))],
            vec![("", eps(40, 3, 8443))],
            sticky,
        ),
        service(
            "empty",
            ServiceKind::NodePort,
            Some([10, 96, 0, 13]),
            vec![("", Protocol::Sctp, 80, Some(30081))],
            vec![],
            None,
        ),
        service(
            "headless",
            ServiceKind::NodePort,
            None,
            vec![("", tcp, 80, Some(30082))],
            vec![("", eps(50, 1, 80))],
            None,
        ),
        service(
            "alias",
            ServiceKind::ExternalName,
            None,
            vec![("", tcp, 80, None)],
            vec![],
            None,
        ),
    ];
    if with_api {
        out.push(service(
            "api",
            ServiceKind::ClusterIp,
            Some([10, 96, 0, 1]),
            vec![("https", tcp, 443, None)],
            vec![("https", eps(60, 1, 6443))],
            None,
        ));
    }
    out
}

fn node(cidr: (Ipv4Addr, u8), localhost: bool) -> NodeInput {
    NodeInput {
        cluster_cidr: Some(cidr),
        localhost_node_ports: localhost,
    }
}

/// The same operations through both paths; the listings must be equal.
fn apply_both(netlink: &mut NetlinkNft, json: &mut NftCommand, ops: &[Op], step: &str) {
    if let Err(e) = netlink.apply(ops) {
        panic!("{step}: netlink: {e}");
    }
    if let Err(e) = json.apply(ops) {
        panic!("{step}: nft -j -f: {e}");
    }
    let (a, b) = (
        listing(netlink.netns.as_deref().unwrap_or_default()),
        listing(json.netns.as_deref().unwrap_or_default()),
    );
    assert_eq!(a, b, "{step}: netlink (left) and nft -j -f (right) differ");
}

#[test]
fn netlink_and_nft_json_program_the_same_table_in_full_and_incremental_syncs() {
    if !lab() {
        return;
    }
    let ns = Namespaces::new(2);
    let mut netlink = NetlinkNft::new(Some(ns.0[0].clone()));
    let mut json = NftCommand {
        netns: Some(ns.0[1].clone()),
    };
    // A /12 needs a bitwise mask on the second byte; /16 and /8 compare whole bytes.
    let n0 = node((Ipv4Addr::new(10, 240, 0, 0), 12), false);
    let steps: Vec<(&str, Desired)> = vec![
        ("start", model::desired(&cluster(3, None, true), &n0)),
        (
            "endpoint added",
            model::desired(&cluster(4, None, true), &n0),
        ),
        (
            "endpoint removed",
            model::desired(&cluster(2, None, true), &n0),
        ),
        ("scaled up", model::desired(&cluster(9, None, true), &n0)),
        ("no endpoints", model::desired(&cluster(0, None, true), &n0)),
        (
            "service deleted",
            model::desired(&cluster(1, None, false), &n0),
        ),
        (
            "affinity added",
            model::desired(&cluster(1, Some(60), false), &n0),
        ),
        (
            "affinity timeout changed",
            model::desired(&cluster(1, Some(30), false), &n0),
        ),
        (
            "affinity removed",
            model::desired(&cluster(1, None, false), &n0),
        ),
        (
            "affinity back",
            model::desired(&cluster(1, Some(30), false), &n0),
        ),
        (
            "localhost NodePorts",
            model::desired(&cluster(1, Some(30), false), &{
                let mut n = n0.clone();
                n.localhost_node_ports = true;
                n
            }),
        ),
    ];
    let mut applied: Option<&Desired> = None;
    for (step, desired) in &steps {
        let ops = match applied {
            None => diff::full(desired, "tend-lb test 1"),
            Some(before) => diff::diff(before, desired),
        };
        assert!(!ops.is_empty(), "{step}: no change");
        apply_both(&mut netlink, &mut json, &ops, step);
        applied = Some(desired);
        if *step == "scaled up" {
            // Services without affinity: fixed rules, endpoints in an interval map and an
            // address set; UDP's map names udp's dport.
            let text = listing(&ns.0[0]);
            for expected in [
                "typeof numgen random mod 65536 : ip daddr . tcp dport",
                "typeof numgen random mod 65536 : ip daddr . udp dport",
                "flags interval",
                "meta l4proto udp dnat ip to numgen random mod 65536 map @svc-",
                "jump mark-for-masquerade",
                "0-7280 : 10.244.1.10 . 8080",
                "58254-65535 : 10.244.1.18 . 8080",
                "10.244.1.10, 10.244.1.11",
            ] {
                assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
            }
            assert!(!text.contains("chain sep-"), "{text}");
        }
    }
    let text = listing(&ns.0[0]);
    for expected in [
        "ip saddr != 10.240.0.0/12 jump mark-for-masquerade",
        "numgen random mod",
        "update @aff-",
        "dnat to 10.244.1.",
        "comment \"tend-lb test 1\"",
        "fib daddr type local meta l4proto . th dport vmap @service-nodeports",
        "reject with tcp reset",
        "masquerade fully-random",
        "ct state new jump",
        "sctp . 30081 : goto reject-no-endpoints",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }
    // A second full sync over the table (delete and rebuild) also matches.
    let last = &steps[steps.len() - 1].1;
    apply_both(
        &mut netlink,
        &mut json,
        &diff::full(last, "tend-lb test 2"),
        "full sync again",
    );
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_operation() {
    if !lab() {
        return;
    }
    let ns = Namespaces::new(1);
    let mut netlink = NetlinkNft::new(Some(ns.0[0].clone()));
    let desired = model::desired(
        &cluster(2, None, false),
        &node((Ipv4Addr::new(10, 244, 0, 0), 16), false),
    );
    netlink
        .apply(&diff::full(&desired, "m"))
        .expect("full sync");
    let before = listing(&ns.0[0]);
    let err = netlink
        .apply(&[
            Op::AddChain("new-chain".into()),
            Op::FlushChain("svc-missing".into()),
            Op::DeleteChain("svc-missing".into()),
        ])
        .expect_err("a chain that does not exist");
    match &err {
        NftError::Refused { index, ops, op, .. } => {
            assert_eq!((*index, *ops), (2, 3), "{err}");
            assert_eq!(op, "flush chain ip tend-lb svc-missing", "{err}");
        }
        other => panic!("expected Refused, got {other}"),
    }
    let line = err.to_string();
    assert!(line.contains("No such file or directory"), "{line}");
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(
        listing(&ns.0[0]),
        before,
        "the failed batch changed the table"
    );
}

#[test]
fn the_drift_marker_is_read_over_netlink() {
    if !lab() {
        return;
    }
    let ns = Namespaces::new(1);
    let name = ns.0[0].clone();
    let mut netlink = NetlinkNft::new(Some(name.clone()));
    // No table at all: no marker, and no error.
    assert_eq!(netlink.observe().expect("observe"), None);
    let desired = model::desired(&cluster(2, None, true), &NodeInput::default());
    let mut lb = LbSync::new(netlink, "1234-5");
    assert_eq!(lb.sync(desired.clone()).expect("sync").kind, SyncKind::Full);
    assert_eq!(
        lb.nft_mut().observe().expect("observe"),
        Some("tend-lb 1234-5 1".into())
    );
    assert!(!lb.check().expect("check"));
    // The comment is nft's own: `nft list` shows it.
    assert!(
        nft_in(&name, &["list", "chain", "ip", "tend-lb", "marker"])
            .contains("comment \"tend-lb 1234-5 1\"")
    );
    nft_in(&name, &["flush", "chain", "ip", "tend-lb", "marker"]);
    assert!(lb.check().expect("check"), "a flushed marker is drift");
    assert_eq!(lb.sync(desired.clone()).expect("sync").kind, SyncKind::Full);
    assert!(!lb.check().expect("check"));
    nft_in(&name, &["delete", "table", "ip", "tend-lb"]);
    assert!(lb.check().expect("check"), "a deleted table is drift");
    // A table of the same name in another family is not ours.
    nft_in(&name, &["add", "table", "inet", "tend-lb"]);
    assert_eq!(lb.nft_mut().observe().expect("observe"), None);
}
