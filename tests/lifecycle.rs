//! Init containers, lifecycle hooks and Service variables in the node agent: the pure pod
//! plan with init containers ([`plan_pod`]), the executor ([`PodSyncer`]) with a recording
//! runtime (hooks run as `exec` in it), and one real test (root, runc, ip, nft,
//! busybox-static): an init container, then an httpd whose postStart and preStop hooks leave
//! visible traces. Without those the real test skips with a reason, unless `CI` is set.

#[path = "support/node_lab.rs"]
mod node_lab;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tend::agent::network::ipam::{Cidr, IpamStore};
use tend::agent::network::{NodeNetwork, PodNetwork, RecordingNetOps};
use tend::agent::pods::{
    ContainerObserved, FakeImages, ImageObserved, PodAction, PodObserved, PodSyncer, SyncError,
    SyncOutcome, container_id, plan_pod,
};
use tend::agent::runtime::restart::{Exit, Observed, Tracked};
use tend::agent::runtime::runc::{Call, RecordingRuntime};
use tend::agent::services::{ServiceCache, StaticServices};

const UID: &str = "7e1f0c2a-4e5f-6789-abcd-ef0123456789";

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
}

/// A pod with init containers `a` and `b` and the app container `web`.
fn pod(policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": UID},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": policy,
            "initContainers": [
                {"name": "a", "image": "init:v1", "command": ["sh", "-c", "exit 0"]},
                {"name": "b", "image": "init:v1", "command": ["sh", "-c", "exit 0"]},
            ],
            "containers": [{"name": "web", "image": "web:v1"}],
        },
    })
}

fn ready(image: &str) -> ImageObserved {
    ImageObserved::Ready {
        image_id: format!("{image}@sha256:abc"),
    }
}

fn exit(code: i32, started: i64, finished: i64) -> Exit {
    Exit {
        exit_code: code,
        started_at: t(started),
        finished_at: t(finished),
    }
}

/// A pod whose network is set up, with these containers observed.
fn observed(containers: &[(&str, ContainerObserved)]) -> PodObserved {
    PodObserved {
        ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
        host_ip: Some(Ipv4Addr::new(172, 31, 0, 2)),
        start_time: Some(t(0)),
        containers: containers
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect(),
    }
}

fn container(image: &str, runtime: Option<Observed>) -> ContainerObserved {
    ContainerObserved {
        image: ready(image),
        runtime,
        tracked: Tracked::default(),
        ..ContainerObserved::default()
    }
}

