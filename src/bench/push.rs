//! `tend bench push` (root): the end-to-end figures of the performance issue on real nodes.
//!
//! A lab on this machine: a bridge, three node network namespaces on it, a real `tend serve`
//! on a bare git repository and a real `tend agent` per node (runc, the pod network, the
//! Service proxy in nftables), the image imported with `--images` (cached). Then, each
//! median of several runs:
//!
//! 1. `git push` of a new version of a 3-replica Deployment -> the first answer from the new
//!    version on a NodePort (a client opening a new connection every few milliseconds);
//! 2. the same push -> only the new version served: the rollout complete (every replica
//!    updated and available) and no old answer since;
//! 3. with 2,000 Services in the repository, `git push` of a change of one Service's port ->
//!    the new port answering from every node (the Endpoints, every agent's watch, its diff
//!    and its nftables transaction);
//! 4. the agents' resident memory with those 2,000 Services.
//!
//! Baselines printed beside: Argo CD's default poll (3 min) and Flux's (1 min); the
//! Kubernetes pod-startup SLO (5 s p99 without pulls); kube-proxy's minimum sync period (1 s).

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::agent::bench::image::{BUSYBOX_REF, busybox_image};
use crate::agent::bench::memory::{client, log_tail, rss};
use crate::agent::bench::{BUSYBOX, Lab, Report, command_in_netns, in_netns, must, summary};

const NODES: usize = 3;
const NODE_PORT: u16 = 30080;
const API_PORT: u16 = 17443;

/// The Deployment at `version`: busybox httpd answering its version, stopping on SIGTERM.
fn web_yaml(version: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {NODES}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: web
        image: {BUSYBOX_REF}
        imagePullPolicy: Never
        env:
        - name: VERSION
          value: {version}
        command: [\"/bin/sh\", \"-c\", \"mkdir -p /www && echo $VERSION > /www/index.html && httpd -f -p 8080 -h /www & trap 'exit 0' TERM; wait\"]
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
    nodePort: {NODE_PORT}
"
    )
}

/// Services per file: a file holds at most 1,000 documents (manifest limits).
const SERVICES_PER_FILE: usize = 500;

/// `count` ClusterIP Services over the web pods, as `(file, YAML)`s of
/// [`SERVICES_PER_FILE`] each; the first Service's port is `first_port`.
fn services_files(count: usize, first_port: u16) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..count {
        if i % SERVICES_PER_FILE == 0 {
            files.push((
                format!("extra-{}.yaml", i / SERVICES_PER_FILE),
                String::new(),
            ));
        }
        let port = if i == 0 { first_port } else { 80 };
        if let Some((_, out)) = files.last_mut() {
            out.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: extra-{i}\nspec:\n  selector:\n    app: web\n  ports:\n  - port: {port}\n    targetPort: 8080\n"
            ));
        }
    }
    files
}

struct Git {
    clone: PathBuf,
}

impl Git {
    fn new(work: &Path) -> anyhow::Result<(Git, PathBuf)> {
        let bare = work.join("repo.git");
        let clone = work.join("clone");
        must("git", &["init", "-q", "--bare", "-b", "main", &s(&bare)])?;
        must("git", &["clone", "-q", &s(&bare), &s(&clone)])?;
        let git = Git { clone };
        git.run(&["config", "user.email", "bench@tend.invalid"])?;
        git.run(&["config", "user.name", "tend bench"])?;
        Ok((git, bare))
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-C", self.clone.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        must("git", &all)
    }

    /// Writes `file`, commits it, and returns just before the push (which the caller times).
    fn commit(&self, file: &str, text: &str, message: &str) -> anyhow::Result<()> {
        self.commit_files(&[(file.to_string(), text.to_string())], message)
    }

    fn commit_files(&self, files: &[(String, String)], message: &str) -> anyhow::Result<()> {
        for (file, text) in files {
            std::fs::write(self.clone.join(file), text)?;
        }
        self.run(&["add", "-A"])?;
        self.run(&["commit", "-q", "-m", message])?;
        Ok(())
    }

