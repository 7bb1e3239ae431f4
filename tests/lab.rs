//! The multi-node lab (issue 4): nodes as network namespaces on one bridge, Debian's
//! docker-registry on the bridge, busybox-static images built with umoci (httpd with a page
//! naming the version and a CGI answering the pod's hostname), a real `tend serve` and one
//! real `tend agent` per node, driven by git commits.
//!
//! Needs root, runc, nft, ip, umoci, skopeo, docker-registry and /bin/busybox. Without
//! them the tests print why and pass, except under `CI`, where they fail. Everything the lab
//! makes (processes, containers, mounts, namespaces, links) is removed in `Drop`, also when a
//! test fails. Lab tests run one at a time (`.config/nextest.toml`).

mod common;

use common::{Repos, Serve, TEND, items};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/tools.rs"]
mod tools;
use tools::{quiet, run, s};

/// The tools the lab runs.
const LAB_TOOLS: &[&str] = &[
    "runc",
    "nft",
    "ip",
    "nsenter",
    "curl",
    "umoci",
    "skopeo",
    "docker-registry",
];

/// Whether the lab can run; prints why not, or panics under CI.
fn lab_possible(test: &str) -> bool {
    tools::possible(test, "the lab", LAB_TOOLS)
}

/// A node of the lab: a network namespace with `eth0` on the lab bridge, and its agent.
struct Node {
    name: String,
    netns: String,
    address: String,
    state: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
    images: Option<PathBuf>,
}

/// The whole lab; `Drop` removes all of it.
struct Lab {
    tmp: tempfile::TempDir,
    bridge: String,
    gateway: String,
    nodes: Vec<Node>,
    registry: Option<Child>,
    /// `HOST:PORT` of the registry.
    registry_addr: String,
    serve: Option<Serve>,
    repos: Repos,
}

impl Lab {
    /// `nodes` nodes (`node01`...); `air` names the nodes given `--images` with an archive
    /// of `airgap/web:v1`.
    fn start(nodes: usize, air: &[usize]) -> Lab {
        Lab::start_with(nodes, air, false)
    }

    /// As [`Lab::start`]; with `example_images`, the `--images` directory also holds every
    /// image examples/images/build.sh builds (the examples' `web:v1`...), made by that script.
    fn start_with(nodes: usize, air: &[usize], example_images: bool) -> Lab {
        let pid = std::process::id();
        let id = pid % 100_000;
        let subnet = 100 + (pid % 100) as u8;
        let gateway = format!("172.30.{subnet}.1");
        let tmp = tempfile::Builder::new()
            .prefix("tend-lab-")
            .tempdir()
            .expect("temp dir");
        let mut lab = Lab {
            tmp,
            bridge: format!("tlb{id}"),
            gateway: gateway.clone(),
            nodes: Vec::new(),
            registry: None,
            registry_addr: String::new(),
            serve: None,
            repos: Repos::new(),
        };
        // The bridge first, so that Drop removes it whatever fails next.
        run("ip", &["link", "add", &lab.bridge, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{gateway}/24"), "dev", &lab.bridge],
        );
        run("ip", &["link", "set", &lab.bridge, "up"]);
        for i in 1..=nodes {
            let netns = format!("tl{id}n{i}");
            let host = format!("tl{id}h{i}");
            let peer = format!("tl{id}p{i}");
            let address = format!("172.30.{subnet}.{}", 10 + i);
            let state = lab.tmp.path().join(format!("node{i:02}"));
            std::fs::create_dir_all(&state).expect("node state");
            lab.nodes.push(Node {
                name: format!("node{i:02}"),
                netns: netns.clone(),
                address: address.clone(),
                log: lab.tmp.path().join(format!("node{i:02}.log")),
                state,
                agent: None,
                images: air.contains(&i).then(|| lab.tmp.path().join("air-images")),
            });
            run("ip", &["netns", "add", &netns]);
            run(
                "ip",
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
            );
            run("ip", &["link", "set", &peer, "netns", &netns]);
            run("ip", &["link", "set", &host, "master", &lab.bridge, "up"]);
            let ns = |args: &[&str]| {
                let mut all = vec!["-n", netns.as_str()];
                all.extend_from_slice(args);
                run("ip", &all);
            };
            ns(&["link", "set", &peer, "name", "eth0"]);
            ns(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
            ns(&["link", "set", "eth0", "up"]);
            ns(&["link", "set", "lo", "up"]);
        }
        lab.start_registry();
        lab.build_images();
        if example_images {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images/build.sh");
            let air = lab.tmp.path().join("air-images");
            run("bash", &[s(&script), s(&air)]);
        }
        let state = lab.tmp.path().join("serve");
        lab.serve = Some(Serve::start_on(
            &format!("{gateway}:0"),
            &["--repo", s(&lab.repos.bare), "--node-grace", "30"],
            &state,
        ));
        for i in 0..lab.nodes.len() {
            lab.start_agent(i);
        }
        // Every node registered and Ready before a test deploys: a commit that races the
        // agents' registration is scheduled onto the nodes known by then, as Kubernetes'
        // scheduler would do, and the spread the tests check would depend on that race.
        let want = lab.nodes.len();
        lab.serve()
            .wait_for("/api/v1/nodes", "every lab node Ready", |v| {
                v["items"].as_array().is_some_and(|nodes| {
                    nodes.len() == want
                        && nodes.iter().all(|n| {
                            n["status"]["conditions"].as_array().is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                            })
                        })
                })
            });
        lab
    }

