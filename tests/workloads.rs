//! End to end, issue 3: the seed tutorials' kubectl workflows driven by commits, with a real
//! `tend serve`, real git, the CLI, and simulated nodes speaking the agents' API.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const PODS: &str = "/api/v1/namespaces/default/pods";
const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments/xgp-web";

fn running_pods(serve: &Serve) -> Vec<Value> {
    items(&serve.get_ok(PODS))
        .into_iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

fn rollout_complete(d: &Value, replicas: u64, image: &str) -> bool {
    let s = &d["status"];
    d["spec"]["template"]["spec"]["containers"][0]["image"] == image
        && s["observedGeneration"] == d["metadata"]["generation"]
        && s["updatedReplicas"] == replicas
        && s["availableReplicas"] == replicas
        && s["replicas"] == replicas
}

/// Waits until `n` nodes report Ready=True.
fn wait_ready_nodes(serve: &Serve, n: usize) {
    serve.wait_for("/api/v1/nodes", "Ready nodes", |list| {
        let ready = items(list)
            .iter()
            .filter(|node| {
                node.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count();
        ready == n
    });
}

fn history(serve: &Serve) -> Vec<(u64, String)> {
    let out = serve.cli_ok(&["rollout", "history", "deployment/xgp-web"]);
    out.lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| {
            let (rev, cause) = l.trim().split_once(char::is_whitespace)?;
            Some((rev.parse().ok()?, cause.trim().to_string()))
        })
        .collect()
}

#[test]
fn seed_lab_by_commits_on_labelled_nodes() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    repos.write("xgp-svc.yaml", XGP_SVC);
    let v1 = repos.commit("v1");
    let serve = Serve::start(
        &["--repo", repos.work.to_str().unwrap(), "--node-grace", "3"],
        &repos.state(),
    );
    let mut nodes: Vec<SimNode> = ["node01", "node02", "node03"]
        .iter()
        .map(|n| SimNode::start(&serve, n, ""))
        .collect();
    wait_ready_nodes(&serve, 3);
    assert_eq!(phase(&serve.wait_revision(&v1)), "Applied");

    // Nothing fits until a node has disk=ssd; then all 3 go there.
    let pending = serve.wait_for(PODS, "3 pending pods", |l| items(l).len() == 3);
    assert!(
        items(&pending)
            .iter()
            .all(|p| p.pointer("/spec/nodeName").is_none())
    );
    let events = serve.wait_for(
        "/api/v1/namespaces/default/events",
        "FailedScheduling",
        |l| {
            l.to_string()
                .contains("0/3 nodes are available: 3 node(s) didn't match node selector")
        },
    );
    assert!(events.to_string().contains("FailedScheduling"));
    serve.cli_ok(&["label", "nodes", "node01", "disk=ssd"]);
    serve.wait_for(DEPLOY, "v1 rolled out", |d| {
        rollout_complete(d, 3, "web:v1")
    });
    let pods = running_pods(&serve);
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter().all(|p| p["spec"]["nodeName"] == "node01"),
        "{pods:?}"
    );
    assert!(pods.iter().all(|p| {
        p["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.244."))
    }));
    let rs_name = pods[0]["metadata"]["ownerReferences"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rs_name.starts_with("xgp-web-"));
    assert!(
        pods[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{rs_name}-"))
    );
    let out = serve.cli(&[
        "rollout",
        "status",
        "deployment/xgp-web",
        "--timeout",
        "10s",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully rolled out"));
    // Labels set with the CLI survive a restart of the node's agent, which adopts its pods.
    nodes.remove(0).stop();
    nodes.push(SimNode::start(&serve, "node01", ""));
    std::thread::sleep(Duration::from_millis(700));
    let node = serve.get_ok("/api/v1/nodes/node01");
    assert_eq!(node["metadata"]["labels"]["disk"], "ssd");
    assert_eq!(running_pods(&serve).len(), 3);

    // Scale is a commit.
    let out = serve.cli_ok(&["scale", "deployment/xgp-web", "--replicas", "4"]);
    assert!(out.contains("scaled"), "{out}");
    assert!(
        git(&repos.work, &["log", "-1", "--format=%s"]).contains("Scale deployment/xgp-web to 4")
    );
    serve.wait_for(DEPLOY, "4 replicas", |d| rollout_complete(d, 4, "web:v1"));

    // v2 then v3: history 1,2,3 with change-causes.
    repos.write("xgp.yaml", &xgp_web(4, "web:v2"));
    let v2 = repos.commit("Update xgp-web to v2");
    serve.wait_for(DEPLOY, "v2 rolled out", |d| {
        rollout_complete(d, 4, "web:v2")
    });
    repos.write("xgp.yaml", &xgp_web(4, "web:v3"));
    let v3 = repos.commit("Update xgp-web to v3");
    serve.wait_for(DEPLOY, "v3 rolled out", |d| {
        rollout_complete(d, 4, "web:v3")
    });
    let h = history(&serve);
    assert_eq!(
        h,
        vec![
            (1, format!("{} v1", &v1[..7])),
            (2, format!("{} Update xgp-web to v2", &v2[..7])),
            (3, format!("{} Update xgp-web to v3", &v3[..7])),
        ]
    );

    // Undo to revision 1 is a commit; history becomes 2,3,4 and v1's ReplicaSet is reused.
    let rs_before = items(&serve.get_ok(RS)).len();
    let out = serve.cli_ok(&[
        "rollout",
        "undo",
        "deployment/xgp-web",
        "--to-revision",
        "1",
    ]);
    let subject = git(&repos.work, &["log", "-1", "--format=%s"]);
    assert!(
        subject.starts_with("Roll back deployment/xgp-web to revision 1"),
        "{subject}"
    );
    assert_eq!(
        out,
        format!("{}\n", git(&repos.work, &["rev-parse", "HEAD"])),
        "stdout is the new commit id alone"
    );
    serve.wait_for(DEPLOY, "back on v1", |d| rollout_complete(d, 4, "web:v1"));
    let revisions: Vec<u64> = history(&serve).iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions, vec![2, 3, 4]);
    assert_eq!(
        items(&serve.get_ok(RS)).len(),
        rs_before,
        "no new ReplicaSet for a rollback"
    );

    // `git revert` of the rollback commit goes back to v3.
    git(&repos.work, &["revert", "--no-edit", "HEAD"]);
    serve.wait_for(DEPLOY, "v3 again", |d| rollout_complete(d, 4, "web:v3"));
    let revisions: Vec<u64> = history(&serve).iter().map(|(r, _)| *r).collect();
    assert_eq!(revisions, vec![2, 4, 5]);
}

#[test]
fn pods_of_a_lost_node_are_replaced_elsewhere_after_the_grace() {
    let repos = Repos::new();
    repos.write("README.md", "nothing to deploy yet\n");
    repos.commit("empty");
    let serve = Serve::start(
        &["--repo", repos.work.to_str().unwrap(), "--node-grace", "2"],
        &repos.state(),
    );
    let a = SimNode::start(&serve, "node-a", "");
    let _b = SimNode::start(&serve, "node-b", "");
    let _c = SimNode::start(&serve, "node-c", "");
    // Deploy once all three nodes are Ready, so that spreading has three to choose from.
    wait_ready_nodes(&serve, 3);
    let spread = xgp_web(3, "web:v1").replace("      nodeSelector:\n        disk: ssd\n", "");
    repos.write("xgp.yaml", &spread);
    let v1 = repos.commit("v1");
    assert_eq!(phase(&serve.wait_revision(&v1)), "Applied");
    serve.wait_for(DEPLOY, "rolled out", |d| rollout_complete(d, 3, "web:v1"));
    let nodes: std::collections::BTreeSet<String> = running_pods(&serve)
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes.len(), 3, "spread over the three nodes: {nodes:?}");

    a.stop();
    serve.wait_for("/api/v1/nodes/node-a", "node-a NotReady", |n| {
        n.pointer("/status/conditions")
            .is_some_and(|c| c.to_string().contains("\"Unknown\""))
    });
    serve.wait_for(PODS, "replacement", |l| {
        let pods: Vec<&Value> = items_ref(l);
        pods.len() == 3
            && pods
                .iter()
                .all(|p| p["spec"]["nodeName"] != "node-a" && p["status"]["phase"] == "Running")
    });
    std::thread::sleep(Duration::from_millis(100));
    let d = serve.get_ok(DEPLOY);
    assert!(rollout_complete(&d, 3, "web:v1"), "{d}");
}

