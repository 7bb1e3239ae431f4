//! Crash consistency: `tend serve` killed with SIGKILL at random moments during rollouts and
//! restarted on the same state directory. Every rollout must converge, no revision may be
//! lost, a Deployment never has more than replicas + maxSurge pods, and nothing is orphaned.
//!
//! The moments are drawn from a seeded RNG; the seed is printed, and `TEND_CRASH_SEED=N`
//! replays a run.

mod common;
#[path = "support/images.rs"]
mod images;
#[path = "support/tools.rs"]
mod tools;

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// SIGKILLs of serve in the serve test.
const SERVE_ROUNDS: usize = 24;
const REPLICAS: i64 = 4;
const MAX_SURGE: i64 = 1;
const APP: &str = "crash-web";

fn seed() -> u64 {
    std::env::var("TEND_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn web(version: usize) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {REPLICAS}\n  revisionHistoryLimit: 100\n  strategy:\n    type: RollingUpdate\n    rollingUpdate:\n      maxSurge: {MAX_SURGE}\n      maxUnavailable: 1\n  selector:\n    matchLabels:\n      app: {APP}\n  template:\n    metadata:\n      labels:\n        app: {APP}\n    spec:\n      containers:\n      - name: web\n        image: crash/web:v{version}\n"
    )
}

/// A free port on 127.0.0.1, so that serve comes back where the nodes look for it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_counted(pod: &Value) -> bool {
    // What the ReplicaSet controller counts (Kubernetes' FilterActivePods): not terminating,
    // not finished.
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Failed" | "Succeeded")
        )
}

fn meta<'a>(o: &'a Value, field: &str) -> &'a str {
    o.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn controller_uid(o: &Value) -> Option<&str> {
    o.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?
        .get("uid")?
        .as_str()
}

/// What the observers saw, shared with the test.
#[derive(Default)]
struct Seen {
    violations: Mutex<Vec<String>>,
    /// resourceVersions at which the pod count was checked (watch).
    pod_checks: AtomicUsize,
    /// The most counted pods seen at once.
    most_pods: AtomicUsize,
    /// Polls that checked ReplicaSets and owners.
    owner_checks: AtomicUsize,
    stop: AtomicBool,
}

impl Seen {
    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        let mut v = self.violations.lock().unwrap();
        if v.len() < 50 {
            v.push(what);
        }
    }
}

/// Follows the Deployment's pods through a watch (re-listing after each restart of serve) and
/// checks the count of pods at every resourceVersion: a transaction's events share one.
fn watch_pods(url: String, token: String, seen: Arc<Seen>) {
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let path = format!("{url}/api/v1/namespaces/default/pods?labelSelector=app%3D{APP}");
    let check = |pods: &BTreeMap<String, Value>, rv: &str| {
        let counted = pods.values().filter(|p| is_counted(p)).count();
        seen.pod_checks.fetch_add(1, Ordering::Relaxed);
        seen.most_pods.fetch_max(counted, Ordering::Relaxed);
        if counted as i64 > REPLICAS + MAX_SURGE {
            let names: Vec<String> = pods
                .values()
                .filter(|p| is_counted(p))
                .map(|p| format!("{} ({})", meta(p, "name"), meta(p, "resourceVersion")))
                .collect();
            seen.violation(format!(
                "{counted} pods at resourceVersion {rv}, more than {REPLICAS} + {MAX_SURGE}: {names:?}"
            ));
        }
    };
    while !seen.stop.load(Ordering::Relaxed) {
        let list: Value = match http
            .get(&path)
            .bearer_auth(&token)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
        {
            Ok(v) => v,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut pods: BTreeMap<String, Value> = items(&list)
            .into_iter()
            .map(|p| (meta(&p, "name").to_string(), p))
            .collect();
        let mut rv = meta(&list, "resourceVersion").to_string();
        check(&pods, &rv);
        let Ok(resp) = http
            .get(format!("{path}&watch=true&resourceVersion={rv}"))
            .bearer_auth(&token)
            .send()
        else {
            continue;
        };
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { break };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                break;
            };
            let kind = event["type"].as_str().unwrap_or("");
            if kind == "BOOKMARK" {
                continue;
            }
            if kind == "ERROR" {
                break;
            }
            let object = &event["object"];
            let at = meta(object, "resourceVersion").to_string();
            if at != rv {
                check(&pods, &rv);
                rv = at;
            }
            let name = meta(object, "name").to_string();
            if kind == "DELETED" {
                pods.remove(&name);
            } else {
                pods.insert(name, object.clone());
            }
            if seen.stop.load(Ordering::Relaxed) {
                return;
            }
        }
        check(&pods, &rv);
    }
}

