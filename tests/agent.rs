//! The node agent's pod sync: the pure decision ([`plan_pod`]) and the executor
//! ([`PodSyncer`]) with a recording runtime, recording network ops and fake images; one
//! real test (root, runc, ip, busybox-static) runs a busybox httpd pod in a node namespace
//! the test makes. Without those the real test skips with a reason, unless `CI` is set.

#[path = "support/node_lab.rs"]
mod node_lab;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tend::agent::network::ipam::{Cidr, IpamStore};
use tend::agent::network::{NodeNetwork, PodNetwork, RecordingNetOps, Step};
use tend::agent::pods::{
    ContainerObserved, FakeImages, ImageObserved, PodAction, PodObserved, PodSyncer, SyncOutcome,
    container_id, plan_pod,
};
use tend::agent::runtime::restart::{Exit, Observed, Tracked};
use tend::agent::runtime::runc::{Call, RecordingRuntime, Signal};

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
}

fn pod(policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": "0a1b2c3d-4e5f-6789-abcd-ef0123456789"},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": policy,
            "containers": [{"name": "web", "image": "web:v1"}],
        },
    })
}

fn ready_image() -> ImageObserved {
    ImageObserved::Ready {
        image_id: "web:v1@sha256:abc".into(),
    }
}

fn observed(runtime: Option<Observed>, tracked: Tracked) -> PodObserved {
    PodObserved {
        ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
        host_ip: Some(Ipv4Addr::new(172, 31, 0, 2)),
        start_time: Some(t(0)),
        containers: BTreeMap::from([(
            "web".to_string(),
            ContainerObserved {
                image: ready_image(),
                runtime,
                tracked,
                ..ContainerObserved::default()
            },
        )]),
    }
}

fn status(actions: &[PodAction]) -> Value {
    match actions.last() {
        Some(PodAction::ReportStatus(s)) => s.clone(),
        other => panic!("last action is not a status: {other:?}"),
    }
}

fn exit(code: i32, started: i64, finished: i64) -> Exit {
    Exit {
        exit_code: code,
        started_at: t(started),
        finished_at: t(finished),
    }
}

#[test]
fn a_new_pod_gets_its_image_and_network_then_its_container() {
    let first = plan_pod(&pod("Always"), &PodObserved::default(), t(0));
    assert_eq!(
        first[..2],
        [
            PodAction::EnsureImage {
                container: "web".into()
            },
            PodAction::SetupNetwork
        ]
    );
    let s = status(&first);
    assert_eq!(s["phase"], "Pending");
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    let second = plan_pod(&pod("Always"), &observed(None, Tracked::default()), t(0));
    assert_eq!(
        second[0],
        PodAction::RunContainer {
            name: "web".into(),
            restart_count: 0
        }
    );
}

#[test]
fn a_running_pod_needs_nothing_and_is_ready() {
    let o = observed(
        Some(Observed::Running { started_at: t(1) }),
        Tracked::default(),
    );
    let actions = plan_pod(&pod("Always"), &o, t(5));
    assert_eq!(actions.len(), 1, "{actions:?}");
    let s = status(&actions);
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["podIP"], "10.244.1.2");
    assert_eq!(s["hostIP"], "172.31.0.2");
    assert_eq!(s["startTime"], t(0).to_string());
    let c = &s["containerStatuses"][0];
    assert_eq!(c["ready"], true);
    assert_eq!(c["started"], true);
    assert_eq!(c["restartCount"], 0);
    assert_eq!(c["image"], "web:v1");
    assert_eq!(c["imageID"], "web:v1@sha256:abc");
    assert_eq!(c["state"]["running"]["startedAt"], t(1).to_string());
    let conditions: BTreeMap<String, String> = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(conditions[kind], "True", "{kind}");
    }
}