    fn serve(&self) -> &Serve {
        self.serve.as_ref().expect("serve runs")
    }

    fn start_registry(&mut self) {
        let port = TcpListener::bind((self.gateway.as_str(), 0))
            .and_then(|l| l.local_addr())
            .expect("free port on the bridge")
            .port();
        self.registry_addr = format!("{}:{port}", self.gateway);
        let config = self.tmp.path().join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {}}}\n",
                s(&self.tmp.path().join("registry")),
                self.registry_addr
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .args(["serve", s(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.tmp.path().join("registry.log")).expect("log"))
            .spawn()
            .expect("docker-registry starts");
        self.registry = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.registry_addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}",
                self.registry_addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `web:v1`, `web:v2` and `web:v3` pushed to the registry: busybox httpd on port 80 serving
    /// `web <version>` at `/` and the pod's hostname at `/cgi-bin/hostname`; v1 also as a
    /// docker archive `airgap/web:v1` for `--images`.
    fn build_images(&self) {
        let w = self.tmp.path().join("build");
        let img = w.join("img");
        run("umoci", &["init", "--layout", s(&img)]);
        for version in ["v1", "v2", "v3"] {
            let tag = format!("{}:{version}", s(&img));
            let ub = w.join(format!("ub-{version}"));
            run("umoci", &["new", "--image", &tag]);
            run("umoci", &["unpack", "--image", &tag, s(&ub)]);
            let rootfs = ub.join("rootfs");
            for dir in ["bin", "www/cgi-bin", "tmp", "etc"] {
                std::fs::create_dir_all(rootfs.join(dir)).expect("mkdir");
            }
            std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
            run(
                "chroot",
                &[s(&rootfs), "/bin/busybox", "--install", "-s", "/bin"],
            );
            std::fs::write(rootfs.join("www/index.html"), format!("web {version}\n"))
                .expect("page");
            let cgi = rootfs.join("www/cgi-bin/hostname");
            std::fs::write(
                &cgi,
                "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhostname\n",
            )
            .expect("cgi");
            run("chmod", &["0755", s(&cgi)]);
            run("umoci", &["repack", "--image", &tag, s(&ub)]);
            run(
                "umoci",
                &[
                    "config",
                    "--image",
                    &tag,
                    "--config.entrypoint",
                    "/bin/httpd",
                    "--config.cmd=-f",
                    "--config.cmd=-p",
                    "--config.cmd=80",
                    "--config.cmd=-h",
                    "--config.cmd=/www",
                    "--config.exposedports=80/tcp",
                ],
            );
            run(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    &format!("oci:{tag}"),
                    &format!("docker://{}/web:{version}", self.registry_addr),
                ],
            );
        }
        let air = self.tmp.path().join("air-images");
        std::fs::create_dir_all(&air).expect("air dir");
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &format!("oci:{}:v1", s(&img)),
                &format!("docker-archive:{}:airgap/web:v1", s(&air.join("web.tar"))),
            ],
        );
    }

    fn start_agent(&mut self, i: usize) {
        let serve = self.serve.as_ref().expect("serve runs");
        let node = &self.nodes[i];
        // nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts
        // runc needs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", node.netns))
            .args([TEND, "agent"])
            .args(["--server", &serve.url, "--token-file"])
            .arg(serve.state.join("join.token"))
            .args(["--name", &node.name, "--address", &node.address])
            .arg("--state")
            .arg(&node.state)
            .args(["--insecure-registry", &self.registry_addr])
            .args(["--heartbeat", "1s", "--sync-period", "1s"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&node.log)
                    .expect("agent log"),
            );
        if let Some(images) = &node.images {
            cmd.arg("--images").arg(images);
        }
        let child = cmd.spawn().expect("tend agent starts");
        self.nodes[i].agent = Some(child);
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agents' logs, for failure messages.
    fn agent_logs(&self) -> String {
        let mut all = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let routes = quiet("ip", &["-n", &n.netns, "route"]).unwrap_or_default();
            let forward = self
                .on_node(0, &["cat", "/proc/sys/net/ipv4/ip_forward"])
                .unwrap_or_default();
            all.push_str(&format!(
                "--- {} routes (forwarding {}):\n{routes}",
                n.name,
                forward.trim()
            ));
            all.push_str(&format!("--- {} (last lines)\n", n.name));
            for line in tail.iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// Runs `args` in node `i`'s network namespace; stdout when it succeeds.
    fn on_node(&self, i: usize, args: &[&str]) -> Option<String> {
        let mut all = vec!["netns", "exec", self.nodes[i].netns.as_str()];
        all.extend_from_slice(args);
        quiet("ip", &all)
    }

    /// Like [`Lab::fetch`], retried for up to 10 s (a Running container without a readiness
    /// probe may not listen yet).
    fn fetch_eventually(&self, i: usize, ip: &str, path: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self.fetch(i, ip, path);
            if answer.is_some() || Instant::now() > deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET http://ip:80/path` from node `i`.
    fn fetch(&self, i: usize, ip: &str, path: &str) -> Option<String> {
        self.on_node(
            i,
            // curl: the static busybox's wget crashes when it resolves.
            &["curl", "-sf", "-m", "3", &format!("http://{ip}{path}")],
        )
    }

    fn deploy(&self, file: &str, yaml: &str, message: &str) {
        self.repos.write(file, yaml);
        let commit = self.repos.commit(message);
        self.repos.push();
        let revision = self.serve().wait_revision(&commit);
        assert_eq!(common::phase(&revision), "Applied", "revision {revision}");
    }

    fn pods(&self, app: &str) -> Vec<Value> {
        items(&self.serve().get_ok(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"
        )))
    }

    /// Polls the pods of `app` until `check` holds; panics with the pods and the agents'
    /// logs after `limit`.
    fn wait_pods(
        &self,
        app: &str,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let pods = self.pods(app);
            if check(&pods) {
                return pods;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; pods: {}\n{}",
                    serde_json::to_string_pretty(&pods).unwrap_or_default(),
                    self.agent_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Containers runc runs for node `i`: id -> pid.
    fn containers(&self, i: usize) -> BTreeMap<String, u64> {
        let root = self.nodes[i].state.join("runc");
        let text =
            quiet("runc", &["--root", s(&root), "list", "--format", "json"]).unwrap_or_default();
        let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "running")
            .filter_map(|c| Some((c["id"].as_str()?.to_string(), c["pid"].as_u64()?)))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_agent(i);
        }
        // Containers, then their mounts and pod namespaces, then nodes, bridge, processes.
        let mut pod_netns = BTreeSet::new();
        for node in &self.nodes {
            let root = node.state.join("runc");
            let text = quiet("runc", &["--root", s(&root), "list", "-q"]).unwrap_or_default();
            for id in text.lines().filter(|l| !l.is_empty()) {
                let _ = quiet("runc", &["--root", s(&root), "delete", "--force", id]);
                let uid: String = id.chars().take(36).collect();
                pod_netns.insert(tend::agent::network::plan::pod_names(&uid).netns);
            }
            let ipam =
                std::fs::read_to_string(node.state.join("network/ipam.json")).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&ipam) {
                for uid in v["pods"].as_object().into_iter().flatten().map(|(k, _)| k) {
                    pod_netns.insert(tend::agent::network::plan::pod_names(uid).netns);
                }
            }
        }
        let root = s(self.tmp.path()).to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = quiet("umount", &["-l", m]);
        }
        for netns in pod_netns {
            let _ = quiet("ip", &["netns", "delete", &netns]);
        }
        for node in &self.nodes {
            let _ = quiet("ip", &["netns", "delete", &node.netns]);
        }
        let _ = quiet("ip", &["link", "delete", &self.bridge]);
        if let Some(mut registry) = self.registry.take() {
            let _ = registry.kill();
            let _ = registry.wait();
        }
        self.serve.take();
    }
}