/// Polls pods, ReplicaSets and the Deployment (in that order, so that an owner listed later
/// than what it owns is never missed): the ReplicaSets' sizes stay within replicas + maxSurge
/// (what Kubernetes' rolling update bounds), every pod's controller is an existing
/// ReplicaSet, and every ReplicaSet's the Deployment.
fn poll_owners(url: String, token: String, seen: Arc<Seen>) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = |path: &str| -> Option<Value> {
        http.get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .ok()
    };
    while !seen.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(30));
        let Some(pods) = get("/api/v1/namespaces/default/pods") else {
            continue;
        };
        let Some(sets) = get("/apis/apps/v1/namespaces/default/replicasets") else {
            continue;
        };
        let Some(deployment) = get("/apis/apps/v1/namespaces/default/deployments/web") else {
            continue;
        };
        let d_uid = meta(&deployment, "uid");
        let sets = items(&sets);
        let rs_uids: BTreeSet<&str> = sets.iter().map(|rs| meta(rs, "uid")).collect();
        let mut total = 0;
        for rs in &sets {
            if controller_uid(rs) != Some(d_uid) {
                seen.violation(format!(
                    "replicaset {} is not controlled by deployment web ({d_uid}): {:?}",
                    meta(rs, "name"),
                    rs.pointer("/metadata/ownerReferences")
                ));
            }
            total += rs
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
        }
        if total > REPLICAS + MAX_SURGE {
            let sizes: Vec<String> = sets
                .iter()
                .map(|rs| format!("{}={}", meta(rs, "name"), rs["spec"]["replicas"]))
                .collect();
            seen.violation(format!(
                "replicasets sized {total} in all, more than {REPLICAS} + {MAX_SURGE}: {sizes:?}"
            ));
        }
        for pod in items(&pods) {
            match controller_uid(&pod) {
                Some(uid) if rs_uids.contains(uid) => {}
                other => seen.violation(format!(
                    "pod {} is orphaned: controller {other:?} is no listed replicaset",
                    meta(&pod, "name")
                )),
            }
        }
        seen.owner_checks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The Deployment, its ReplicaSets and pods, for a failure message.
fn dump(serve: &Serve) -> String {
    let mut out = String::new();
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/web");
    out += &format!(
        "deployment: generation {} status {}\n",
        d["metadata"]["generation"], d["status"]
    );
    for rs in items(&serve.get_ok("/apis/apps/v1/namespaces/default/replicasets")) {
        out += &format!(
            "replicaset {} spec {} status {}\n",
            meta(&rs, "name"),
            rs["spec"]["replicas"],
            rs["status"]
        );
    }
    for p in items(&serve.get_ok("/api/v1/namespaces/default/pods")) {
        out += &format!(
            "pod {} rv {} node {} deletion {} phase {} conditions {}\n",
            meta(&p, "name"),
            meta(&p, "resourceVersion"),
            p["spec"]["nodeName"],
            p["metadata"]["deletionTimestamp"],
            p["status"]["phase"],
            p["status"]["conditions"]
        );
    }
    out
}

