//! `tend up` for real (issue 6 part 1, issue 5's NodePorts on 127.0.0.1): the whole binary
//! in a fresh network namespace the test makes (started with `nsenter --net`, as the lab
//! starts agents: `ip netns exec` remounts /sys and hides runc's cgroups), a git repository
//! with a Deployment and a NodePort Service, images given offline with `--images`.
//!
//! Needs root, runc, nft, ip, nsenter, curl, umoci, skopeo and /bin/busybox. Without them
//! the tests print why and pass, except under `CI`, where they fail. Everything they make
//! (the process, containers, mounts, the reaper, namespaces) is removed in `Drop`, also when
//! a test fails.

mod common;

use common::{Repos, TEND};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "support/images.rs"]
mod images;
#[path = "support/tools.rs"]
mod tools;
use tools::{quiet, run, s};

/// Whether the test can run; prints why not, or panics under CI.
fn possible(test: &str) -> bool {
    tools::possible(
        test,
        "`tend up`",
        &["runc", "nft", "ip", "nsenter", "curl", "umoci", "skopeo"],
    )
}

/// Busybox images serving `web <version>` as docker archives `up/web:<version>` in `<dir>/`.
fn build_images(work: &Path, dir: &Path, versions: &[&str]) {
    images::build_images(work, dir, "up/web", versions);
}

fn deployment(replicas: u32, version: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 2
      nodeSelector:
        disk: ssd
      containers:
      - name: web
        image: up/web:{version}
        imagePullPolicy: Never
"
    )
}

const SERVICE: &str = "apiVersion: v1
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
    nodePort: 30080
";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A `tend up` in its own network namespace; `Drop` removes all it may have left.
struct Up {
    tmp: tempfile::TempDir,
    netns: String,
    state: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
    url: String,
    repos: Repos,
}

impl Up {
    /// Builds the images, the repository (`replicas` of v1 and the Service) and the namespace.
    fn prepare(replicas: u32, versions: &[&str]) -> Up {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let netns = format!("tend-up-{}-{n}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix("tend-up-")
            .tempdir()
            .expect("tempdir");
        let repos = Repos::new();
        let up = Up {
            state: tmp.path().join("state"),
            stdout: tmp.path().join("up.out"),
            stderr: tmp.path().join("up.err"),
            tmp,
            netns,
            child: None,
            url: String::new(),
            repos,
        };
        run("ip", &["netns", "add", &up.netns]);
        up.on_node(&["ip", "link", "set", "lo", "up"])
            .expect("lo up");
        build_images(&up.tmp.path().join("build"), &up.images(), versions);
        up.repos.write("web.yaml", &deployment(replicas, "v1"));
        up.repos.write("svc.yaml", SERVICE);
        up.repos.commit("web v1 behind a NodePort");
        up.repos.push();
        up
    }

    fn images(&self) -> PathBuf {
        self.tmp.path().join("images")
    }

    /// Starts `tend up` with `extra` flags and waits for it to print the server.
    fn start(&mut self, extra: &[&str]) {
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args([TEND, "up", "--repo"])
            .arg(&self.repos.bare)
            .arg("--state")
            .arg(&self.state)
            .arg("--images")
            .arg(self.images())
            .args(["--labels", "disk=ssd"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&self.stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&self.stderr).expect("stderr file"))
            .spawn()
            .expect("tend up starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.contains("export TEND_SERVER=")) {
                let url = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("TEND_SERVER="))
                    .expect("a URL");
                self.url = url.to_string();
                assert!(out.contains("tend get pods -o wide"), "{out}");
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tend up exited at once ({status}): {}", self.logs());
            }
            assert!(Instant::now() < deadline, "no banner: {}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- stdout\n{out}--- stderr (last lines)\n{}",
            tail.join("\n")
        )
    }

    /// Runs `args` in the namespace (`nsenter`, so that runc sees the cgroups); stdout.
    fn on_node(&self, args: &[&str]) -> Option<String> {
        let ns = format!("--net=/var/run/netns/{}", self.netns);
        let mut all = vec![ns.as_str()];
        all.extend_from_slice(args);
        quiet("nsenter", &all)
    }