fn deployment(name: &str, replicas: u32, image: &str, extra: &str, container: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 2
{extra}      containers:
      - name: {name}
        image: {image}
{container}"
    )
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn running_and_ready(p: &Value) -> bool {
    text(p, "/status/phase") == "Running"
        && p.pointer("/status/containerStatuses/0/ready") == Some(&Value::Bool(true))
        && !text(p, "/status/podIP").is_empty()
}

fn restarts(p: &Value) -> u64 {
    p.pointer("/status/containerStatuses/0/restartCount")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

#[test]
fn three_replicas_from_the_registry_spread_serve_and_survive_an_agent_kill() {
    if !lab_possible("three_replicas_from_the_registry_spread_serve_and_survive_an_agent_kill") {
        return;
    }
    let mut lab = Lab::start(3, &[]);
    let image = format!("{}/web:v1", lab.registry_addr);
    lab.deploy("web.yaml", &deployment("web", 3, &image, "", ""), "web v1");
    let pods = lab.wait_pods(
        "web",
        "3 pods Running and Ready",
        Duration::from_secs(90),
        |pods| pods.len() == 3 && pods.iter().all(running_and_ready),
    );
    // For the README's walk-through (run with --no-capture to see it).
    eprintln!(
        "$ tend get pods -o wide\n{}",
        lab.serve().cli_ok(&["get", "pods", "-o", "wide"])
    );
    eprintln!(
        "$ tend get nodes\n{}",
        lab.serve().cli_ok(&["get", "nodes"])
    );
    let nodes: BTreeSet<&str> = pods.iter().map(|p| text(p, "/spec/nodeName")).collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {nodes:?}");
    for p in &pods {
        let node = text(p, "/spec/nodeName");
        let i = lab
            .nodes
            .iter()
            .position(|n| n.name == node)
            .expect("a lab node");
        assert_eq!(text(p, "/status/hostIP"), lab.nodes[i].address);
        assert!(text(p, "/status/containerStatuses/0/imageID").contains("@sha256:"));
    }

    // Every pod answers on its IP from every node, with its version and its own hostname.
    for p in &pods {
        let ip = text(p, "/status/podIP");
        let name = text(p, "/metadata/name");
        assert_eq!(
            lab.fetch_eventually(0, ip, "/").as_deref(),
            Some("web v1\n"),
            "pod {name} at {ip} never answered\n{}",
            lab.agent_logs()
        );
        for i in 0..lab.nodes.len() {
            assert_eq!(
                lab.fetch(i, ip, "/").as_deref(),
                Some("web v1\n"),
                "pod {name} at {ip} from {}\n{}",
                lab.nodes[i].name,
                lab.agent_logs()
            );
            assert_eq!(
                lab.fetch(i, ip, "/cgi-bin/hostname").as_deref(),
                Some(format!("{name}\n").as_str()),
                "hostname of {name} from {}",
                lab.nodes[i].name
            );
        }
    }

    // kill -9 of node02's agent: its pod keeps serving while the agent is down, and the
    // restarted agent adopts it: same pods, IPs, restart counts and container processes.
    let before: BTreeMap<String, (String, u64)> = pods
        .iter()
        .map(|p| {
            (
                text(p, "/metadata/name").to_string(),
                (text(p, "/status/podIP").to_string(), restarts(p)),
            )
        })
        .collect();
    let containers = lab.containers(1);
    assert_eq!(containers.len(), 1, "node02 runs one container");
    lab.kill_agent(1);
    let on_node02 = pods
        .iter()
        .find(|p| text(p, "/spec/nodeName") == "node02")
        .expect("a pod on node02");
    let ip = text(on_node02, "/status/podIP").to_string();
    for _ in 0..3 {
        assert_eq!(lab.fetch(0, &ip, "/").as_deref(), Some("web v1\n"));
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.start_agent(1);
    // A few sync periods of the new agent.
    std::thread::sleep(Duration::from_secs(5));
    let after = lab.wait_pods(
        "web",
        "the pods after the restart",
        Duration::from_secs(30),
        |pods| pods.len() == 3 && pods.iter().all(running_and_ready),
    );
    let after: BTreeMap<String, (String, u64)> = after
        .iter()
        .map(|p| {
            (
                text(p, "/metadata/name").to_string(),
                (text(p, "/status/podIP").to_string(), restarts(p)),
            )
        })
        .collect();
    assert_eq!(
        before,
        after,
        "pods, IPs and restart counts\n{}",
        lab.agent_logs()
    );
    assert_eq!(lab.containers(1), containers, "the same container process");
    assert_eq!(lab.fetch(2, &ip, "/").as_deref(), Some("web v1\n"));

    // A new version rolls out over the real pods.
    let image = format!("{}/web:v2", lab.registry_addr);
    lab.deploy("web.yaml", &deployment("web", 3, &image, "", ""), "web v2");
    let pods = lab.wait_pods("web", "3 pods of v2", Duration::from_secs(90), |pods| {
        pods.len() == 3
            && pods.iter().all(|p| {
                running_and_ready(p) && text(p, "/spec/containers/0/image").ends_with("web:v2")
            })
    });
    for p in &pods {
        assert_eq!(
            lab.fetch(0, text(p, "/status/podIP"), "/").as_deref(),
            Some("web v2\n")
        );
    }
}

fn waiting_reason(p: &Value) -> String {
    text(p, "/status/containerStatuses/0/state/waiting/reason").to_string()
}

#[test]
fn crash_loops_missing_images_probes_and_air_gapped_images() {
    if !lab_possible("crash_loops_missing_images_probes_and_air_gapped_images") {
        return;
    }
    let lab = Lab::start(2, &[2]);
    let reg = lab.registry_addr.clone();
    let on_node02 = "      nodeSelector:\n        kubernetes.io/hostname: node02\n";
    lab.repos.write(
        "crash.yaml",
        &deployment(
            "crash",
            1,
            &format!("{reg}/web:v1"),
            "",
            "        command: [\"sh\", \"-c\", \"echo crashing in $(hostname); exit 3\"]\n",
        ),
    );
    lab.repos.write(
        "ghost.yaml",
        &deployment("ghost", 1, &format!("{reg}/ghost:v1"), "", ""),
    );
    lab.repos.write(
        "air.yaml",
        &deployment(
            "air",
            1,
            "airgap/web:v1",
            on_node02,
            "        imagePullPolicy: Never\n",
        ),
    );
    lab.repos.write(
        "sick.yaml",
        &deployment(
            "sick",
            1,
            &format!("{reg}/web:v1"),
            "",
            "        livenessProbe:\n          httpGet: {path: /missing, port: 80}\n          periodSeconds: 1\n          failureThreshold: 2\n",
        ),
    );
    lab.repos.write(
        "unready.yaml",
        &deployment(
            "unready",
            1,
            &format!("{reg}/web:v1"),
            "",
            "        readinessProbe:\n          httpGet: {path: /missing, port: 80}\n          periodSeconds: 1\n",
        ),
    );
    let commit = lab.repos.commit("failures");
    lab.repos.push();
    assert_eq!(
        common::phase(&lab.serve().wait_revision(&commit)),
        "Applied"
    );

    // The air-gapped image runs from the node's store with imagePullPolicy: Never.
    let air = lab.wait_pods(
        "air",
        "the air-gapped pod Running",
        Duration::from_secs(60),
        |p| p.len() == 1 && running_and_ready(&p[0]),
    );
    assert_eq!(text(&air[0], "/spec/nodeName"), "node02");
    assert_eq!(
        lab.fetch_eventually(0, text(&air[0], "/status/podIP"), "/")
            .as_deref(),
        Some("web v1\n")
    );

    // A missing image: ErrImagePull, then ImagePullBackOff.
    let mut seen = BTreeSet::new();
    lab.wait_pods(
        "ghost",
        "ErrImagePull then ImagePullBackOff",
        Duration::from_secs(60),
        |p| {
            if let Some(pod) = p.first() {
                seen.insert(waiting_reason(pod));
            }
            seen.contains("ErrImagePull") && seen.contains("ImagePullBackOff")
        },
    );

    // A readiness probe that fails keeps a running pod out of Ready.
    lab.wait_pods(
        "unready",
        "the unready pod Running",
        Duration::from_secs(60),
        |p| p.len() == 1 && text(&p[0], "/status/phase") == "Running",
    );
    std::thread::sleep(Duration::from_secs(4));
    let unready = lab.pods("unready");
    assert_eq!(unready.len(), 1);
    let ready = unready[0]
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(ready["status"], "False", "{:?}", unready[0]["status"]);
    assert_eq!(
        unready[0].pointer("/status/containerStatuses/0/ready"),
        Some(&Value::Bool(false))
    );
    assert_eq!(text(&unready[0], "/status/phase"), "Running");

    // A failing liveness probe restarts the container.
    lab.wait_pods("sick", "a liveness restart", Duration::from_secs(60), |p| {
        p.len() == 1 && restarts(&p[0]) >= 1
    });

    // A crashing container: CrashLoopBackOff with a growing restart count, and its logs.
    let mut reasons = BTreeSet::new();
    let crash = lab.wait_pods(
        "crash",
        "restartCount 2 and CrashLoopBackOff",
        Duration::from_secs(90),
        |p| {
            if let Some(pod) = p.first() {
                reasons.insert(waiting_reason(pod));
            }
            p.len() == 1 && restarts(&p[0]) >= 2 && reasons.contains("CrashLoopBackOff")
        },
    );
    let name = text(&crash[0], "/metadata/name").to_string();
    assert_eq!(
        crash[0].pointer("/status/containerStatuses/0/lastState/terminated/exitCode"),
        Some(&Value::from(3))
    );
    let logs = lab.serve().cli_ok(&["logs", &name]);
    assert!(
        logs.contains(&format!("crashing in {name}")),
        "logs: {logs:?}"
    );
    let previous = lab.serve().cli_ok(&["logs", &name, "--previous"]);
    assert!(
        previous.contains(&format!("crashing in {name}")),
        "previous: {previous:?}"
    );

    // The agents' events, with the kubelet's reasons, counted by the server.
    let events = items(&lab.serve().get_ok("/api/v1/namespaces/default/events"));
    let about = |pod_prefix: &str, reason: &str, message: &str| {
        events.iter().any(|e| {
            text(e, "/involvedObject/name").starts_with(pod_prefix)
                && text(e, "/reason") == reason
                && text(e, "/message").contains(message)
        })
    };
    assert!(about(
        "crash-",
        "BackOff",
        "Back-off restarting failed container crash"
    ));
    assert!(about("crash-", "Started", "Started container crash"));
    assert!(about("ghost-", "Failed", "Error: ErrImagePull"));
    assert!(about("ghost-", "BackOff", "Back-off pulling image"));
    assert!(about("air-", "Pulled", "already present on machine"));
    assert!(about(
        "sick-",
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 404"
    ));
    assert!(about("unready-", "Unhealthy", "Readiness probe failed"));
    let table = lab.serve().cli_ok(&["get", "pods"]);
    eprintln!("$ tend get pods\n{table}");
    eprintln!("$ tend logs {name}\n{logs}");
    eprintln!(
        "$ tend get events\n{}",
        lab.serve().cli_ok(&["get", "events"])
    );
    assert!(
        table.contains("CrashLoopBackOff") || table.contains("Error"),
        "{table}"
    );
}

/// Hostnames answering `url` from node `i` over `tries` requests.
fn backends(lab: &Lab, i: usize, url: &str, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| lab.on_node(i, &["curl", "-sf", "-m", "2", url]))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Hostnames answering `url` from node `i`, asked until they are `expected` or `deadline`.
fn backends_until(
    lab: &Lab,
    i: usize,
    url: &str,
    expected: &BTreeSet<String>,
    deadline: Instant,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while &seen != expected && Instant::now() < deadline {
        seen.extend(backends(lab, i, url, 10));
    }
    seen
}

fn names(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| text(p, "/metadata/name").to_string())
        .collect()
}

const WEB_SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
    nodePort: 30123
";

#[test]
fn services_balance_over_ready_pods_from_every_node_and_pod() {
    if !lab_possible("services_balance_over_ready_pods_from_every_node_and_pod") {
        return;
    }
    let mut lab = Lab::start(3, &[]);
    // A foreign table on node01 that no sync may touch.
    assert!(
        lab.on_node(0, &["nft", "add", "table", "ip", "other"])
            .is_some()
    );
    let chain = "add chain ip other c { type filter hook input priority 10; policy accept; }";
    assert!(lab.on_node(0, &["nft", chain]).is_some(), "foreign table");
    let image = format!("{}/web:v1", lab.registry_addr);
    lab.repos.write("svc.yaml", WEB_SVC);
    lab.deploy(
        "web.yaml",
        &deployment("web", 3, &image, "", ""),
        "web and its NodePort",
    );
    let pods = lab.wait_pods(
        "web",
        "3 pods Running and Ready",
        Duration::from_secs(90),
        |p| p.len() == 3 && p.iter().all(running_and_ready),
    );
    let expected = names(&pods);
    let svc = lab
        .serve()
        .get_ok("/api/v1/namespaces/default/services/web");
    let cluster_ip = text(&svc, "/spec/clusterIP").to_string();
    lab.serve().wait_for(
        "/api/v1/namespaces/default/endpoints/web",
        "3 endpoints",
        |e| {
            e.pointer("/subsets/0/addresses")
                .and_then(Value::as_array)
                .map(Vec::len)
                == Some(3)
        },
    );
    for p in &pods {
        lab.fetch_eventually(0, text(p, "/status/podIP"), "/");
    }

    // The NodePort on every node's address balances over every pod, from every node.
    for from in 0..lab.nodes.len() {
        for to in &lab.nodes {
            let url = format!("http://{}:30123/cgi-bin/hostname", to.address);
            let deadline = Instant::now() + Duration::from_secs(20);
            let seen = backends_until(&lab, from, &url, &expected, deadline);
            assert_eq!(
                seen,
                expected,
                "NodePort {url} from {}\n{}",
                lab.nodes[from].name,
                lab.agent_logs()
            );
        }
    }
    // The ClusterIP from a node, and from inside a pod.
    let url = format!("http://{cluster_ip}/cgi-bin/hostname");
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = backends_until(&lab, 1, &url, &expected, deadline);
    assert_eq!(seen, expected, "ClusterIP from node02");
    let pod_netns = tend::agent::network::plan::pod_names(text(&pods[0], "/metadata/uid")).netns;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        if let Some(answer) = quiet(
            "ip",
            &["netns", "exec", &pod_netns, "curl", "-sf", "-m", "2", &url],
        ) {
            seen.insert(answer.trim().to_string());
        }
        if seen == expected {
            break;
        }
    }
    assert_eq!(
        seen,
        expected,
        "ClusterIP from inside pod {}",
        text(&pods[0], "/metadata/name")
    );

    // Unready pods are left out: of two pods whose readiness needs /tmp/ready, only the
    // one given the file answers behind the Service.
    lab.repos.write(
        "flaky-svc.yaml",
        &WEB_SVC
            .replace("name: web", "name: flaky")
            .replace("app: web", "app: flaky")
            .replace("30123", "30124"),
    );
    lab.deploy(
        "flaky.yaml",
        &deployment(
            "flaky",
            2,
            &image,
            "",
            "        readinessProbe:\n          exec: {command: [cat, /tmp/ready]}\n          periodSeconds: 1\n",
        ),
        "flaky pods behind a Service",
    );
    let flaky = lab.wait_pods(
        "flaky",
        "2 flaky pods Running",
        Duration::from_secs(60),
        |p| p.len() == 2 && p.iter().all(|p| text(p, "/status/phase") == "Running"),
    );
    let chosen = &flaky[0];
    let node = text(chosen, "/spec/nodeName");
    let i = lab
        .nodes
        .iter()
        .position(|n| n.name == node)
        .expect("a lab node");
    let id = format!("{}-flaky", text(chosen, "/metadata/uid"));
    let root = lab.nodes[i].state.join("runc");
    run(
        "runc",
        &["--root", s(&root), "exec", &id, "touch", "/tmp/ready"],
    );
    let ready_name = text(chosen, "/metadata/name").to_string();
    lab.serve().wait_for(
        "/api/v1/namespaces/default/endpoints/flaky",
        "1 ready address",
        |e| {
            e.pointer("/subsets/0/addresses")
                .and_then(Value::as_array)
                .map(Vec::len)
                == Some(1)
                && e.pointer("/subsets/0/notReadyAddresses")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    == Some(1)
        },
    );
    let url = format!("http://{}:30124/cgi-bin/hostname", lab.nodes[0].address);
    let mut seen = BTreeSet::new();
    for _ in 0..10 {
        seen.extend(backends(&lab, 0, &url, 5));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen,
        BTreeSet::from([ready_name]),
        "only the ready pod answers"
    );

    // Scaling 3 -> 5 adds the backends on every node.
    lab.deploy(
        "web.yaml",
        &deployment("web", 5, &image, "", ""),
        "scale web to 5",
    );
    let pods = lab.wait_pods(
        "web",
        "5 pods Running and Ready",
        Duration::from_secs(90),
        |p| p.len() == 5 && p.iter().all(running_and_ready),
    );
    let expected = names(&pods);
    for from in 0..lab.nodes.len() {
        let url = format!("http://{}:30123/cgi-bin/hostname", lab.nodes[from].address);
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = backends_until(&lab, from, &url, &expected, deadline);
        assert_eq!(seen, expected, "5 backends via {}", lab.nodes[from].name);
    }

    // A flushed table is restored by the next drift check; the foreign table survives.
    assert!(
        lab.on_node(0, &["nft", "flush", "table", "ip", "tend-lb"])
            .is_some()
    );
    let node01 = format!("http://{}:30123/", lab.nodes[0].address);
    // Restored means: the agent saw the drift and rebuilt the table (a single answer could
    // come from what an incremental sync happened to re-add), then every backend answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&lab.nodes[0].log)
        .unwrap_or_default()
        .contains("the tend-lb table drifted")
    {
        assert!(
            Instant::now() < deadline,
            "the flush was not noticed\n{}",
            lab.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!("http://{}:30123/cgi-bin/hostname", lab.nodes[0].address);
    let seen = backends_until(&lab, 0, &url, &expected, deadline);
    assert_eq!(
        seen,
        expected,
        "the flushed table was not restored\n{}",
        lab.agent_logs()
    );
    assert!(
        lab.on_node(0, &["nft", "list", "table", "ip", "other"])
            .is_some(),
        "foreign table kept"
    );

    // kill -9 of node01's agent: the rules stay and traffic never stops; the new agent
    // takes the table over.
    lab.kill_agent(0);
    for _ in 0..10 {
        assert_eq!(
            lab.on_node(0, &["curl", "-sf", "-m", "2", &node01])
                .as_deref(),
            Some("web v1\n"),
            "NodePort while node01's agent is down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.start_agent(0);
    for _ in 0..20 {
        assert_eq!(
            lab.on_node(0, &["curl", "-sf", "-m", "2", &node01])
                .as_deref(),
            Some("web v1\n"),
            "NodePort while node01's agent restarts"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Deleting the Service removes its rules on every node.
    lab.repos.remove("svc.yaml");
    let commit = lab.repos.commit("remove the web Service");
    lab.repos.push();
    assert_eq!(
        common::phase(&lab.serve().wait_revision(&commit)),
        "Applied"
    );
    for i in 0..lab.nodes.len() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let table = lab
                .on_node(i, &["nft", "list", "table", "ip", "tend-lb"])
                .unwrap_or_default();
            if !table.contains("30123") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rules of the deleted Service on {}:\n{table}",
                lab.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        lab.on_node(0, &["nft", "list", "table", "ip", "other"])
            .is_some(),
        "foreign table kept"
    );
}

/// Every page and hostname behind NodePort 30123, asked through every node's address.
fn seen_through_node_port(lab: &Lab, path: &str, want: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < want && Instant::now() < deadline {
        for (i, node) in lab.nodes.iter().enumerate() {
            let url = format!("http://{}:30123{path}", node.address);
            seen.extend(backends(lab, i, &url, 3));
        }
    }
    seen
}

/// Waits until NodePort 30123 answers only `page` through every node's address (a rollout's
/// old endpoints leave the rules within a sync period); panics after 30 s.
fn serves_only(lab: &Lab, page: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut answers = Vec::new();
        for (i, node) in lab.nodes.iter().enumerate() {
            let url = format!("http://{}:30123/", node.address);
            for _ in 0..3 {
                answers.push(lab.on_node(i, &["curl", "-sf", "-m", "2", &url]));
            }
        }
        if answers
            .iter()
            .all(|a| a.as_deref().map(str::trim) == Some(page))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NodePort 30123 does not serve only {page:?}: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Seed 000's lab on real nodes, every step a commit or a CLI command: pods wait for a node
/// labelled disk=ssd, all land on it, NodePort 30123 balances over them from every node; v2
/// and v3 roll out with history 1,2,3; undo to revision 1 is a commit (history 2,3,4, v1
/// served); `git revert` of that commit brings v3 back. The files are examples/seed-lab's and
/// the images examples/images/build.sh's (imported with `--images`), so the example is what
/// is tested.
#[test]
fn the_seed_lab_by_commits_on_real_nodes() {
    if !lab_possible("the_seed_lab_by_commits_on_real_nodes") {
        return;
    }
    let lab = Lab::start_with(3, &[1, 2, 3], true);
    let example = |file: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/seed-lab")
            .join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let web_v1 = example("xgp-web.yaml");
    assert!(web_v1.contains("image: web:v1"), "{web_v1}");
    let web = |v: &str| web_v1.replace("image: web:v1", &format!("image: web:{v}"));
    lab.repos.write("xgp-svc.yaml", &example("xgp-svc.yaml"));
    lab.repos.write("xgp-web.yaml", &web_v1);
    let v1 = lab.repos.commit("v1");
    lab.repos.push();
    assert_eq!(common::phase(&lab.serve().wait_revision(&v1)), "Applied");
    std::thread::sleep(Duration::from_secs(2));
    let pending = lab.pods("xgp-server");
    assert_eq!(pending.len(), 3);
    assert!(
        pending.iter().all(|p| text(p, "/spec/nodeName").is_empty()),
        "no node has disk=ssd yet"
    );

    lab.serve()
        .cli_ok(&["label", "nodes", "node01", "disk=ssd"]);
    let pods = lab.wait_pods(
        "xgp-server",
        "3 pods Running on node01",
        Duration::from_secs(90),
        |p| {
            p.len() == 3
                && p.iter()
                    .all(|p| running_and_ready(p) && text(p, "/spec/nodeName") == "node01")
        },
    );
    lab.serve().cli_ok(&[
        "rollout",
        "status",
        "deployment/xgp-web",
        "--timeout",
        "60s",
    ]);
    eprintln!(
        "$ tend get pods -o wide\n{}",
        lab.serve().cli_ok(&["get", "pods", "-o", "wide"])
    );
    for p in &pods {
        lab.fetch_eventually(0, text(p, "/status/podIP"), "/");
    }
    assert_eq!(
        seen_through_node_port(&lab, "/cgi-bin/hostname", 3),
        names(&pods),
        "balanced"
    );
    serves_only(&lab, "web v1");

    // v2, then v3: each a commit, each rollout completes.
    let mut commits = vec![v1.clone()];
    for v in ["v2", "v3"] {
        lab.repos.write("xgp-web.yaml", &web(v));
        let c = lab.repos.commit(v);
        lab.repos.push();
        assert_eq!(common::phase(&lab.serve().wait_revision(&c)), "Applied");
        lab.serve().cli_ok(&[
            "rollout",
            "status",
            "deployment/xgp-web",
            "--timeout",
            "90s",
        ]);
        lab.wait_pods("xgp-server", v, Duration::from_secs(60), |p| {
            p.len() == 3
                && p.iter().all(|p| {
                    running_and_ready(p) && text(p, "/spec/containers/0/image").ends_with(v)
                })
        });
        commits.push(c);
    }
    let history = lab
        .serve()
        .cli_ok(&["rollout", "history", "deployment/xgp-web"]);
    eprintln!("$ tend rollout history deployment/xgp-web\n{history}");
    for (n, (c, v)) in commits.iter().zip(["v1", "v2", "v3"]).enumerate() {
        assert!(
            history.contains(&format!("{}         {} {v}", n + 1, &c[..7])),
            "{history}"
        );
    }
    let pods = lab.pods("xgp-server");
    serves_only(&lab, "web v3");
    // The node's nft rules hold the Service's 3 endpoints.
    let table = lab
        .on_node(1, &["nft", "list", "table", "ip", "tend-lb"])
        .unwrap_or_default();
    for p in &pods {
        assert!(
            table.contains(text(p, "/status/podIP")),
            "endpoint {} in\n{table}",
            text(p, "/status/podIP")
        );
    }

    // Undo to revision 1: a commit; history 2,3,4; v1 served.
    let undo = lab.serve().cli_ok(&[
        "rollout",
        "undo",
        "deployment/xgp-web",
        "--to-revision",
        "1",
    ]);
    eprintln!("$ tend rollout undo deployment/xgp-web --to-revision 1\n{undo}");
    lab.serve().cli_ok(&[
        "rollout",
        "status",
        "deployment/xgp-web",
        "--timeout",
        "90s",
    ]);
    lab.wait_pods("xgp-server", "v1 again", Duration::from_secs(60), |p| {
        p.len() == 3
            && p.iter().all(|p| {
                running_and_ready(p) && text(p, "/spec/containers/0/image").ends_with("v1")
            })
    });
    let history = lab
        .serve()
        .cli_ok(&["rollout", "history", "deployment/xgp-web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3", "4"], "{history}");
    serves_only(&lab, "web v1");

    // git revert of the undo commit: v3 again.
    common::git(&lab.repos.work, &["pull", "-q", "origin", "main"]);
    common::git(&lab.repos.work, &["revert", "--no-edit", "HEAD"]);
    let revert = common::git(&lab.repos.work, &["rev-parse", "HEAD"]);
    lab.repos.push();
    assert_eq!(
        common::phase(&lab.serve().wait_revision(&revert)),
        "Applied"
    );
    lab.serve().cli_ok(&[
        "rollout",
        "status",
        "deployment/xgp-web",
        "--timeout",
        "90s",
    ]);
    lab.wait_pods("xgp-server", "v3 again", Duration::from_secs(60), |p| {
        p.len() == 3
            && p.iter().all(|p| {
                running_and_ready(p) && text(p, "/spec/containers/0/image").ends_with("v3")
            })
    });
    serves_only(&lab, "web v3");
}