#[test]
fn serve_killed_during_rollouts_loses_nothing_and_converges() {
    let seed = seed();
    eprintln!("crash test seed {seed} (TEND_CRASH_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let repos = Repos::new();
    repos.write("web.yaml", &web(0));
    let mut commits = vec![(repos.commit("Deploy web v0"), "Deploy web v0".to_string())];
    repos.push();
    // A remote (file://) source: serve keeps a clone under --state and fetches it, so a kill
    // can also land in the middle of a fetch.
    let remote = format!("file://{}", repos.bare.display());
    let listen = format!("127.0.0.1:{}", free_port());
    let state = repos.state();
    let args = ["--repo", remote.as_str(), "--interval", "200ms"];
    let mut serve = Serve::start_on(&listen, &args, &state);
    let _nodes = [
        SimNode::start(&serve, "crash-a", ""),
        SimNode::start(&serve, "crash-b", ""),
    ];
    assert_eq!(phase(&serve.wait_revision(&commits[0].0)), "Applied");
    serve.cli_ok(&["rollout", "status", "deployment/web", "--timeout", "60s"]);

    let seen = Arc::new(Seen::default());
    let observers = [
        {
            let (u, t, s) = (serve.url.clone(), serve.token.clone(), seen.clone());
            std::thread::spawn(move || watch_pods(u, t, s))
        },
        {
            let (u, t, s) = (serve.url.clone(), serve.token.clone(), seen.clone());
            std::thread::spawn(move || poll_owners(u, t, s))
        },
    ];

    for round in 1..=SERVE_ROUNDS {
        let subject = format!("Roll web to v{round}");
        repos.write("web.yaml", &web(round));
        let id = repos.commit(&subject);
        repos.push();
        commits.push((id.clone(), subject));
        let wait = Duration::from_millis(rng.random_range(0..=800));
        std::thread::sleep(wait);
        serve.kill();
        eprintln!(
            "round {round}: killed serve {wait:?} after commit {}",
            &id[..7]
        );
        serve = Serve::start_on(&listen, &args, &state);
        // The commit is applied and the Deployment controller has seen it (made its
        // ReplicaSet) before the next one, so that every template becomes a revision.
        assert_eq!(phase(&serve.wait_revision(&id)), "Applied", "round {round}");
        serve.wait_for(
            "/apis/apps/v1/namespaces/default/deployments/web",
            "the deployment controller to see the new template",
            |d| {
                d.pointer("/status/observedGeneration") == d.pointer("/metadata/generation")
                    && d.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                        == Some(&Value::from((round + 1).to_string()))
            },
        );
    }

    // Converges to the last commit.
    let out = serve.cli(&["rollout", "status", "deployment/web", "--timeout", "60s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("successfully rolled out"),
        "seed {seed}: the rollout did not converge: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dump(&serve)
    );
    let last = format!("crash/web:v{SERVE_ROUNDS}");
    let pods = serve.wait_for(
        &format!("/api/v1/namespaces/default/pods?labelSelector=app%3D{APP}"),
        "only the last version's pods",
        |l| {
            let pods = items(l);
            pods.len() == REPLICAS as usize
                && pods.iter().all(|p| {
                    p.pointer("/spec/containers/0/image") == Some(&Value::from(last.clone()))
                        && p.pointer("/status/phase") == Some(&Value::from("Running"))
                })
        },
    );
    // Let the observers see the end state, then stop them.
    std::thread::sleep(Duration::from_millis(300));
    seen.stop.store(true, Ordering::Relaxed);
    serve.kill();
    for o in observers {
        o.join().expect("observer");
    }

    let violations = seen.violations.lock().unwrap().clone();
    eprintln!(
        "{} kills in {:?}; {} pod counts checked (at most {} pods), {} owner polls",
        SERVE_ROUNDS,
        started.elapsed(),
        seen.pod_checks.load(Ordering::Relaxed),
        seen.most_pods.load(Ordering::Relaxed),
        seen.owner_checks.load(Ordering::Relaxed)
    );
    assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
    assert!(seen.pod_checks.load(Ordering::Relaxed) > SERVE_ROUNDS);
    assert!(seen.owner_checks.load(Ordering::Relaxed) > SERVE_ROUNDS);
    assert_eq!(items(&pods).len(), REPLICAS as usize);

    // Restarted once more, nothing is lost: one revision per commit, one ReplicaSet revision
    // per template, in commit order, each naming its commit.
    let serve = Serve::start_on(&listen, &args, &state);
    let records = items(&serve.get_ok("/apis/tend.dev/v1/revisions"));
    for (id, subject) in &commits {
        let record = records
            .iter()
            .find(|r| meta(r, "name") == id)
            .unwrap_or_else(|| panic!("seed {seed}: no revision record for {id} {subject}"));
        assert_eq!(phase(record), "Applied", "seed {seed}: {record}");
    }
    assert_eq!(
        records.len(),
        commits.len(),
        "seed {seed}: one record per commit"
    );
    let history = serve.cli_ok(&["rollout", "history", "deployment/web"]);
    let rows: Vec<&str> = history.lines().skip(2).collect();
    assert_eq!(rows.len(), commits.len(), "seed {seed}:\n{history}");
    for (n, ((id, subject), row)) in commits.iter().zip(&rows).enumerate() {
        let expected = format!("{} {subject}", &id[..7]);
        let (revision, cause) = row.split_once(' ').unwrap_or_default();
        assert_eq!(revision, (n + 1).to_string(), "seed {seed}:\n{history}");
        assert_eq!(cause.trim(), expected, "seed {seed}:\n{history}");
    }
    let sets = items(&serve.get_ok("/apis/apps/v1/namespaces/default/replicasets"));
    let sized: Vec<&Value> = sets
        .iter()
        .filter(|rs| rs.pointer("/spec/replicas") != Some(&Value::from(0)))
        .collect();
    assert_eq!(sized.len(), 1, "seed {seed}: only the newest is sized");
    assert_eq!(
        sized[0].pointer("/spec/template/spec/containers/0/image"),
        Some(&Value::from(last))
    );
    eprintln!(
        "crash test: {SERVE_ROUNDS} kills, all checks passed in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The agent: real runc containers, the agent killed while pods start and stop.

/// SIGKILLs of the agent in the agent test.
const AGENT_ROUNDS: usize = 20;

fn node_web(replicas: usize, version: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: node-web\nspec:\n  replicas: {replicas}\n  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 1\n  selector:\n    matchLabels:\n      app: node-web\n  template:\n    metadata:\n      labels:\n        app: node-web\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: web\n        image: crash/web:{version}\n        imagePullPolicy: Never\n"
    )
}

/// One node in its own network namespace, joined to the host by a veth pair: `tend serve`
/// on the host end, `tend agent` inside. `Drop` removes the processes, containers, mounts,
/// pod namespaces and the node namespace, also when the test fails.
struct AgentNode {
    tmp: tempfile::TempDir,
    netns: String,
    host_veth: String,
    address: String,
    state: PathBuf,
    log: PathBuf,
    agent: Option<Child>,
    serve: Option<Serve>,
    repos: Repos,
}

impl AgentNode {
    fn start() -> AgentNode {
        let pid = std::process::id();
        let n = pid % 250;
        let tmp = tempfile::Builder::new()
            .prefix("tend-crash-")
            .tempdir()
            .expect("temp dir");
        let mut node = AgentNode {
            netns: format!("tcr{pid}"),
            host_veth: format!("tcr{pid}h"),
            address: format!("172.29.{n}.2"),
            state: tmp.path().join("agent"),
            log: tmp.path().join("agent.log"),
            tmp,
            agent: None,
            serve: None,
            repos: Repos::new(),
        };
        let gateway = format!("172.29.{n}.1");
        tools::run("ip", &["netns", "add", &node.netns]);
        let peer = format!("tcr{pid}p");
        tools::run(
            "ip",
            &[
                "link",
                "add",
                &node.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        tools::run("ip", &["link", "set", &peer, "netns", &node.netns]);
        tools::run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                &node.host_veth,
            ],
        );
        tools::run("ip", &["link", "set", &node.host_veth, "up"]);
        for args in [
            vec!["link", "set", peer.as_str(), "name", "eth0"],
            vec![
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "eth0",
            ],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["-n", node.netns.as_str()];
            all.extend(args);
            tools::run("ip", &all);
        }
        let images = node.tmp.path().join("images");
        images::build_images(
            &node.tmp.path().join("build"),
            &images,
            "crash/web",
            &["v1", "v2"],
        );
        node.repos.write("web.yaml", &node_web(3, "v1"));
        node.repos.commit("node-web v1");
        node.repos.push();
        let state = node.tmp.path().join("serve");
        node.serve = Some(Serve::start_on(
            &format!("{gateway}:0"),
            &["--repo", tools::s(&node.repos.bare)],
            &state,
        ));
        node.start_agent();
        node
    }

    fn serve(&self) -> &Serve {
        self.serve.as_ref().expect("serve runs")
    }

    fn start_agent(&mut self) {
        let serve = self.serve();
        // nsenter, not `ip netns exec`, which remounts /sys and hides runc's cgroups.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args([TEND, "agent", "--server", &serve.url, "--token-file"])
            .arg(serve.state.join("join.token"))
            .args(["--name", "crash-node", "--address", &self.address])
            .arg("--state")
            .arg(&self.state)
            .arg("--images")
            .arg(self.tmp.path().join("images"))
            .args(["--heartbeat", "1s", "--sync-period", "1s"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("agent log"),
            )
            .spawn()
            .expect("tend agent starts");
        self.agent = Some(child);
    }

    /// SIGKILL (nsenter execs tend: the child is the agent itself).
    fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn runc_root(&self) -> PathBuf {
        self.state.join("runc")
    }

    /// runc's containers of this node: id -> (status, pid).
    fn containers(&self) -> BTreeMap<String, (String, u64)> {
        let text = tools::quiet(
            "runc",
            &[
                "--root",
                tools::s(&self.runc_root()),
                "list",
                "--format",
                "json",
            ],
        )
        .unwrap_or_default();
        let list: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c["id"].as_str()?.to_string(),
                    (
                        c["status"].as_str().unwrap_or("").to_string(),
                        c["pid"].as_u64().unwrap_or(0),
                    ),
                ))
            })
            .collect()
    }

    fn pods(&self) -> Vec<Value> {
        items(
            &self
                .serve()
                .get_ok("/api/v1/namespaces/default/pods?labelSelector=app%3Dnode-web"),
        )
    }

    fn agent_log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn reaper(&self) -> Option<libc::pid_t> {
        let wanted = self.state.as_os_str().as_encoded_bytes().to_vec();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.contains(&&b"agent-reaper"[..]) && args.contains(&wanted.as_slice()))
                .then_some(pid)
        })
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.kill_agent();
        let root = self.runc_root();
        let mut pod_netns = BTreeSet::new();
        for id in self.containers().keys() {
            let _ = tools::quiet(
                "runc",
                &["--root", tools::s(&root), "delete", "--force", id],
            );
            let uid: String = id.chars().take(36).collect();
            pod_netns.insert(tend::agent::network::plan::pod_names(&uid).netns);
        }
        let ipam =
            std::fs::read_to_string(self.state.join("network/ipam.json")).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<Value>(&ipam) {
            for uid in v["pods"].as_object().into_iter().flatten().map(|(k, _)| k) {
                pod_netns.insert(tend::agent::network::plan::pod_names(uid).netns);
            }
        }
        if let Some(pid) = self.reaper() {
            // SAFETY: kill signals the reaper of this test's agent, found by its command line.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let tmp = tools::s(self.tmp.path()).to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&tmp))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = tools::quiet("umount", &["-l", m]);
        }
        for netns in pod_netns {
            let _ = tools::quiet("ip", &["netns", "delete", &netns]);
        }
        let _ = tools::quiet("ip", &["link", "delete", &self.host_veth]);
        let _ = tools::quiet("ip", &["netns", "delete", &self.netns]);
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The pod's one container: (its runc id, `<uid>-<name>` as the agent names it, its
/// restartCount and startedAt).
fn container_of(pod: &Value) -> (String, i64, String) {
    let c = &pod["status"]["containerStatuses"][0];
    (
        tend::agent::pods::container_id(text(pod, "/metadata/uid"), "web"),
        c["restartCount"].as_i64().unwrap_or(-1),
        text(c, "/state/running/startedAt").to_string(),
    )
}