fn status(actions: &[PodAction]) -> Value {
    match actions.last() {
        Some(PodAction::ReportStatus(s)) => s.clone(),
        other => panic!("last action is not a status: {other:?}"),
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {status}"))
}

fn runs(actions: &[PodAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            PodAction::RunContainer { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The plan.

#[test]
fn init_containers_run_one_at_a_time_before_the_app() {
    let p = pod("Always");
    // Nothing yet: the first init container's image only (the network is set up).
    let actions = plan_pod(&p, &observed(&[]), t(0));
    assert_eq!(
        actions[0],
        PodAction::EnsureImage {
            container: "a".into()
        }
    );
    assert!(runs(&actions).is_empty());
    let s = status(&actions);
    assert_eq!(s["phase"], "Pending");
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        s["initContainerStatuses"][1]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let initialized = condition(&s, "Initialized");
    assert_eq!(initialized["status"], "False");
    assert_eq!(initialized["reason"], "ContainersNotInitialized");
    assert_eq!(
        initialized["message"],
        "containers with incomplete status: [a b]"
    );
    assert_eq!(condition(&s, "Ready")["status"], "False");

    // a's image is there: a starts, nothing else.
    let actions = plan_pod(&p, &observed(&[("a", container("init:v1", None))]), t(1));
    assert_eq!(runs(&actions), ["a"]);

    // a runs: wait.
    let a_running = container("init:v1", Some(Observed::Running { started_at: t(2) }));
    let actions = plan_pod(&p, &observed(&[("a", a_running)]), t(3));
    assert_eq!(actions.len(), 1, "{actions:?}");
    let s = status(&actions);
    assert!(s["initContainerStatuses"][0]["state"]["running"].is_object());
    assert_eq!(s["initContainerStatuses"][0]["ready"], false);

    // a completed: b's turn (its image first).
    let a_done = container("init:v1", Some(Observed::Exited(exit(0, 2, 4))));
    let actions = plan_pod(&p, &observed(&[("a", a_done.clone())]), t(5));
    assert_eq!(
        actions[0],
        PodAction::EnsureImage {
            container: "b".into()
        }
    );
    let s = status(&actions);
    let a = &s["initContainerStatuses"][0];
    assert_eq!(a["state"]["terminated"]["reason"], "Completed");
    assert_eq!(a["ready"], true);
    assert_eq!(
        condition(&s, "Initialized")["message"],
        "containers with incomplete status: [b]"
    );
    let actions = plan_pod(
        &p,
        &observed(&[("a", a_done.clone()), ("b", container("init:v1", None))]),
        t(6),
    );
    assert_eq!(runs(&actions), ["b"]);

    // Both completed: the app container's turn; the pod says Initialized.
    let b_done = container("init:v1", Some(Observed::Exited(exit(0, 6, 7))));
    let actions = plan_pod(
        &p,
        &observed(&[("a", a_done.clone()), ("b", b_done.clone())]),
        t(8),
    );
    assert_eq!(
        actions[0],
        PodAction::EnsureImage {
            container: "web".into()
        }
    );
    let s = status(&actions);
    assert_eq!(condition(&s, "Initialized")["status"], "True");
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(
        s["initContainerStatuses"][1]["state"]["terminated"]["exitCode"],
        0
    );

    // The app runs: Running and Ready, init containers still reported Completed.
    let web = container("web:v1", Some(Observed::Running { started_at: t(9) }));
    let actions = plan_pod(
        &p,
        &observed(&[("a", a_done), ("b", b_done), ("web", web)]),
        t(10),
    );
    assert!(runs(&actions).is_empty());
    let s = status(&actions);
    assert_eq!(s["phase"], "Running");
    assert_eq!(condition(&s, "Ready")["status"], "True");
    let inits = s["initContainerStatuses"]
        .as_array()
        .expect("init statuses");
    assert_eq!(inits.len(), 2);
    for init in inits {
        assert_eq!(init["state"]["terminated"]["reason"], "Completed");
        assert_eq!(init["imageID"], "init:v1@sha256:abc");
        assert_eq!(init["image"], "init:v1");
    }
}

#[test]
fn a_failing_init_container_backs_off_under_always_and_on_failure() {
    for policy in ["Always", "OnFailure"] {
        let p = pod(policy);
        let failed = container("init:v1", Some(Observed::Exited(exit(1, 0, 1))));
        let plan = tend::agent::pods::plan(&p, &observed(&[("a", failed.clone())]), t(1));
        assert!(
            runs(&plan.actions).is_empty(),
            "{policy}: not before the back-off"
        );
        let s = status(&plan.actions);
        assert_eq!(s["phase"], "Pending", "{policy}");
        let a = &s["initContainerStatuses"][0];
        assert_eq!(
            a["state"]["waiting"]["reason"], "CrashLoopBackOff",
            "{policy}"
        );
        assert_eq!(a["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        // 10 s later it starts again, counted.
        let mut later = failed.clone();
        later.tracked = plan.tracked["a"];
        let actions = plan_pod(&p, &observed(&[("a", later)]), t(11));
        assert_eq!(
            actions
                .iter()
                .find(|a| matches!(a, PodAction::RunContainer { .. })),
            Some(&PodAction::RunContainer {
                name: "a".into(),
                restart_count: 1
            }),
            "{policy}"
        );
        assert_eq!(
            status(&actions)["initContainerStatuses"][0]["restartCount"],
            1
        );
    }
}

#[test]
fn a_failed_init_container_fails_the_pod_under_never() {
    let p = pod("Never");
    let failed = container("init:v1", Some(Observed::Exited(exit(3, 0, 1))));
    for now in [1, 100] {
        let actions = plan_pod(&p, &observed(&[("a", failed.clone())]), t(now));
        assert!(runs(&actions).is_empty());
        let s = status(&actions);
        assert_eq!(s["phase"], "Failed");
        let a = &s["initContainerStatuses"][0];
        assert_eq!(a["state"]["terminated"]["reason"], "Error");
        assert_eq!(a["state"]["terminated"]["exitCode"], 3);
        assert_eq!(a["ready"], false);
        assert_eq!(
            s["initContainerStatuses"][1]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(condition(&s, "Initialized")["status"], "False");
    }
}

#[test]
fn a_restarted_agent_does_not_run_completed_init_containers_again() {
    // The agent's memory is empty; runc forgot the exit codes (255), the status remembers.
    let mut p = pod("Always");
    let forgotten = |image| container(image, Some(Observed::Exited(exit(255, 0, 0))));
    let completed = json!({"state": {"terminated": {"exitCode": 0, "reason": "Completed",
        "startedAt": "2023-11-14T22:13:21Z", "finishedAt": "2023-11-14T22:13:22Z"}},
        "ready": true, "restartCount": 0, "image": "init:v1"});
    let mut a = completed.clone();
    a["name"] = json!("a");
    let mut b = completed;
    b["name"] = json!("b");
    p["status"] = json!({"initContainerStatuses": [a.clone(), b.clone()]});
    let actions = plan_pod(
        &p,
        &observed(&[
            ("a", forgotten("init:v1")),
            ("b", forgotten("init:v1")),
            ("web", container("web:v1", None)),
        ]),
        t(1),
    );
    assert_eq!(runs(&actions), ["web"]);
    let s = status(&actions);
    assert_eq!(s["initContainerStatuses"], json!([a, b]));

    // Only the condition left (an older status): the app container runs already.
    let mut p = pod("Always");
    p["status"] = json!({"conditions": [{"type": "Initialized", "status": "True"}]});
    let web = container("web:v1", Some(Observed::Running { started_at: t(0) }));
    let actions = plan_pod(&p, &observed(&[("web", web.clone())]), t(1));
    assert!(runs(&actions).is_empty(), "{actions:?}");
    let s = status(&actions);
    assert_eq!(s["phase"], "Running");
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );

    // Nothing in the status, but the app container runs: initialized too.
    let p = pod("Always");
    let actions = plan_pod(&p, &observed(&[("web", web)]), t(1));
    assert!(runs(&actions).is_empty(), "{actions:?}");
}

#[test]
fn deletion_stops_init_containers_too() {
    let mut p = pod("Always");
    p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    let actions = plan_pod(
        &p,
        &observed(&[
            (
                "a",
                container("init:v1", Some(Observed::Exited(exit(0, 0, 1)))),
            ),
            (
                "web",
                container("web:v1", Some(Observed::Running { started_at: t(1) })),
            ),
        ]),
        t(2),
    );
    let stopped: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            PodAction::StopContainer { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, ["web", "a"]);
}

// ---------------------------------------------------------------------------------------
// The executor with fakes.

struct Fakes {
    runtime: Arc<RecordingRuntime>,
    syncer: PodSyncer<PodNetwork<RecordingNetOps>>,
    dir: tempfile::TempDir,
}

fn fakes() -> Fakes {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Arc::new(RecordingRuntime::default());
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
    let mut syncer = PodSyncer::new(
        runtime.clone(),
        network,
        Arc::new(FakeImages::default()),
        dir.path(),
        Ipv4Addr::new(172, 31, 0, 2),
    );
    syncer.poll = Duration::from_millis(1);
    Fakes {
        runtime,
        syncer,
        dir,
    }
}

fn synced(outcome: SyncOutcome) -> Value {
    match outcome {
        SyncOutcome::Status(s) => s,
        SyncOutcome::Deleted => panic!("deleted"),
    }
}

fn started(runtime: &RecordingRuntime) -> Vec<String> {
    runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Run { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

#[test]
fn syncer_runs_init_containers_in_order_then_the_app() {
    let f = fakes();
    let mut p = pod("Always");
    let id = |n: &str| container_id(UID, n);
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    p["status"] = s.clone();
    assert_eq!(started(&f.runtime), [id("a")]);
    assert_eq!(s["phase"], "Pending");
    assert!(
        s["initContainerStatuses"][0]["state"]["running"].is_object(),
        "{s}"
    );

    f.runtime.exit(&id("a"), 0);
    let s = synced(f.syncer.sync(&p, t(1)).expect("sync"));
    p["status"] = s.clone();
    assert_eq!(started(&f.runtime), [id("a"), id("b")]);
    assert_eq!(
        s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );

    f.runtime.exit(&id("b"), 0);
    let s = synced(f.syncer.sync(&p, t(2)).expect("sync"));
    p["status"] = s.clone();
    assert_eq!(started(&f.runtime), [id("a"), id("b"), id("web")]);
    assert_eq!(s["phase"], "Running");
    assert_eq!(condition(&s, "Initialized")["status"], "True");

    // The app crashes and restarts: the init containers do not run again.
    f.runtime.exit(&id("web"), 1);
    synced(f.syncer.sync(&p, t(3)).expect("sync"));
    let s = synced(f.syncer.sync(&p, t(14)).expect("sync"));
    assert_eq!(
        started(&f.runtime),
        [id("a"), id("b"), id("web"), id("web")]
    );
    assert_eq!(s["containerStatuses"][0]["restartCount"], 1);
}

#[test]
fn a_new_syncer_resumes_an_initialized_pod_without_rerunning_init_containers() {
    let f = fakes();
    let mut p = pod("Always");
    let id = |n: &str| container_id(UID, n);
    for (n, name) in ["a", "b"].iter().enumerate() {
        p["status"] = synced(f.syncer.sync(&p, t(n as i64)).expect("sync"));
        f.runtime.exit(&id(name), 0);
    }
    p["status"] = synced(f.syncer.sync(&p, t(5)).expect("sync"));
    assert_eq!(p["status"]["phase"], "Running");
    // An agent restart: the same runtime, a syncer with an empty memory.
    f.syncer.forget(UID);
    let s = synced(f.syncer.sync(&p, t(6)).expect("sync"));
    assert_eq!(started(&f.runtime), [id("a"), id("b"), id("web")]);
    assert_eq!(s["phase"], "Running");
    assert_eq!(
        s["initContainerStatuses"],
        p["status"]["initContainerStatuses"]
    );
}

fn hooked_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": UID},
        "spec": {
            "nodeName": "n1",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "web", "image": "web:v1", "lifecycle": {
                "postStart": {"exec": {"command": ["hook-start"]}},
                "preStop": {"exec": {"command": ["hook-stop"]}},
            }}],
        },
    })
}

fn exec_and_kills(runtime: &RecordingRuntime) -> Vec<String> {
    runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Run { .. } => Some("run".to_string()),
            Call::Exec { argv, .. } => Some(format!("exec {}", argv.join(" "))),
            Call::Kill { signal, .. } => Some(format!("kill {signal:?}")),
            Call::Delete { .. } => None,
        })
        .collect()
}

#[test]
fn post_start_runs_after_start_and_pre_stop_before_sigterm() {
    let f = fakes();
    let mut p = hooked_pod();
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    assert_eq!(s["phase"], "Running");
    assert_eq!(exec_and_kills(&f.runtime), ["run", "exec hook-start"]);
    p["status"] = s;
    p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    assert_eq!(
        f.syncer.sync(&p, t(1)).expect("delete"),
        SyncOutcome::Deleted
    );
    assert_eq!(
        exec_and_kills(&f.runtime),
        ["run", "exec hook-start", "exec hook-stop", "kill Term"]
    );
}

#[test]
fn a_failed_post_start_kills_the_container_and_the_policy_restarts_it() {
    let f = fakes();
    f.runtime
        .exec_codes
        .lock()
        .expect("lock")
        .insert("hook-start".into(), 1);
    let mut p = hooked_pod();
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    p["status"] = s.clone();
    // Killed as the kubelet kills: preStop, then SIGTERM.
    assert_eq!(
        exec_and_kills(&f.runtime),
        ["run", "exec hook-start", "exec hook-stop", "kill Term"]
    );
    let web = &s["containerStatuses"][0];
    assert_eq!(web["state"]["waiting"]["reason"], "CrashLoopBackOff", "{s}");
    assert_eq!(web["lastState"]["terminated"]["exitCode"], 143);
    assert_eq!(web["ready"], false);
    // After the back-off it starts again; this time the hook succeeds.
    f.runtime.exec_codes.lock().expect("lock").clear();
    let s = synced(f.syncer.sync(&p, t(11)).expect("sync"));
    assert_eq!(s["containerStatuses"][0]["restartCount"], 1);
    assert!(
        s["containerStatuses"][0]["state"]["running"].is_object(),
        "{s}"
    );
    let calls = exec_and_kills(&f.runtime);
    assert_eq!(
        calls[4..],
        ["run".to_string(), "exec hook-start".to_string()]
    );
}

#[test]
fn pre_stop_is_skipped_for_an_exited_container() {
    let f = fakes();
    let mut p = hooked_pod();
    p["spec"]["restartPolicy"] = json!("Never");
    p["status"] = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    f.runtime.exit(&container_id(UID, "web"), 0);
    p["status"] = synced(f.syncer.sync(&p, t(1)).expect("sync"));
    p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    f.syncer.sync(&p, t(2)).expect("delete");
    assert_eq!(exec_and_kills(&f.runtime), ["run", "exec hook-start"]);
}

fn config_env(dir: &std::path::Path, container: &str) -> Vec<String> {
    let path = dir
        .join("pods")
        .join(UID)
        .join(container)
        .join("config.json");
    let text = std::fs::read_to_string(&path).expect("config.json");
    let config: Value = serde_json::from_str(&text).expect("json");
    config["process"]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[test]
fn containers_get_the_service_variables_of_their_namespace() {
    let f = fakes();
    let svc = |ns: &str, name: &str, ip: &str| {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
        }))
        .expect("service")
    };
    let services = StaticServices(vec![
        svc("shop", "cart-api", "10.96.0.20"),
        svc("other", "admin", "10.96.0.21"),
        svc("default", "kubernetes", "10.96.0.1"),
    ]);
    let syncer = f.syncer.with_services(Arc::new(services));
    let mut p = hooked_pod();
    p["spec"]["containers"][0]["env"] = json!([{"name": "CART_API_SERVICE_PORT", "value": "8080"}, {"name": "URL", "value": "$(CART_API_PORT)"}]);
    synced(syncer.sync(&p, t(0)).expect("sync"));
    let env = config_env(f.dir.path(), "web");
    for expected in [
        "CART_API_SERVICE_HOST=10.96.0.20",
        "CART_API_SERVICE_PORT_HTTP=80",
        "CART_API_PORT_80_TCP_ADDR=10.96.0.20",
        "KUBERNETES_SERVICE_HOST=10.96.0.1",
        // The container's own env wins, and expands against the Service variables.
        "CART_API_SERVICE_PORT=8080",
        "URL=tcp://10.96.0.20:80",
    ] {
        assert!(
            env.contains(&expected.to_string()),
            "{expected} not in {env:?}"
        );
    }
    assert!(!env.iter().any(|e| e.starts_with("ADMIN_")), "{env:?}");
}