fn items_ref(list: &Value) -> Vec<&Value> {
    list.get("items")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// xgp-web with a progress deadline, optionally auto-reverting, and a nodeSelector that the
/// given version asks for (`disk: ssd` exists; `disk: none` matches no node).
fn guarded_web(image: &str, disk: &str, auto_revert: bool) -> String {
    let annotation = if auto_revert {
        "  annotations:\n    tend.dev/auto-revert: \"true\"\n"
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: xgp-web\n{annotation}spec:\n  replicas: 2\n  progressDeadlineSeconds: 2\n  selector:\n    matchLabels:\n      app: xgp-server\n  template:\n    metadata:\n      labels:\n        app: xgp-server\n    spec:\n      nodeSelector:\n        disk: {disk}\n      containers:\n      - name: web\n        image: {image}\n"
    )
}

#[test]
fn a_stuck_rollout_fails_its_status_and_auto_reverts_with_a_commit() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &guarded_web("web:v1", "ssd", false));
    let v1 = repos.commit("v1");
    let serve = Serve::start(&["--repo", repos.work.to_str().unwrap()], &repos.state());
    let _node = SimNode::start(&serve, "node01", "disk=ssd");
    assert_eq!(phase(&serve.wait_revision(&v1)), "Applied");
    serve.wait_for(DEPLOY, "v1 rolled out", |d| {
        rollout_complete(d, 2, "web:v1")
    });

    // v2 asks for a node that does not exist: the rollout stalls past its deadline.
    repos.write("xgp.yaml", &guarded_web("web:v2", "none", false));
    repos.commit("v2 on a disk no node has");
    let out = serve.cli(&[
        "rollout",
        "status",
        "deployment/xgp-web",
        "--timeout",
        "20s",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
    let d = serve.get_ok(DEPLOY);
    assert!(
        d["status"]["conditions"]
            .to_string()
            .contains("ProgressDeadlineExceeded"),
        "{d}"
    );
    assert_eq!(
        d["status"]["availableReplicas"], 2,
        "the old pods keep serving"
    );

    // With auto-revert, the same stall makes a revert commit restoring v1's template.
    repos.write("xgp.yaml", &guarded_web("web:v3", "none", true));
    let v3 = repos.commit("v3 on a disk no node has, with auto-revert");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let subject = loop {
        let subject = git(&repos.work, &["log", "-1", "--format=%s"]);
        if subject.starts_with("Auto-revert") {
            break subject;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no auto-revert commit; last is {subject:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        subject
            .starts_with("Auto-revert deployment/xgp-web to revision 1: ProgressDeadlineExceeded"),
        "{subject}"
    );
    assert_eq!(
        git(&repos.work, &["rev-parse", "HEAD~1"]),
        v3,
        "the revert sits on top of the bad commit"
    );
    let file = std::fs::read_to_string(repos.work.join("xgp.yaml")).unwrap();
    assert!(
        file.contains("image: web:v1") && file.contains("disk: ssd"),
        "{file}"
    );
    assert!(
        file.contains("tend.dev/auto-revert"),
        "only the template is reverted: {file}"
    );
    serve.wait_for(DEPLOY, "back on v1", |d| rollout_complete(d, 2, "web:v1"));
}

#[test]
fn scale_on_a_remote_source_pushes_the_commit() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    let v1 = repos.commit("v1");
    repos.push();
    let url = format!("file://{}", repos.bare.display());
    let serve = Serve::start(&["--repo", &url, "--interval", "1h"], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&v1)), "Applied");
    let out = serve.cli_ok(&["scale", "deployment/xgp-web", "--replicas", "5"]);
    let pushed = git(&repos.bare, &["rev-parse", "main"]);
    assert_ne!(pushed, v1, "the commit reached the remote");
    assert!(out.contains(&pushed), "{out}");
    assert_eq!(
        git(&repos.bare, &["log", "-1", "--format=%s"]),
        "Scale deployment/xgp-web to 5 replicas"
    );
    serve.wait_for(DEPLOY, "5 replicas", |d| d["spec"]["replicas"] == 5);
}