#[test]
fn agent_killed_while_pods_start_and_stop_adopts_every_container_once() {
    if !tools::possible(
        "agent_killed_while_pods_start_and_stop_adopts_every_container_once",
        "the agent crash test",
        &["runc", "nft", "ip", "nsenter", "umoci", "skopeo"],
    ) {
        return;
    }
    let seed = seed();
    eprintln!("agent crash test seed {seed} (TEND_CRASH_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut node = AgentNode::start();

    let (mut replicas, mut version) = (3usize, "v1");
    // Waits until the pods are what the last commit asks, each with exactly one running
    // container in runc and no other container left; returns the pods.
    let converge = |node: &AgentNode, replicas: usize, version: &str, what: &str| -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let image = format!("crash/web:{version}");
        loop {
            let pods = node.pods();
            let containers = node.containers();
            let live: Vec<&Value> = pods
                .iter()
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .collect();
            let done = pods.len() == replicas
                && live.len() == replicas
                && live.iter().all(|p| {
                    text(p, "/status/phase") == "Running"
                        && text(p, "/spec/containers/0/image") == image
                        && containers
                            .get(&container_of(p).0)
                            .is_some_and(|(status, _)| status == "running")
                })
                && containers.len() == replicas;
            if done {
                return pods;
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = pods
                    .iter()
                    .map(|p| {
                        format!(
                            "{} {} {} deletion {} {:?}",
                            text(p, "/metadata/name"),
                            text(p, "/metadata/uid"),
                            text(p, "/status/phase"),
                            p["metadata"]["deletionTimestamp"],
                            container_of(p)
                        )
                    })
                    .collect();
                panic!(
                    "seed {seed}: timed out waiting for {what}: pods {summary:#?}\nrunc {containers:#?}\n{}",
                    node.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    converge(&node, replicas, version, "3 pods of v1");

    let (mut adopted, mut kills_with_work) = (0usize, 0usize);
    let mut uids = BTreeSet::new();
    for round in 1..=AGENT_ROUNDS {
        // Alternate scaling and new versions, so that kills land on starts and on stops.
        if round % 3 == 0 {
            replicas = if replicas == 3 { 4 } else { 3 };
        } else {
            version = if version == "v1" { "v2" } else { "v1" };
        }
        node.repos.write("web.yaml", &node_web(replicas, version));
        let id = node
            .repos
            .commit(&format!("round {round}: {replicas} of {version}"));
        node.repos.push();
        assert_eq!(phase(&node.serve().wait_revision(&id)), "Applied");
        let wait = Duration::from_millis(rng.random_range(0..=1500));
        std::thread::sleep(wait);

        let before_pods = node.pods();
        let before = node.containers();
        node.kill_agent();
        let busy = before_pods.len() != replicas
            || before_pods
                .iter()
                .any(|p| text(p, "/status/phase") != "Running");
        kills_with_work += usize::from(busy);
        eprintln!(
            "round {round}: killed the agent {wait:?} after the commit ({} pods, {} containers{})",
            before_pods.len(),
            before.len(),
            if busy { ", mid-change" } else { "" }
        );
        // While the agent is down its containers run on, one per pod.
        let down = node.containers();
        let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
        for id in down.keys() {
            *per_pod.entry(id.chars().take(36).collect()).or_default() += 1;
        }
        assert!(
            per_pod.values().all(|n| *n == 1),
            "seed {seed}: a pod with two containers: {down:#?}"
        );
        node.start_agent();
        let pods = converge(
            &node,
            replicas,
            version,
            &format!("round {round}: {replicas} pods of {version}"),
        );
        // Every container that ran before the kill and belongs to a pod kept is the same
        // process: adopted, not restarted.
        let after = node.containers();
        uids.extend(
            before_pods
                .iter()
                .chain(&pods)
                .map(|p| text(p, "/metadata/uid").to_string()),
        );
        for p in &pods {
            let (id, restarts, _) = container_of(p);
            assert_eq!(
                restarts,
                0,
                "seed {seed}: round {round}: {} restarted: {p}",
                text(p, "/metadata/name")
            );
            if let Some((status, pid)) = before.get(&id).filter(|(s, _)| s == "running") {
                assert_eq!(
                    Some(pid),
                    after.get(&id).map(|(_, pid)| pid),
                    "seed {seed}: round {round}: container {id} ({status}) was replaced\n{}",
                    node.agent_log()
                );
                let was = before_pods
                    .iter()
                    .find(|b| text(b, "/metadata/uid") == text(p, "/metadata/uid"))
                    .map(container_of);
                if let Some((was_id, _, was_started)) = was.filter(|(_, _, t)| !t.is_empty()) {
                    assert_eq!(was_id, id, "seed {seed}: round {round}: container id");
                    assert_eq!(
                        was_started,
                        container_of(p).2,
                        "seed {seed}: round {round}: startedAt of {id}"
                    );
                }
                adopted += 1;
            }
        }
    }

    // A pod deleted while the agent is down (as the node controller evicts the pods of a node
    // that stays NotReady): the restarted agent removes its container, rootfs, namespace and
    // address, and runs the replacement.
    node.kill_agent();
    let victim = node.pods().into_iter().next().expect("a pod");
    let victim_uid = text(&victim, "/metadata/uid").to_string();
    let (code, _) = {
        let serve = node.serve();
        let resp = reqwest::blocking::Client::new()
            .delete(format!(
                "{}/api/v1/namespaces/default/pods/{}",
                serve.url,
                text(&victim, "/metadata/name")
            ))
            .bearer_auth(&serve.token)
            .send()
            .expect("delete");
        (resp.status().as_u16(), ())
    };
    assert_eq!(code, 200);
    node.start_agent();
    converge(&node, replicas, version, "the evicted pod replaced");
    let victim_dir = node.state.join("pods").join(&victim_uid);
    assert!(
        !victim_dir.exists(),
        "seed {seed}: {} left\n{}",
        victim_dir.display(),
        node.agent_log()
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(&victim_uid),
        "seed {seed}: a mount of {victim_uid} left"
    );
    let ipam = std::fs::read_to_string(node.state.join("network/ipam.json")).unwrap_or_default();
    assert!(
        !ipam.contains(&victim_uid),
        "seed {seed}: {victim_uid} still leased: {ipam}"
    );
    let victim_netns = tend::agent::network::plan::pod_names(&victim_uid).netns;
    assert!(
        !tools::quiet("ip", &["netns", "list"])
            .unwrap_or_default()
            .contains(&victim_netns),
        "seed {seed}: {victim_netns} left"
    );

    // The Deployment goes: nothing is left behind.
    node.repos.remove("web.yaml");
    let id = node.repos.commit("remove node-web");
    node.repos.push();
    assert_eq!(phase(&node.serve().wait_revision(&id)), "Applied");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(node.pods().is_empty() && node.containers().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: left after the Deployment was deleted: pods {:?}, runc {:#?}\n{}",
            node.pods()
                .iter()
                .map(|p| text(p, "/metadata/name").to_string())
                .collect::<Vec<_>>(),
            node.containers(),
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ipam = std::fs::read_to_string(node.state.join("network/ipam.json")).unwrap_or_default();
    let leases = serde_json::from_str::<Value>(&ipam)
        .ok()
        .and_then(|v| v["pods"].as_object().map(|o| o.len()))
        .unwrap_or(0);
    assert_eq!(leases, 0, "seed {seed}: pod addresses still leased: {ipam}");
    let netns = tools::quiet("ip", &["netns", "list"]).unwrap_or_default();
    for uid in &uids {
        let name = tend::agent::network::plan::pod_names(uid).netns;
        assert!(
            !netns
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "seed {seed}: pod namespace {name} of {uid} left"
        );
    }
    eprintln!(
        "agent crash test: {AGENT_ROUNDS} kills ({kills_with_work} mid-change), {adopted} containers adopted, in {:?}",
        started.elapsed()
    );
    assert!(
        adopted > AGENT_ROUNDS,
        "seed {seed}: only {adopted} adoptions checked"
    );
}

/// An agent killed between removing a pod's container and releasing its rootfs comes back to
/// a terminating pod with no container: deleting it must still release the rootfs (with real
/// overlays the directory stays busy otherwise, and the pod is never deleted).
#[test]
fn a_deleted_pod_whose_container_is_already_gone_has_its_rootfs_released() {
    use tend::agent::network::ipam::{Cidr, IpamStore};
    use tend::agent::network::{NodeNetwork, PodNetwork, RecordingNetOps};
    use tend::agent::pods::{FakeImages, PodSyncer, SyncOutcome};
    use tend::agent::runtime::runc::RecordingRuntime;

    let dir = tempfile::tempdir().expect("temp dir");
    let cidr: Cidr = "10.244.1.0/24".parse().expect("cidr");
    let node = NodeNetwork {
        pod_cidr: cidr,
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        peers: Vec::new(),
    };
    let network = PodNetwork::open(
        RecordingNetOps::default(),
        node,
        IpamStore::new(dir.path().join("ipam.json")),
    )
    .expect("network");
    let images = Arc::new(FakeImages::default());
    let syncer = PodSyncer::new(
        Arc::new(RecordingRuntime::default()),
        network,
        images.clone(),
        dir.path(),
        std::net::Ipv4Addr::new(172, 31, 0, 2),
    );
    let uid = "0b9f1c2a-4e5f-6789-abcd-ef0123456789";
    // What the killed agent left: the container's directory, its container already deleted.
    let rootfs = dir.path().join("pods").join(uid).join("web/rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs");
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": uid,
            "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 1},
        "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "web:v1"}]},
    });
    let now = "2026-01-01T00:00:01Z".parse().expect("time");
    let outcome = syncer.sync(&pod, now).expect("sync");
    assert!(matches!(outcome, SyncOutcome::Deleted));
    assert_eq!(images.calls(), ["release"], "the rootfs is released");
    assert!(!dir.path().join("pods").join(uid).exists());
}