#[test]
fn containers_wait_until_the_services_were_read() {
    let f = fakes();
    let cache = Arc::new(ServiceCache::default());
    let syncer = f.syncer.with_services(cache.clone());
    let p = hooked_pod();
    let err = syncer.sync(&p, t(0)).expect_err("services unread");
    assert!(matches!(err, SyncError::ServicesUnread { .. }), "{err}");
    assert!(started(&f.runtime).is_empty());
    cache.replace(Vec::new());
    let s = synced(syncer.sync(&p, t(1)).expect("sync"));
    assert_eq!(s["phase"], "Running");
}

#[test]
fn syncer_seeds_init_restart_counts_from_the_status() {
    let f = fakes();
    let mut p = pod("Always");
    p["status"] = json!({"initContainerStatuses": [
        {"name": "a", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    ]});
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    assert_eq!(s["initContainerStatuses"][0]["restartCount"], 4);
}

// ---------------------------------------------------------------------------------------
// For real: runc and iproute2 inside a node namespace this test makes.

mod real {
    use super::*;

    use tend::agent::network::ip::IpCommands;

    use tend::agent::runtime::runc::{ContainerRuntime, Runc, become_subreaper};

    use crate::node_lab::{DirImages, Lab, missing, must};

    #[test]
    fn init_container_then_app_with_post_start_and_pre_stop_hooks() {
        if let Some(reason) = missing() {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the lifecycle lab cannot run: {reason}");
            }
            eprintln!("skipping: {reason}");
            return;
        }
        become_subreaper().expect("subreaper");
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = Arc::new(Runc::new("runc", &dir.path().join("state")).expect("runc"));
        let pid = std::process::id();
        let node = format!("tend-life-{pid}");
        let uid = format!("{pid:08x}-11fe-4000-8000-000000000000");
        let (init_id, web_id) = (container_id(&uid, "init"), container_id(&uid, "web"));
        let mut lab = Lab {
            runtime: runtime.clone(),
            containers: vec![init_id.clone(), web_id.clone()],
            netns: vec![node.clone()],
            dir,
        };
        must(&["ip", "netns", "add", &node]);
        must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        lab.netns
            .push(tend::agent::network::plan::pod_names(&uid).netns);

        let rootfs = lab.dir.path().join("image");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
        must(&[
            "chroot",
            rootfs.to_str().expect("utf-8"),
            "/bin/busybox",
            "--install",
            "-s",
            "/bin",
        ]);
        std::fs::write(rootfs.join("www/index.html"), "hello\n").expect("page");

        let state = lab.dir.path().join("state");
        let mut network = PodNetwork::open(
            IpCommands::in_netns(&node),
            NodeNetwork {
                pod_cidr: "10.244.9.0/24".parse().expect("cidr"),
                cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
                peers: Vec::new(),
            },
            IpamStore::new(state.join("network/ipam.json")),
        )
        .expect("network");
        network.setup_node().expect("node network");
        let syncer = PodSyncer::new(
            runtime.clone(),
            network,
            Arc::new(DirImages { rootfs }),
            &state,
            Ipv4Addr::new(172, 31, 0, 9),
        );
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "life-1", "namespace": "default", "uid": uid},
            "spec": {
                "nodeName": "n1",
                "terminationGracePeriodSeconds": 3,
                "initContainers": [
                    {"name": "init", "image": "busybox", "command": ["sh", "-c", "exit 0"]},
                ],
                "containers": [{"name": "web", "image": "busybox", "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "echo started > /tmp/started"]}},
                    "preStop": {"exec": {"command": ["sh", "-c", "echo prestop > /proc/1/fd/1"]}},
                }}],
            },
        });

        // Sync as the agent does (the status written back each time) until the app runs.
        let mut s = json!({});
        for _ in 0..100 {
            s = synced(syncer.sync(&p, Timestamp::now()).expect("sync"));
            p["status"] = s.clone();
            if s["phase"] == "Running" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(s["phase"], "Running", "{s}");
        let init = &s["initContainerStatuses"][0];
        assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{s}");
        let time = |v: &Value| -> Timestamp { v.as_str().expect("time").parse().expect("time") };
        assert!(
            time(&init["state"]["terminated"]["finishedAt"])
                <= time(&s["containerStatuses"][0]["state"]["running"]["startedAt"]),
            "the app started before the init container ended: {s}"
        );
        assert_eq!(condition(&s, "Initialized")["status"], "True");
        // The init container ran and exited before the app container started.
        let init_state = runtime.state(&init_id).expect("state").expect("init kept");
        assert_eq!(init_state.exit_code, Some(0));

        // postStart ran inside the app container before it was reported Running.
        let out = runtime
            .exec(
                &web_id,
                &["cat".into(), "/tmp/started".into()],
                Duration::from_secs(5),
            )
            .expect("exec");
        assert_eq!((out.exit_code, out.output.as_str()), (Some(0), "started\n"));

        // A second sync changes nothing: no init container runs again.
        let again = synced(syncer.sync(&p, Timestamp::now()).expect("sync"));
        assert_eq!(again["initContainerStatuses"], s["initContainerStatuses"]);
        assert_eq!(again["containerStatuses"][0]["restartCount"], 0);

        // Deletion: preStop writes to the app's stdout before SIGTERM ends it.
        // Deletion removes the log file: read it through a descriptor opened before.
        let mut log_file = std::fs::File::open(runtime.log_path(&web_id)).expect("web log");
        p["metadata"]["deletionTimestamp"] = json!(Timestamp::now().to_string());
        assert_eq!(
            syncer.sync(&p, Timestamp::now()).expect("delete"),
            SyncOutcome::Deleted
        );
        assert!(!runtime.log_path(&web_id).exists(), "the log is removed");
        let mut log = String::new();
        std::io::Read::read_to_string(&mut log_file, &mut log).expect("read the log");
        assert!(log.contains("prestop"), "log: {log:?}");
        assert_eq!(runtime.state(&web_id).expect("state"), None);
        assert_eq!(runtime.state(&init_id).expect("state"), None);
    }
}

