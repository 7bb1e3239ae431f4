//! Two control planes on one real etcd (issue 9): every replica serves the API, only the
//! elected leader runs the source loop and the controllers. The leader killed with SIGKILL in
//! the middle of a rollout: the other takes over within the lease's TTL and completes it, the
//! revision history has every commit once, and the simulated nodes, given both servers, carry
//! on with the survivor. The leader paused with SIGSTOP: its lease expires, the other takes
//! over, and the paused one, resumed, stops instead of acting as leader. etcd restarted
//! quickly (well within the renew deadline): the leader keeps leading.
//!
//! The replicas share the source (one bare repository) and their tokens (copied, as
//! docs/control-planes.md tells operators to); each has its own state directory.

mod common;
#[path = "support/etcd.rs"]
mod etcd;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The lease's TTL (src/server/leader.rs) and a generous margin for a loaded machine.
const TAKEOVER_BOUND: Duration = Duration::from_secs(15 + 20);

fn deployment(replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: web\n  strategy:\n    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
    )
}

/// Starts a replica on `repos` and `etcd`; the second and later get the first one's tokens.
fn replica(repos: &Repos, etcd: &etcd::Etcd, name: &str, tokens_from: Option<&Path>) -> Serve {
    let state = repos.tmp.path().join(name);
    if let Some(from) = tokens_from {
        std::fs::create_dir_all(&state).expect("state dir");
        for file in ["admin.token", "join.token"] {
            std::fs::copy(from.join(file), state.join(file)).expect("copy token");
        }
    }
    let bare = repos.bare.to_str().expect("path");
    Serve::start(&["--repo", bare, "--store", &etcd.url()], &state)
}

/// The replica's view of who leads.
fn leader_of(serve: &Serve) -> Value {
    serve.get_ok("/apis/tend.dev/v1/leader")
}

fn leading(serve: &Serve) -> bool {
    leader_of(serve)["leading"] == Value::Bool(true)
}