    /// The CLI against the printed server, from inside the namespace, as the banner says.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let ns = format!("--net=/var/run/netns/{}", self.netns);
        let out = Command::new("nsenter")
            .arg(ns)
            .arg(TEND)
            .args(args)
            .env("TEND_SERVER", &self.url)
            .env("TEND_STATE", &self.state)
            .env_remove("TEND_TOKEN")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pods(&self) -> Vec<Value> {
        let text = self.cli(&["get", "pods", "-o", "json"]).unwrap_or_default();
        let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    fn wait_pods(&self, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pods = self.pods();
            if check(&pods) {
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; pods: {}\n{}",
                serde_json::to_string_pretty(&pods).unwrap_or_default(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn curl(&self, url: &str) -> Option<String> {
        self.on_node(&["curl", "-sf", "-m", "3", url])
    }

    /// Hostnames answering on the NodePort at 127.0.0.1 within `tries`.
    fn backends(&self, tries: usize, want: usize) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for _ in 0..tries {
            if let Some(name) = self.curl("http://127.0.0.1:30080/cgi-bin/hostname") {
                seen.insert(name.trim().to_string());
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
            if seen.len() >= want {
                break;
            }
        }
        seen
    }

    fn runc_root(&self) -> PathBuf {
        self.state.join("agent/runc")
    }

    fn containers(&self) -> Vec<String> {
        quiet("runc", &["--root", s(&self.runc_root()), "list", "-q"])
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn route_localnet(&self) -> String {
        self.on_node(&["cat", "/proc/sys/net/ipv4/conf/all/route_localnet"])
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; its code.
    fn interrupt(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill sends a signal to the child this test started (nsenter exec'd tend).
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tend up did not stop within 40 s: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pid of this state's reaper, when one runs.
    fn reaper(&self) -> Option<libc::pid_t> {
        let state = self.state.join("agent");
        let wanted = state.as_os_str().as_encoded_bytes().to_vec();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.contains(&&b"agent-reaper"[..]) && args.contains(&wanted.as_slice()))
                .then_some(pid)
        })
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let root = self.runc_root();
        let mut pod_netns = BTreeSet::new();
        for id in self.containers() {
            let _ = quiet("runc", &["--root", s(&root), "delete", "--force", &id]);
            let uid: String = id.chars().take(36).collect();
            pod_netns.insert(tend::agent::network::plan::pod_names(&uid).netns);
        }
        let ipam =
            std::fs::read_to_string(self.state.join("agent/network/ipam.json")).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<Value>(&ipam) {
            for uid in v["pods"].as_object().into_iter().flatten().map(|(k, _)| k) {
                pod_netns.insert(tend::agent::network::plan::pod_names(uid).netns);
            }
        }
        if let Some(pid) = self.reaper() {
            // SAFETY: kill signals the reaper found by its command line above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let tmp = s(self.tmp.path()).to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&tmp))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = quiet("umount", &["-l", m]);
        }
        for netns in pod_netns {
            let _ = quiet("ip", &["netns", "delete", &netns]);
        }
        // The bridge, veths' host ends, nft tables and sysctls live and die with it.
        let _ = quiet("ip", &["netns", "delete", &self.netns]);
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn running_with(pods: &[Value], n: usize, image: &str) -> bool {
    pods.len() == n
        && pods.iter().all(|p| {
            text(p, "/status/phase") == "Running"
                && p.pointer("/status/containerStatuses/0/ready") == Some(&Value::Bool(true))
                && text(p, "/spec/containers/0/image") == image
                && p.pointer("/metadata/deletionTimestamp").is_none()
        })
}

#[test]
fn up_serves_node_ports_on_localhost_rolls_out_and_cleans_up_on_ctrl_c() {
    if !possible("up_serves_node_ports_on_localhost_rolls_out_and_cleans_up_on_ctrl_c") {
        return;
    }
    let mut up = Up::prepare(2, &["v1", "v2"]);
    assert_eq!(up.route_localnet(), "0", "a fresh namespace");
    up.start(&["--name", "laptop"]);
    assert!(up.url.starts_with("http://127.0.0.1:"), "{}", up.url);

    let pods = up.wait_pods("2 pods of v1 Running", |p| running_with(p, 2, "up/web:v1"));
    let names: BTreeSet<String> = pods
        .iter()
        .map(|p| text(p, "/metadata/name").to_string())
        .collect();
    let wide = up
        .cli(&["get", "pods", "-o", "wide"])
        .expect("get pods -o wide");
    assert!(wide.contains("NODE") && wide.contains("laptop"), "{wide}");
    // The control plane reaches the local agent's log endpoint.
    let first = names.iter().next().expect("a pod");
    assert!(up.cli(&["logs", first]).is_some(), "tend logs {first}");
    assert_eq!(up.route_localnet(), "1", "set while tend up runs");
    let table = up
        .on_node(&["nft", "list", "table", "ip", "tend-lb"])
        .expect("the tend-lb table while running");
    assert!(table.contains("30080"), "{table}");
    assert!(
        !table.contains("127.0.0.0/8"),
        "NodePorts are not kept from 127.0.0.1: {table}"
    );
    assert!(up.on_node(&["ip", "link", "show", "tend0"]).is_some());
    let routes = up.on_node(&["ip", "route", "show"]).unwrap_or_default();
    assert!(routes.contains("10.96.0.0/12 dev lo"), "{routes}");

    // The NodePort on 127.0.0.1 answers from both pods.
    let seen = up.backends(60, 2);
    assert_eq!(seen, names, "backends on 127.0.0.1:30080\n{}", up.logs());
    assert_eq!(
        up.curl("http://127.0.0.1:30080/").as_deref(),
        Some("web v1\n")
    );

    // A commit rolls out v2.
    up.repos.write("web.yaml", &deployment(2, "v2"));
    up.repos.commit("web v2");
    up.repos.push();
    up.wait_pods("2 pods of v2 Running", |p| running_with(p, 2, "up/web:v2"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers: Vec<Option<String>> =
            (0..8).map(|_| up.curl("http://127.0.0.1:30080/")).collect();
        if answers.iter().all(|a| a.as_deref() == Some("web v2\n")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not only v2: {answers:?}\n{}",
            up.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let running = up.containers();
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(up.reaper().is_some(), "the reaper runs the containers");

    // Ctrl-C: exit 0, and nothing of it is left.
    let started = Instant::now();
    assert_eq!(up.interrupt(), Some(0), "{}", up.logs());
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(up.containers(), Vec::<String>::new(), "{}", up.logs());
    assert!(
        up.on_node(&["nft", "list", "table", "ip", "tend-lb"])
            .is_none(),
        "the tend-lb table is gone"
    );
    assert!(
        up.on_node(&["nft", "list", "table", "ip", "tend-nat"])
            .is_none(),
        "the tend-nat table is gone"
    );
    let veths = up
        .on_node(&["ip", "-o", "link", "show", "type", "veth"])
        .unwrap_or_default();
    assert_eq!(veths.trim(), "", "veths left");
    assert!(
        up.on_node(&["ip", "link", "show", "tend0"]).is_none(),
        "the bridge is gone"
    );
    let routes = up
        .on_node(&["ip", "route", "show", "table", "all"])
        .unwrap_or_default();
    assert!(
        !routes.contains("10.96.0.0/12"),
        "service route left: {routes}"
    );
    assert_eq!(up.route_localnet(), "0", "route_localnet restored");
    let ipam =
        std::fs::read_to_string(up.state.join("agent/network/ipam.json")).unwrap_or_default();
    let ipam: Value = serde_json::from_str(&ipam).unwrap_or(Value::Null);
    assert_eq!(
        ipam["pods"].as_object().map_or(0, |o| o.len()),
        0,
        "IPs released: {ipam}"
    );
    for id in &running {
        let uid: String = id.chars().take(36).collect();
        let netns = tend::agent::network::plan::pod_names(&uid).netns;
        assert!(
            !Path::new("/var/run/netns").join(&netns).exists(),
            "pod namespace {netns} left"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(s(&up.state)),
        "rootfs mounts left under the state"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.reaper().is_some() {
        assert!(Instant::now() < deadline, "the reaper still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        std::fs::read_to_string(&up.stdout)
            .unwrap_or_default()
            .contains("tend up: stopped"),
        "{}",
        up.logs()
    );
}

#[test]
fn up_with_keep_workloads_leaves_the_containers_running_for_the_next_up() {
    if !possible("up_with_keep_workloads_leaves_the_containers_running_for_the_next_up") {
        return;
    }
    let mut up = Up::prepare(1, &["v1"]);
    // An interface with a global address: the node's address when none is given.
    for cmd in [
        &[
            "ip", "link", "add", "upv0", "type", "veth", "peer", "name", "upv1",
        ][..],
        &["ip", "addr", "add", "192.0.2.77/24", "dev", "upv0"],
        &["ip", "link", "set", "upv0", "up"],
        &["ip", "link", "set", "upv1", "up"],
    ] {
        up.on_node(cmd).expect("veth in the namespace");
    }
    up.start(&["--keep-workloads"]);
    let banner = std::fs::read_to_string(&up.stdout).unwrap_or_default();
    assert!(banner.contains("(192.0.2.77)"), "{banner}");
    up.wait_pods("1 pod Running", |p| running_with(p, 1, "up/web:v1"));
    let seen = up.backends(20, 1);
    assert_eq!(seen.len(), 1, "{}", up.logs());
    assert_eq!(
        up.curl("http://192.0.2.77:30080/").as_deref(),
        Some("web v1\n"),
        "the NodePort on the node's address"
    );
    let before = up.containers();
    assert_eq!(before.len(), 1);

    assert_eq!(up.interrupt(), Some(0), "{}", up.logs());
    assert_eq!(up.containers(), before, "the container survives Ctrl-C");
    let state =
        quiet("runc", &["--root", s(&up.runc_root()), "state", &before[0]]).unwrap_or_default();
    assert!(state.contains("\"running\""), "{state}");
    let pid =
        |state: &str| serde_json::from_str::<Value>(state).unwrap_or(Value::Null)["pid"].as_u64();
    let first_pid = pid(&state);
    assert!(first_pid.is_some(), "{state}");

    // The next `tend up` with the same state adopts the container (same process), serves
    // it, and without --keep-workloads removes it on Ctrl-C.
    up.start(&[]);
    up.wait_pods("the pod Running again", |p| running_with(p, 1, "up/web:v1"));
    assert_eq!(up.backends(20, 1), seen, "{}", up.logs());
    let again =
        quiet("runc", &["--root", s(&up.runc_root()), "state", &before[0]]).unwrap_or_default();
    assert_eq!(pid(&again), first_pid, "adopted, not restarted: {again}");
    assert_eq!(up.interrupt(), Some(0), "{}", up.logs());
    assert_eq!(up.containers(), Vec::<String>::new(), "{}", up.logs());
}

#[test]
fn up_fails_with_the_agents_preflight_message_before_touching_anything() {
    if !possible("up_fails_with_the_agents_preflight_message_before_touching_anything") {
        return;
    }
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let netns = format!("tend-up-{}-{n}", std::process::id());
    let tmp = tempfile::tempdir().expect("tempdir");
    run("ip", &["netns", "add", &netns]);
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = quiet("ip", &["netns", "delete", &self.0]);
        }
    }
    let _netns = Netns(netns.clone());
    let state = tmp.path().join("state");
    // `ip netns exec` remounts /sys, so runc would find no cgroups: the agent's check says so.
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, TEND, "up", "--dir"])
        .arg(tmp.path())
        .arg("--state")
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .expect("tend up runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: no cgroup filesystem") && stderr.contains("nsenter --net="),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!state.exists(), "nothing is created before the checks pass");
}

#[test]
fn a_second_ctrl_c_exits_at_once_without_waiting_for_grace_periods() {
    if !possible("a_second_ctrl_c_exits_at_once_without_waiting_for_grace_periods") {
        return;
    }
    let mut up = Up::prepare(1, &["v1"]);
    // busybox httpd as PID 1 ignores SIGTERM: its stop takes the whole (capped) grace period.
    let slow = deployment(1, "v1").replace(
        "terminationGracePeriodSeconds: 2",
        "terminationGracePeriodSeconds: 60",
    );
    up.repos.write("web.yaml", &slow);
    up.repos.commit("a long grace period");
    up.repos.push();
    up.start(&[]);
    up.wait_pods("1 pod Running", |p| {
        running_with(p, 1, "up/web:v1")
            && p[0].pointer("/spec/terminationGracePeriodSeconds") == Some(&Value::from(60))
    });
    let child = up.child.as_ref().expect("running");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill signals the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    assert_eq!(up.interrupt(), Some(130), "{}", up.logs());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let out = std::fs::read_to_string(&up.stdout).unwrap_or_default();
    assert!(out.contains("second signal"), "{out}");
    // What it left (the container it was stopping, the network) goes in Drop.
}