#[test]
fn http_get_hooks_go_to_the_pod_ip_through_the_hook_runner() {
    use tend::agent::hooks::{HookAction, RecordingHooks};
    let f = fakes();
    let hooks = Arc::new(RecordingHooks::default());
    let syncer = f.syncer.with_hooks(hooks.clone());
    let mut p = hooked_pod();
    p["spec"]["containers"][0]["ports"] = json!([{"name": "admin", "containerPort": 9000}]);
    p["spec"]["containers"][0]["lifecycle"] = json!({
        "postStart": {"httpGet": {"port": "admin", "path": "warm",
            "httpHeaders": [{"name": "X-Hook", "value": "start"}]}},
        "preStop": {"sleep": {"seconds": 1}},
    });
    p["status"] = synced(syncer.sync(&p, t(0)).expect("sync"));
    p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    syncer.sync(&p, t(1)).expect("delete");
    let id = container_id(UID, "web");
    assert_eq!(
        hooks.calls(),
        [
            (
                id.clone(),
                HookAction::HttpGet {
                    url: "http://10.244.1.2:9000/warm".into(),
                    headers: vec![("X-Hook".into(), "start".into())],
                }
            ),
            (
                id,
                HookAction::Sleep {
                    duration: Duration::from_secs(1)
                }
            ),
        ]
    );
    // Hooks ran through the runner, not as exec in the runtime.
    assert!(
        !exec_and_kills(&f.runtime)
            .iter()
            .any(|c| c.starts_with("exec"))
    );
}

#[test]
fn an_init_container_image_pull_failure_is_reported_and_backs_off() {
    let p = pod("Always");
    let failed = |fresh| ContainerObserved {
        image: ImageObserved::Failed {
            message: "manifest unknown".into(),
            never_pull: false,
            failures: 1,
            retry_at: t(10),
            fresh,
        },
        runtime: None,
        tracked: Tracked::default(),
        ..ContainerObserved::default()
    };
    let actions = plan_pod(&p, &observed(&[("a", failed(true))]), t(0));
    let a = &status(&actions)["initContainerStatuses"][0];
    assert_eq!(a["state"]["waiting"]["reason"], "ErrImagePull");
    assert_eq!(a["state"]["waiting"]["message"], "manifest unknown");
    let actions = plan_pod(&p, &observed(&[("a", failed(false))]), t(5));
    assert_eq!(
        status(&actions)["initContainerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    assert_eq!(
        actions.len(),
        1,
        "no retry before the back-off: {actions:?}"
    );
    let actions = plan_pod(&p, &observed(&[("a", failed(false))]), t(10));
    assert_eq!(
        actions[0],
        PodAction::EnsureImage {
            container: "a".into()
        }
    );
}