    fn push(&self) -> anyhow::Result<()> {
        self.run(&["push", "-q", "origin", "HEAD:main"]).map(drop)
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The API, as the admin.
struct Api {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()?
            .error_for_status()?
            .json()?)
    }

    /// Whether deployment `web` finished rolling out its current generation.
    fn rolled_out(&self) -> bool {
        let Ok(d) = self.get("/apis/apps/v1/namespaces/default/deployments/web") else {
            return false;
        };
        let n = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(-1);
        let want = NODES as i64;
        n("/status/observedGeneration") >= n("/metadata/generation")
            && n("/status/updatedReplicas") == want
            && n("/status/availableReplicas") == want
            && n("/status/replicas") == want
    }
}

/// One answer of the NodePort poller: when, and the page (None: no answer).
type Answer = (Duration, Option<String>);

/// Polls `url` with a new connection every 2 ms until `stop`.
fn poll(url: String, started: Instant, stop: Arc<AtomicBool>) -> Vec<Answer> {
    let Ok(http) = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let page = http
            .get(&url)
            .send()
            .and_then(|r| r.text())
            .ok()
            .map(|t| t.trim().to_string());
        out.push((started.elapsed(), page));
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

/// The figures of one push: first new answer, only-new (rollout complete and no old answer
/// after), in seconds.
fn push_once(git: &Git, api: &Api, url: &str, old: &str, new: &str) -> anyhow::Result<(f64, f64)> {
    git.commit("web.yaml", &web_yaml(new), &format!("web {new}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let poller = {
        let (url, stop) = (url.to_string(), stop.clone());
        std::thread::spawn(move || poll(url, started, stop))
    };
    git.push()?;
    let deadline = started + Duration::from_secs(60);
    let mut complete = None;
    while Instant::now() < deadline {
        if api.rolled_out() {
            complete = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Keep listening a while: an old answer after "complete" would count against it.
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let answers = poller
        .join()
        .map_err(|_| anyhow::anyhow!("the poller panicked"))?;
    let Some(complete) = complete else {
        bail!("the rollout to {new} did not complete within 60 s");
    };
    let first_new = answers
        .iter()
        .find(|(_, p)| p.as_deref() == Some(new))
        .map(|(t, _)| *t)
        .with_context(|| format!("no answer from {new}"))?;
    let last_old = answers
        .iter()
        .filter(|(_, p)| p.as_deref() == Some(old))
        .map(|(t, _)| *t)
        .max()
        .unwrap_or_default();
    Ok((
        first_new.as_secs_f64(),
        complete.max(last_old).as_secs_f64(),
    ))
}

/// Waits until `ip:port` accepts a TCP connection from inside every node namespace.
fn reachable_from_every_node(
    nodes: &[String],
    ip: &str,
    port: u16,
    started: Instant,
    within: Duration,
) -> anyhow::Result<Duration> {
    let target: std::net::SocketAddr = format!("{ip}:{port}").parse()?;
    let waits: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            std::thread::spawn(move || {
                let name = node.clone();
                in_netns(&name, move || {
                    while started.elapsed() < within {
                        if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(50))
                            .is_ok()
                        {
                            return Ok(started.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    bail!("{target} did not answer in {node} within {within:?}")
                })
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for w in waits {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a node poller panicked"))??;
        last = last.max(t);
    }
    Ok(last)
}

pub fn run(runs: usize, services: usize) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut missing = crate::agent::bench::missing_prerequisites(
        root,
        crate::agent::node::succeeds,
        Path::new(BUSYBOX).is_file(),
    );
    missing.retain(|m| !m.starts_with("docker-registry"));
    if !crate::agent::node::succeeds("git", &["--version"]) {
        missing.push("git (apt-get install git)".into());
    }
    if !missing.is_empty() {
        bail!("tend bench push needs {}", missing.join(", "));
    }
    crate::agent::runtime::runc::become_subreaper()?;
    let mut lab = Lab::new("push")?;
    println!(
        "tend bench push: {NODES} nodes in network namespaces, real serve, agents, runc, nftables"
    );
    let mut report = Report::default();
    let measured = measure(&mut lab, runs.max(1), services, &mut report);
    drop(lab);
    for line in &report.lines {
        println!("{line}");
    }
    measured?;
    Ok(if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn measure(lab: &mut Lab, runs: usize, services: usize, report: &mut Report) -> anyhow::Result<()> {
    let pid = std::process::id();
    let id = pid % 100_000;
    let subnet = 100 + pid % 150;
    let gateway = format!("172.29.{subnet}.1");
    let bridge = format!("tbp{id}");
    let _ = crate::agent::node::succeeds("ip", &["link", "del", &bridge]);
    must("ip", &["link", "add", &bridge, "type", "bridge"])?;
    lab.links.push(bridge.clone());
    must(
        "ip",
        &["addr", "add", &format!("{gateway}/24"), "dev", &bridge],
    )?;
    must("ip", &["link", "set", &bridge, "up"])?;
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let netns = format!("tbp{id}n{i}");
        let (host, peer) = (format!("tbp{id}h{i}"), format!("tbp{id}p{i}"));
        let address = format!("172.29.{subnet}.{}", 10 + i);
        lab.node_namespace(&netns)?;
        must(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        )?;
        must("ip", &["link", "set", &peer, "netns", &netns])?;
        must("ip", &["link", "set", &host, "master", &bridge, "up"])?;
        must("ip", &["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
        must(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ],
        )?;
        must("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        nodes.push((format!("node{i:02}"), netns, address));
    }

    let work = lab.work.clone();
    let images = work.join("images");
    std::fs::create_dir_all(&images)?;
    busybox_image()?.write_oci_archive(&images.join("busybox.tar"), BUSYBOX_REF)?;
    let (git, bare) = Git::new(&work)?;
    git.commit("web.yaml", &web_yaml("v1"), "web v1")?;
    git.push()?;

    let exe = std::env::current_exe().context("locating the tend binary")?;
    let serve_state = work.join("serve");
    let log = |name: &str| std::fs::File::create(work.join(name));
    let serve = Command::new(&exe)
        .arg("serve")
        .arg("--repo")
        .arg(&bare)
        .args(["--listen", &format!("{gateway}:{API_PORT}"), "--state"])
        .arg(&serve_state)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log("serve.log")?)
        .spawn()
        .context("starting tend serve")?;
    lab.children.push(serve);
    let (admin, join) = (
        serve_state.join("admin.token"),
        serve_state.join("join.token"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(admin.is_file() && join.is_file()) {
        if Instant::now() > deadline {
            bail!(
                "tend serve wrote no tokens: {}",
                log_tail(&work.join("serve.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = format!("http://{gateway}:{API_PORT}");
    let mut agent_pids = Vec::new();
    for (name, netns, address) in &nodes {
        let state = work.join(name);
        lab.runc_roots.push(state.join("runc"));
        lab.agent_states.push(state.clone());
        let agent = command_in_netns(netns, &exe)?
            .args(["--server", &server, "agent", "--token-file"])
            .arg(&join)
            .args(["--name", name, "--address", address, "--state"])
            .arg(&state)
            .arg("--images")
            .arg(&images)
            .args(["--heartbeat", "1s"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(&format!("{name}.log"))?)
            .spawn()
            .with_context(|| format!("starting tend agent {name}"))?;
        agent_pids.push(agent.id());
        lab.children.insert(0, agent);
    }
    let api = Api {
        base: server,
        token: std::fs::read_to_string(&admin)?.trim().to_string(),
        http: client()?,
    };

    // v1 everywhere first.
    let url = format!("http://{}:{NODE_PORT}/", nodes[0].2);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page = reqwest::blocking::get(&url).and_then(|r| r.text()).ok();
        if api.rolled_out() && page.as_deref().map(str::trim) == Some("v1") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "web v1 not served within 120 s; {}",
                log_tail(&work.join("node01.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let (mut first, mut only) = (Vec::new(), Vec::new());
    for r in 0..runs {
        let (old, new) = (format!("v{}", r + 1), format!("v{}", r + 2));
        let (f, o) = push_once(&git, &api, &url, &old, &new)?;
        first.push(f * 1000.0);
        only.push(o * 1000.0);
    }
    let (fmin, fmed, fp90) = summary(&first);
    let (omin, omed, op90) = summary(&only);
    report.goal(
        "git push -> first answer from the new version",
        fmed,
        "ms",
        500.0,
        &format!(
            "median of {runs}, min {fmin:.0}, p90 {fp90:.0}; Argo CD polls every 180 s, Flux every 60 s"
        ),
    );
    report.goal(
        "git push -> only the new version served",
        omed,
        "ms",
        1500.0,
        &format!(
            "rollout complete, no old answer after; median of {runs}, min {omin:.0}, p90 {op90:.0}; Kubernetes pod-startup SLO 5 s p99"
        ),
    );

    if services > 0 {
        // Many Services over the same pods; then one port change, timed to every node.
        git.commit_files(&services_files(services, 1000), "extra services")?;
        git.push()?;
        let started = Instant::now();
        let ip = loop {
            if let Ok(svc) = api.get("/api/v1/namespaces/default/services/extra-0")
                && let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            {
                break ip.to_string();
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the {services} Services were not applied within 60 s: {}",
                    log_tail(&lab.work.join("serve.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let netns: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
        let last = format!(
            "/api/v1/namespaces/default/endpoints/extra-{}",
            services - 1
        );
        // Every Service programmed on every node: the last one answers everywhere.
        loop {
            if let Ok(ep) = api.get(&last)
                && ep.pointer("/subsets/0/addresses/2").is_some()
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the Endpoints of {services} Services were not ready within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        reachable_from_every_node(&netns, &ip, 1000, started, Duration::from_secs(120))?;
        let all_s = started.elapsed().as_secs_f64();
        let mut times = Vec::new();
        for r in 0..runs {
            let port = 1001 + r as u16;
            let first_file = services_files(services, port).swap_remove(0);
            git.commit(
                &first_file.0,
                &first_file.1,
                &format!("extra-0 on port {port}"),
            )?;
            let started = Instant::now();
            git.push()?;
            let t = reachable_from_every_node(&netns, &ip, port, started, Duration::from_secs(30))?;
            times.push(t.as_secs_f64() * 1000.0);
        }
        let (min, med, p90) = summary(&times);
        report.goal(
            &format!("a Service change on every node, {services} Services"),
            med,
            "ms",
            500.0,
            &format!(
                "git push -> new port answering from all {NODES} nodes; median of {runs}, min {min:.0}, p90 {p90:.0}; kube-proxy's min sync period 1 s"
            ),
        );
        report.info(
            &format!("  {services} Services applied -> on every node"),
            all_s,
            "s",
            "the first sync of all of them",
        );
        let rss: Vec<f64> = agent_pids
            .iter()
            .filter_map(|p| rss(*p).ok().map(|r| r.total))
            .collect();
        let max = rss.iter().copied().fold(0.0, f64::max);
        report.info(
            &format!("  agent resident memory, {services} Services"),
            max,
            "MiB",
            &format!("VmRSS, the largest of {} agents (1 pod each)", rss.len()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_are_valid() {
        let limits = crate::manifest::Limits::default();
        let web = crate::manifest::load_file("web.yaml", web_yaml("v2").as_bytes(), &limits);
        assert!(web.errors.is_empty(), "{:?}", web.errors);
        assert_eq!(web.objects.len(), 2);
        let env = &web.objects[0].object["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["value"], "v2");
        let files = services_files(1200, 1001);
        assert_eq!(files.len(), 3);
        let parsed: Vec<_> = files
            .iter()
            .map(|(name, text)| crate::manifest::load_file(name, text.as_bytes(), &limits))
            .collect();
        assert!(parsed.iter().all(|p| p.errors.is_empty()));
        let counts: Vec<usize> = parsed.iter().map(|p| p.objects.len()).collect();
        assert_eq!(counts, [500, 500, 200]);
        assert_eq!(
            parsed[0].objects[0].object["spec"]["ports"][0]["port"],
            1001
        );
        assert_eq!(parsed[0].objects[1].object["spec"]["ports"][0]["port"], 80);
    }
}
