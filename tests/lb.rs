//! Service load balancing for real, inside network namespaces these tests create: a "node"
//! namespace holds the `tend-lb` table; "pod" namespaces beside it (one veth each) run
//! busybox httpd answering their own name; a "client" namespace reaches NodePorts from
//! outside the node. Needs root, iproute2, nftables, curl and /bin/busybox; without them
//! the tests skip with a reason, unless `CI` is set, where they fail. Everything created is
//! removed by a Drop guard, also when a test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tend::agent::lb::model::{
    self, Endpoint, NodeInput, Protocol, ServiceInput, ServiceKind, ServicePort, ServiceSpec,
};
use tend::agent::lb::netlink::NetlinkNft;
use tend::agent::lb::{LbSync, SyncKind};

fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version"), ("curl", "--version")] {
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
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Whether to run; skipping is a failure under CI.
fn lab() -> bool {
    match missing() {
        None => true,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("CI is set but the load-balancer lab cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("skipping: {reason}");
            false
        }
    }
}

fn run(args: &[&str]) -> std::process::Output {
    match Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The namespaces and servers of one test; Drop stops the servers, then removes the
/// namespaces (links and nft tables inside go with them) and the page directories.
struct Lab {
    id: String,
    node: String,
    client: String,
    pods: Vec<String>,
    netns: Vec<String>,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.netns.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// The pod IP of pod `i`, and the node's address on that pod's link.
fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8 + 1, 2)
}

const NODE_OUTSIDE: &str = "192.168.77.1";

impl Lab {
    fn new(pods: usize) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let mut lab = Lab {
            node: format!("lbn{id}"),
            client: format!("lbc{id}"),
            pods: Vec::new(),
            netns: Vec::new(),
            servers: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            id,
        };
        let node = lab.node.clone();
        lab.add_netns(&node);
        must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        // The service CIDR goes to lo (no dummy links on this kernel), as LAB.md says.
        must(&[
            "ip",
            "-n",
            &node,
            "route",
            "add",
            "10.96.0.0/12",
            "dev",
            "lo",
        ]);
        for i in 0..pods {
            lab.add_pod(i);
        }
        let client = lab.client.clone();
        lab.add_netns(&client);
        let (a, b) = (format!("lbo{}", lab.id), "eth0");
        must(&[
            "ip", "-n", &node, "link", "add", &a, "type", "veth", "peer", "name", b, "netns",
            &client,
        ]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE_OUTSIDE}/24"),
            "dev",
            &a,
        ]);
        must(&["ip", "-n", &node, "link", "set", &a, "up"]);
        must(&["ip", "-n", &client, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "-n",
            &client,
            "addr",
            "add",
            "192.168.77.2/24",
            "dev",
            b,
        ]);
        must(&["ip", "-n", &client, "link", "set", b, "up"]);
        lab
    }

    fn add_netns(&mut self, name: &str) {
        must(&["ip", "netns", "add", name]);
        self.netns.push(name.to_string());
    }

    fn add_pod(&mut self, i: usize) {
        let pod = format!("lbp{}x{i}", self.id);
        self.add_netns(&pod);
        let node = self.node.clone();
        let link = format!("lbv{}x{i}", self.id);
        let gw = Ipv4Addr::new(10, 244, i as u8 + 1, 1);
        must(&[
            "ip", "-n", &node, "link", "add", &link, "type", "veth", "peer", "name", "eth0",
            "netns", &pod,
        ]);
        must(&[
            "ip",
            "-n",
            &node,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            &link,
        ]);
        must(&["ip", "-n", &node, "link", "set", &link, "up"]);
        must(&["ip", "-n", &pod, "link", "set", "lo", "up"]);
        must(&[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{}/24", pod_ip(i)),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &pod, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "-n",
            &pod,
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ]);
        let www = self.dir.path().join(format!("www{i}"));
        std::fs::create_dir_all(&www).expect("www");
        std::fs::write(www.join("index.html"), format!("pod{i}\n")).expect("page");
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod,
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
            ])
            .arg(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox httpd");
        self.servers.push(server);
        self.pods.push(pod);
        // Up when it answers on its own IP from the node.
        let deadline = Instant::now() + Duration::from_secs(5);
        let url = format!("http://{}:8080/", pod_ip(i));
        while self.curl(&self.node.clone(), &url).0 != Some(0) {
            assert!(Instant::now() < deadline, "pod {i}'s httpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// curl from a namespace: (exit code, body, time taken).
    fn curl(&self, netns: &str, url: &str) -> (Option<i32>, String, Duration) {
        let start = Instant::now();
        let out = run(&[
            "ip",
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "--max-time",
            "3",
            url,
        ]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            start.elapsed(),
        )
    }

    /// The bodies of `n` requests to `url` from `netns`, each of which must succeed.
    fn answers(&self, netns: &str, url: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let (code, body, _) = self.curl(netns, url);
                assert_eq!(code, Some(0), "curl {url} from {netns}");
                body
            })
            .collect()
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.node, "nft"];
        all.extend_from_slice(args);
        must(&all)
    }
}