/// Waits until `serve` leads; how long that took.
fn wait_leading(serve: &Serve, bound: Duration) -> Duration {
    let started = Instant::now();
    while !leading(serve) {
        assert!(
            started.elapsed() < bound,
            "no takeover within {bound:?}: {}",
            leader_of(serve)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// A `tend sim-node` given both servers (killed on drop).
fn sim_node(servers: &str, join_token: &Path, name: &str) -> SimNode {
    let child = Command::new(TEND)
        .args(["--server", servers, "sim-node", "--token-file"])
        .arg(join_token)
        .args(["--name", name, "--heartbeat", "500ms"])
        .args(["--start-delay", "200ms", "--ready-delay", "1500ms"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tend sim-node starts");
    SimNode {
        child,
        name: name.to_string(),
    }
}

fn revisions(serve: &Serve) -> Vec<Value> {
    items(&serve.get_ok("/apis/tend.dev/v1/revisions"))
}

/// Each Node's last heartbeat (the Ready condition's lastHeartbeatTime).
fn heartbeats(serve: &Serve) -> Vec<(String, String)> {
    items(&serve.get_ok("/api/v1/nodes"))
        .iter()
        .map(|n| {
            let beat = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["lastHeartbeatTime"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                beat,
            )
        })
        .collect()
}

#[test]
fn the_leader_killed_mid_rollout_the_other_completes_it() {
    let Some(etcd) = etcd::Etcd::start("the_leader_killed_mid_rollout_the_other_completes_it")
    else {
        return;
    };
    let repos = Repos::new();
    repos.write("web.yaml", &deployment(6, "web:v1"));
    let v1 = repos.commit("web v1");
    repos.push();

    let a = replica(&repos, &etcd, "a", None);
    wait_leading(&a, TAKEOVER_BOUND);
    let b = replica(&repos, &etcd, "b", Some(&a.state));
    let seen = b.wait_for("/apis/tend.dev/v1/leader", "b to see a leader", |l| {
        !l["leader"].is_null()
    });
    assert_eq!(seen["leading"], false, "one leader: {seen}");
    assert_eq!(seen["leader"], leader_of(&a)["identity"]);

    let servers = format!("{},{}", a.url, b.url);
    let join = a.state.join("join.token");
    let _nodes: Vec<SimNode> = (1..=3)
        .map(|i| sim_node(&servers, &join, &format!("sim-{i}")))
        .collect();
    a.wait_revision(&v1);
    let done = a.cli(&["rollout", "status", "deployment/web", "--timeout", "60s"]);
    assert!(done.status.success(), "v1 rolled out: {done:?}");

    // v2: one pod at a time (maxSurge 1, maxUnavailable 0), each Ready after 1.5 s.
    repos.write("web.yaml", &deployment(6, "web:v2"));
    let v2 = repos.commit("web v2");
    repos.push();
    a.wait_revision(&v2);
    a.wait_for(
        "/apis/apps/v1/namespaces/default/deployments/web",
        "the rollout to start",
        |d| {
            d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["updatedReplicas"].as_i64().unwrap_or(0) >= 1
        },
    );
    let mid = a.get_ok("/apis/apps/v1/namespaces/default/deployments/web");
    let updated = mid["status"]["updatedReplicas"].as_i64().unwrap_or(0);
    assert!(updated < 6, "killed mid-rollout: {}", mid["status"]);
    let killed = Instant::now();
    a.kill();

    let took = wait_leading(&b, TAKEOVER_BOUND);
    eprintln!("b took over {:?} after the SIGKILL", killed.elapsed());
    assert!(took <= TAKEOVER_BOUND);
    let done = b.cli(&["rollout", "status", "deployment/web", "--timeout", "90s"]);
    assert!(
        done.status.success(),
        "b completed the rollout: {}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    let pods = items(&b.get_ok("/api/v1/namespaces/default/pods"));
    let running: Vec<&Value> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(running.len(), 6, "{pods:?}");
    for pod in &running {
        assert_eq!(pod["spec"]["containers"][0]["image"], "web:v2");
        assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    }

    // The new leader runs the source loop too: a third commit is recorded once, after the
    // others, and applied.
    repos.write("web.yaml", &deployment(4, "web:v2"));
    let v3 = repos.commit("web: 4 replicas");
    repos.push();
    let record = b.wait_revision(&v3);
    assert_eq!(phase(&record), "Applied", "{record}");
    let history = revisions(&b);
    let mut ids: Vec<(u64, String, String)> = history
        .iter()
        .map(|r| {
            (
                r["spec"]["sequence"].as_u64().unwrap_or(0),
                r["metadata"]["name"].as_str().unwrap_or("").to_string(),
                phase(r).to_string(),
            )
        })
        .collect();
    ids.sort();
    let names: Vec<&str> = ids.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [v1.as_str(), v2.as_str(), v3.as_str()],
        "every commit once, in order: {ids:?}"
    );
    let sequences: Vec<u64> = ids.iter().map(|(s, _, _)| *s).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "distinct sequences: {ids:?}"
    );
    assert!(ids.iter().all(|(_, _, p)| p == "Applied"), "{ids:?}");

    // The nodes moved to b: their heartbeats go on, and they are Ready.
    let before = heartbeats(&b);
    assert_eq!(before.len(), 3, "{before:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let after = heartbeats(&b);
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "node {name} still heartbeats (through b)");
    }
    b.wait_for("/api/v1/namespaces/default/pods", "4 pods", |list| {
        items(list)
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .count()
            == 4
    });
}

#[test]
fn a_paused_leader_loses_its_lease_and_stops_when_resumed() {
    let Some(etcd) = etcd::Etcd::start("a_paused_leader_loses_its_lease_and_stops_when_resumed")
    else {
        return;
    };
    let repos = Repos::new();
    repos.write("web.yaml", &deployment(1, "web:v1"));
    let v1 = repos.commit("web v1");
    repos.push();
    let mut a = replica(&repos, &etcd, "a", None);
    wait_leading(&a, TAKEOVER_BOUND);
    let b = replica(&repos, &etcd, "b", Some(&a.state));
    a.wait_revision(&v1);
    let a_identity = leader_of(&a)["identity"].clone();
    let seen = b.wait_for("/apis/tend.dev/v1/leader", "b to see a leader", |l| {
        !l["leader"].is_null()
    });
    assert_eq!(seen["leader"], a_identity);

    let pid = a.child.id() as libc::pid_t;
    // SAFETY: signals to a child this test started and still owns (not yet reaped).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let paused = Instant::now();
    wait_leading(&b, TAKEOVER_BOUND);
    eprintln!("b took over {:?} after the SIGSTOP", paused.elapsed());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };

    // Resumed, a finds its renew deadline long past: it steps down and exits (status 1)
    // rather than act as leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = a.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "a did not stop after SIGCONT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    let now = leader_of(&b);
    assert_eq!(now["leading"], true, "{now}");
    assert_eq!(now["leader"], now["identity"]);
    assert_ne!(now["leader"], a_identity);
    let held = etcd.etcdctl(&["get", "/tend-leader", "--print-value-only"]);
    assert_eq!(held.trim(), now["identity"].as_str().unwrap_or(""));

    // b leads for real: a new commit is applied by it.
    repos.write("web.yaml", &deployment(2, "web:v1"));
    let v2 = repos.commit("web: 2 replicas");
    repos.push();
    assert_eq!(phase(&b.wait_revision(&v2)), "Applied");
}

#[test]
fn the_leader_survives_a_quick_etcd_restart() {
    let Some(mut etcd) = etcd::Etcd::start("the_leader_survives_a_quick_etcd_restart") else {
        return;
    };
    let repos = Repos::new();
    repos.write("web.yaml", &deployment(1, "web:v1"));
    let v1 = repos.commit("web v1");
    repos.push();
    let mut a = replica(&repos, &etcd, "a", None);
    wait_leading(&a, TAKEOVER_BOUND);
    a.wait_revision(&v1);
    let identity = leader_of(&a)["identity"].clone();

    // etcd is down for well under the renew deadline (10 s): the leader keeps leading.
    etcd.restart();
    repos.write("web.yaml", &deployment(2, "web:v1"));
    let v2 = repos.commit("web: 2 replicas");
    repos.push();
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let (code, record) = a.get(&format!("/apis/tend.dev/v1/revisions/{v2}"));
        if code == 200 && phase(&record) == "Applied" {
            break record;
        }
        assert!(
            a.child.try_wait().expect("try_wait").is_none(),
            "the leader exited"
        );
        assert!(Instant::now() < deadline, "v2 not applied: {code} {record}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(phase(&record), "Applied");
    std::thread::sleep(Duration::from_secs(6));
    let now = leader_of(&a);
    assert_eq!(now["leading"], true, "{now}");
    assert_eq!(now["identity"], identity);
    assert!(
        a.child.try_wait().expect("try_wait").is_none(),
        "a still runs"
    );
    let held = etcd.etcdctl(&["get", "/tend-leader", "--print-value-only"]);
    assert_eq!(held.trim(), identity.as_str().unwrap_or(""));
}