#[test]
fn always_restarts_after_the_back_off_with_crash_loop_in_between() {
    let o = observed(Some(Observed::Exited(exit(1, 0, 2))), Tracked::default());
    let waiting = plan_pod(&pod("Always"), &o, t(3));
    assert_eq!(waiting.len(), 1, "no restart before 10 s: {waiting:?}");
    let s = status(&waiting);
    assert_eq!(s["phase"], "Running");
    let c = &s["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(c["ready"], false);
    assert_eq!(s["conditions"][3]["status"], "False");
    let again = plan_pod(&pod("Always"), &o, t(12));
    assert_eq!(
        again[0],
        PodAction::RunContainer {
            name: "web".into(),
            restart_count: 1
        }
    );
}

#[test]
fn on_failure_with_exit_zero_succeeds_and_never_fails_or_succeeds() {
    let done = observed(Some(Observed::Exited(exit(0, 0, 2))), Tracked::default());
    let s = status(&plan_pod(&pod("OnFailure"), &done, t(30)));
    assert_eq!(s["phase"], "Succeeded");
    assert_eq!(
        s["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let s = status(&plan_pod(&pod("Never"), &done, t(30)));
    assert_eq!(s["phase"], "Succeeded");
    let failed = observed(Some(Observed::Exited(exit(3, 0, 2))), Tracked::default());
    let actions = plan_pod(&pod("Never"), &failed, t(30));
    assert_eq!(actions.len(), 1, "{actions:?}");
    let s = status(&actions);
    assert_eq!(s["phase"], "Failed");
    let c = &s["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(c["exitCode"], 3);
    assert_eq!(c["reason"], "Error");
    // OnFailure restarts a failure.
    let actions = plan_pod(&pod("OnFailure"), &failed, t(30));
    assert!(matches!(actions[0], PodAction::RunContainer { .. }));
}

#[test]
fn deletion_stops_tears_down_then_deletes() {
    let mut p = pod("Always");
    p["metadata"]["deletionTimestamp"] = json!(t(5).to_string());
    p["spec"]["terminationGracePeriodSeconds"] = json!(3);
    let o = observed(
        Some(Observed::Running { started_at: t(1) }),
        Tracked::default(),
    );
    assert_eq!(
        plan_pod(&p, &o, t(6)),
        [
            PodAction::StopContainer {
                name: "web".into(),
                grace: Duration::from_secs(3)
            },
            PodAction::TeardownNetwork,
            PodAction::DeletePodObject,
        ]
    );
}

#[test]
fn image_pull_failure_is_err_image_pull_then_back_off() {
    let mut o = observed(None, Tracked::default());
    let failed = |fresh: bool| ImageObserved::Failed {
        message: "manifest unknown".into(),
        never_pull: false,
        failures: 1,
        retry_at: t(10),
        fresh,
    };
    o.containers.get_mut("web").expect("web").image = failed(true);
    let actions = plan_pod(&pod("Always"), &o, t(0));
    assert_eq!(actions.len(), 1, "{actions:?}");
    let s = status(&actions);
    assert_eq!(s["phase"], "Pending");
    let w = &s["containerStatuses"][0]["state"]["waiting"];
    assert_eq!(w["reason"], "ErrImagePull");
    assert_eq!(w["message"], "manifest unknown");
    o.containers.get_mut("web").expect("web").image = failed(false);
    let s = status(&plan_pod(&pod("Always"), &o, t(5)));
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    let retry = plan_pod(&pod("Always"), &o, t(10));
    assert_eq!(
        retry[0],
        PodAction::EnsureImage {
            container: "web".into()
        }
    );
}

// ---------------------------------------------------------------------------------------
// The executor with fakes.

struct Fakes {
    runtime: Arc<RecordingRuntime>,
    images: Arc<FakeImages>,
    syncer: PodSyncer<PodNetwork<RecordingNetOps>>,
    _dir: tempfile::TempDir,
}

fn fakes() -> Fakes {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Arc::new(RecordingRuntime::default());
    let images = Arc::new(FakeImages::default());
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
        images.clone(),
        dir.path(),
        Ipv4Addr::new(172, 31, 0, 2),
    );
    syncer.poll = Duration::from_millis(1);
    Fakes {
        runtime,
        images,
        syncer,
        _dir: dir,
    }
}

fn synced(outcome: SyncOutcome) -> Value {
    match outcome {
        SyncOutcome::Status(s) => s,
        SyncOutcome::Deleted => panic!("deleted"),
    }
}

#[test]
fn syncer_runs_a_pod_restarts_it_and_deletes_it_in_order() {
    let f = fakes();
    let mut p = pod("Always");
    let uid = p["metadata"]["uid"].as_str().expect("uid").to_string();
    let id = container_id(&uid, "web");
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    // As the API would: the next sync sees the status written.
    p["status"] = s.clone();
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["podIP"], "10.244.1.2");
    assert_eq!(s["containerStatuses"][0]["imageID"], "web:v1@sha256:fake");
    assert_eq!(
        f.images.calls(),
        ["ensure web:v1", "release", "prepare web:v1"]
    );
    let calls = f.runtime.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0], Call::Delete { id: id.clone() });
    assert!(matches!(&calls[1], Call::Run { id: i, .. } if *i == id));
    let events: Vec<(&str, String)> = f
        .syncer
        .take_events(&uid)
        .into_iter()
        .map(|e| (e.reason, e.message))
        .collect();
    assert_eq!(
        events,
        [
            (
                "Pulled",
                "Container image \"web:v1\" already present on machine".to_string()
            ),
            ("Created", "Created container web".to_string()),
            ("Started", "Started container web".to_string()),
        ]
    );
    assert!(f.syncer.take_events(&uid).is_empty(), "taken once");
    {
        let net = f.syncer.network();
        let applied = &net.ops().applied;
        assert!(
            applied
                .iter()
                .any(|s| matches!(s, Step::CreateNetns { .. })),
            "{applied:?}"
        );
    }
    // Steady: nothing more happens.
    let again = synced(f.syncer.sync(&p, t(1)).expect("sync"));
    assert_eq!(again, s);
    assert_eq!(f.runtime.calls().len(), 2);

    // The container exits: CrashLoopBackOff, then a restart after 10 s.
    f.runtime.exit(&id, 1);
    let s = synced(f.syncer.sync(&p, t(2)).expect("sync"));
    let c = &s["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(f.runtime.calls().len(), 2);
    let s = synced(f.syncer.sync(&p, t(13)).expect("sync"));
    let c = &s["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1);
    assert!(c["state"]["running"].is_object(), "{c}");
    assert_eq!(f.runtime.calls().len(), 4);

    // Deletion: SIGTERM, delete, network gone, object deleted.
    let mut p2 = p.clone();
    p2["status"] = s;
    p2["metadata"]["deletionTimestamp"] = json!(t(20).to_string());
    assert_eq!(
        f.syncer.sync(&p2, t(20)).expect("sync"),
        SyncOutcome::Deleted
    );
    let calls = f.runtime.calls();
    assert_eq!(
        calls[4..],
        [
            Call::Kill {
                id: id.clone(),
                signal: Signal::Term
            },
            Call::Delete { id: id.clone() },
        ]
    );
    let net = f.syncer.network();
    assert!(net.allocations().get(&uid).is_none(), "IP released");
    assert!(
        net.ops()
            .applied
            .iter()
            .any(|s| matches!(s, Step::DeleteNetns { .. }))
    );
    assert!(f.syncer.known().is_empty());
}

#[test]
fn syncer_reports_image_pull_errors_with_back_off() {
    let f = fakes();
    f.images
        .missing
        .lock()
        .expect("lock")
        .insert("web:v1".into());
    let p = pod("Always");
    let s = synced(f.syncer.sync(&p, t(0)).expect("sync"));
    assert_eq!(s["phase"], "Pending");
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ErrImagePull"
    );
    let s = synced(f.syncer.sync(&p, t(5)).expect("sync"));
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    assert_eq!(f.images.calls(), ["ensure web:v1"]);
    assert!(f.runtime.calls().is_empty());
    // The retry after the back-off fails again: ErrImagePull again, then back-off.
    let s = synced(f.syncer.sync(&p, t(10)).expect("sync"));
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"], "ErrImagePull",
        "{s}"
    );
    let s = synced(f.syncer.sync(&p, t(12)).expect("sync"));
    assert_eq!(
        s["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ImagePullBackOff"
    );
    assert_eq!(f.images.calls(), ["ensure web:v1", "ensure web:v1"]);
    // The image appears: the retry after the back-off runs the pod.
    f.images.missing.lock().expect("lock").clear();
    let s = synced(f.syncer.sync(&p, t(31)).expect("sync"));
    assert_eq!(s["phase"], "Running");
}

// ---------------------------------------------------------------------------------------
// The lifecycle's pure parts.

#[test]
fn preflight_names_what_is_missing() {
    use tend::agent::node::{PreflightError, preflight};
    assert_eq!(preflight(false, |_, _| true), Err(PreflightError::NotRoot));
    let no_nft = preflight(true, |tool, _| tool != "nft").expect_err("nft missing");
    assert!(no_nft.to_string().contains("`nft`"), "{no_nft}");
    assert!(no_nft.to_string().contains("nftables"), "{no_nft}");
    assert!(preflight(true, |tool, _| tool != "runc").is_err());
    assert!(preflight(true, |tool, _| tool != "ip").is_err());
    assert_eq!(preflight(true, |_, _| true), Ok(()));
}

#[test]
fn adoption_keeps_containers_of_bound_pods_only() {
    use std::collections::BTreeSet;
    use tend::agent::node::orphans;
    let bound = BTreeSet::from(["uid-a".to_string()]);
    let ids = ["uid-a-web", "uid-a-sidecar", "uid-b-web", "other"];
    assert_eq!(orphans(ids, &bound), ["uid-b-web", "other"]);
}

// ---------------------------------------------------------------------------------------
// For real: runc, iproute2 and nft inside a node namespace this test makes.

mod real {
    use super::*;

    use tend::agent::network::ip::IpCommands;

    use tend::agent::runtime::runc::{ContainerRuntime, Runc, become_subreaper};

    use crate::node_lab::{DirImages, Lab, missing, must, sh};

    #[test]
    fn a_busybox_httpd_pod_answers_on_its_ip_and_deletion_frees_it() {
        if let Some(reason) = missing() {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the agent lab cannot run: {reason}");
            }
            eprintln!("skipping: {reason}");
            return;
        }
        become_subreaper().expect("subreaper");
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = Arc::new(Runc::new("runc", &dir.path().join("state")).expect("runc"));
        let pid = std::process::id();
        let node = format!("tend-agent-{pid}");
        let uid = format!("{pid:08x}a9e1-0000-4000-8000-000000000000");
        let mut lab = Lab {
            runtime: runtime.clone(),
            containers: vec![container_id(&uid, "web")],
            netns: vec![node.clone()],
            dir,
        };
        must(&["ip", "netns", "add", &node]);
        must(&["ip", "-n", &node, "link", "set", "lo", "up"]);
        let pod_netns = tend::agent::network::plan::pod_names(&uid).netns;
        lab.netns.push(pod_netns.clone());

        // The image: busybox and its applets, and a page.
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
        std::fs::write(rootfs.join("www/index.html"), "hello from tend\n").expect("page");

        let state = lab.dir.path().join("state");
        let mut network = PodNetwork::open(
            IpCommands::in_netns(&node),
            NodeNetwork {
                pod_cidr: "10.244.7.0/24".parse().expect("cidr"),
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
            Ipv4Addr::new(172, 31, 0, 7),
        );
        let mut p = pod("Always");
        p["metadata"]["uid"] = json!(uid);
        p["spec"]["terminationGracePeriodSeconds"] = json!(2);

        let s = synced(syncer.sync(&p, Timestamp::now()).expect("sync"));
        assert_eq!(s["phase"], "Running", "{s}");
        let ip = s["podIP"].as_str().expect("podIP").to_string();
        assert_eq!(ip, "10.244.7.2");
        let url = format!("http://{ip}:8080/");
        let mut page = String::new();
        for _ in 0..50 {
            let out = sh(&[
                "ip", "netns", "exec", &node, "busybox", "wget", "-qO-", &url,
            ]);
            if out.status.success() {
                page = String::from_utf8_lossy(&out.stdout).into_owned();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(page, "hello from tend\n");
        // A second sync changes nothing.
        p["status"] = s.clone();
        let again = synced(syncer.sync(&p, Timestamp::now()).expect("sync"));
        assert_eq!(again["containerStatuses"][0]["restartCount"], 0);
        assert!(again["containerStatuses"][0]["state"]["running"].is_object());

        p["metadata"]["deletionTimestamp"] = json!(Timestamp::now().to_string());
        assert_eq!(
            syncer.sync(&p, Timestamp::now()).expect("delete"),
            SyncOutcome::Deleted
        );
        assert_eq!(runtime.state(&lab.containers[0]).expect("state"), None);
        assert!(syncer.network().allocations().get(&uid).is_none());
        let namespaces = must(&["ip", "netns", "list"]);
        assert!(!namespaces.contains(&pod_netns), "{namespaces}");
        let out = sh(&[
            "ip", "netns", "exec", &node, "busybox", "wget", "-qO-", "-T", "1", &url,
        ]);
        assert!(!out.status.success(), "still answering after deletion");
    }
}

#[test]
fn a_container_that_cannot_start_says_why_and_backs_off() {
    let f = fakes();
    *f.runtime.run_error.lock().expect("lock") =
        Some("exec: \"/bin/nope\": stat /bin/nope: no such file or directory".to_string());
    let p = pod("Always");
    let uid = p["metadata"]["uid"].as_str().expect("uid").to_string();
    let s = synced(
        f.syncer
            .sync(&p, t(0))
            .expect("a start error is not a sync error"),
    );
    let c = &s["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff", "{s}");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/bin/nope")),
        "{c}"
    );
    assert_eq!(c["lastState"]["terminated"]["reason"], "StartError");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 128);
    assert!(
        f.syncer
            .take_events(&uid)
            .iter()
            .any(|e| e.reason == "Failed" && e.message.contains("/bin/nope"))
    );
    // Back-off: no new attempt before 10 s; the attempt after it succeeds and clears it.
    let runs = |f: &Fakes| {
        f.runtime
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Run { .. }))
            .count()
    };
    assert_eq!(runs(&f), 1);
    synced(f.syncer.sync(&p, t(5)).expect("sync"));
    assert_eq!(runs(&f), 1);
    *f.runtime.run_error.lock().expect("lock") = None;
    let s = synced(f.syncer.sync(&p, t(11)).expect("sync"));
    assert_eq!(runs(&f), 2);
    assert_eq!(s["phase"], "Running", "{s}");
    assert_eq!(s["containerStatuses"][0]["restartCount"], 1);
    assert!(s["containerStatuses"][0]["state"]["running"].is_object());
}