fn service(
    name: &str,
    kind: ServiceKind,
    ip: [u8; 4],
    node_port: Option<u16>,
    pods: &[usize],
    affinity: Option<u32>,
) -> ServiceInput {
    let endpoints: Vec<Endpoint> = pods
        .iter()
        .map(|i| Endpoint {
            ip: pod_ip(*i),
            port: 8080,
        })
        .collect();
    ServiceInput {
        spec: ServiceSpec {
            namespace: "default".into(),
            name: name.into(),
            kind,
            cluster_ip: Some(Ipv4Addr::from(ip)),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port,
            }],
            affinity_timeout: affinity,
        },
        endpoints: BTreeMap::from([("http".to_string(), endpoints)]),
    }
}

fn distinct(answers: &[String]) -> BTreeSet<String> {
    answers.iter().cloned().collect()
}

#[test]
fn services_balance_follow_endpoint_changes_and_survive_drift() {
    if !lab() {
        return;
    }
    let lab = Lab::new(3);
    let node = lab.node.clone();
    // A table tend does not own, made before the first sync: it must survive every sync.
    lab.nft(&["add", "table", "ip", "other"]);
    lab.nft(&["add", "chain", "ip", "other", "keep"]);
    lab.nft(&[
        "add",
        "rule",
        "ip",
        "other",
        "keep",
        "counter",
        "comment",
        "\"not tend's\"",
    ]);

    let node_input = NodeInput::default();
    let all = |web_pods: &[usize]| {
        model::desired(
            &[
                service(
                    "web",
                    ServiceKind::NodePort,
                    [10, 96, 0, 10],
                    Some(30080),
                    web_pods,
                    None,
                ),
                service(
                    "empty",
                    ServiceKind::NodePort,
                    [10, 96, 0, 11],
                    Some(30081),
                    &[],
                    None,
                ),
                service(
                    "sticky",
                    ServiceKind::ClusterIp,
                    [10, 96, 0, 12],
                    None,
                    &[0, 1, 2],
                    Some(60),
                ),
            ],
            &node_input,
        )
    };
    // The agent's path: netlink (tests/lb_netlink.rs compares it with nft -j -f).
    let mut lb = LbSync::new(NetlinkNft::new(Some(node.clone())), "test");
    let report = lb.sync(all(&[0, 1, 2])).expect("full sync");
    assert_eq!(report.kind, SyncKind::Full);

    // Every backend answers on the ClusterIP, from the node.
    let seen = distinct(&lab.answers(&node, "http://10.96.0.10/", 40));
    assert_eq!(
        seen,
        BTreeSet::from(["pod0".into(), "pod1".into(), "pod2".into()])
    );
    // Hairpin: a pod reaches itself through its own Service (masqueraded because its
    // address is in the Service's endpoint set; else its own address would come back to
    // it and be dropped), and the others as well.
    let seen = distinct(&lab.answers(&lab.pods[0], "http://10.96.0.10/", 40));
    assert_eq!(seen.len(), 3, "from pod0: {seen:?}");
    // NodePort: on the node's own address from the node, and from outside the node.
    let seen = distinct(&lab.answers(&node, "http://10.244.1.1:30080/", 30));
    assert_eq!(seen.len(), 3, "NodePort from the node: {seen:?}");
    let seen = distinct(&lab.answers(&lab.client, &format!("http://{NODE_OUTSIDE}:30080/"), 30));
    assert_eq!(seen.len(), 3, "NodePort from outside: {seen:?}");
    // ClientIP affinity: one client, one backend.
    let seen = distinct(&lab.answers(&node, "http://10.96.0.12/", 15));
    assert_eq!(seen.len(), 1, "affinity: {seen:?}");

    // No endpoints: refused at once (TCP reset), not a timeout.
    for (ns, url) in [
        (node.as_str(), "http://10.96.0.11/".to_string()),
        (lab.client.as_str(), format!("http://{NODE_OUTSIDE}:30081/")),
    ] {
        let (code, _, took) = lab.curl(ns, &url);
        assert_eq!(code, Some(7), "{url}: curl exit 7 is 'connection refused'");
        assert!(took < Duration::from_secs(1), "{url} took {took:?}");
    }

    // One endpoint goes: a small transaction, and it never answers again.
    let report = lb.sync(all(&[0, 1])).expect("incremental");
    assert_eq!(report.kind, SyncKind::Incremental);
    // The Service's two sets flushed and refilled: no rule, no chain.
    assert_eq!(report.ops, 4);
    let seen = distinct(&lab.answers(&node, "http://10.96.0.10/", 30));
    assert_eq!(seen, BTreeSet::from(["pod0".into(), "pod1".into()]));
    // And back: all three again.
    assert_eq!(lb.sync(all(&[0, 1, 2])).expect("back").ops, 4);
    assert_eq!(
        distinct(&lab.answers(&node, "http://10.96.0.10/", 40)).len(),
        3
    );
    lb.sync(all(&[0, 1])).expect("incremental");
    // Nothing changed: nothing sent.
    assert_eq!(lb.sync(all(&[0, 1])).expect("same").kind, SyncKind::Nothing);
    // The last endpoint goes: the Service rejects at once.
    lb.sync(all(&[])).expect("no endpoints");
    let (code, _, took) = lab.curl(&node, "http://10.96.0.10/");
    assert_eq!(code, Some(7));
    assert!(took < Duration::from_secs(1));
    lb.sync(all(&[2])).expect("back");
    assert_eq!(
        distinct(&lab.answers(&node, "http://10.96.0.10/", 5)),
        BTreeSet::from(["pod2".into()])
    );

    // No drift: nothing to do.
    assert!(!lb.check().expect("check"));
    // Flushed by hand: drift found, a full sync restores it.
    lab.nft(&["flush", "table", "ip", "tend-lb"]);
    assert!(lb.check().expect("check"));
    assert_eq!(
        lb.sync(all(&[0, 1, 2])).expect("resync").kind,
        SyncKind::Full
    );
    assert_eq!(
        distinct(&lab.answers(&node, "http://10.96.0.10/", 40)).len(),
        3
    );
    // Deleted by hand: the same.
    lab.nft(&["delete", "table", "ip", "tend-lb"]);
    assert!(lb.check().expect("check"));
    assert_eq!(
        lb.sync(all(&[0, 1, 2])).expect("resync").kind,
        SyncKind::Full
    );
    assert_eq!(
        distinct(&lab.answers(&node, "http://10.96.0.10/", 40)).len(),
        3
    );

    // The foreign table is untouched.
    let other = lab.nft(&["list", "table", "ip", "other"]);
    assert!(other.contains("chain keep"), "{other}");
    assert!(other.contains("not tend's"), "{other}");
}
