//! End to end: `tend serve` over real git repositories and directories, read through the real
//! HTTP API and CLI.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

#[test]
fn push_applies_and_a_bad_commit_is_rejected_whole_then_fixed_and_pruned() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "192.168.1.21:5000/web:v1"));
    repos.write("xgp-svc.yaml", XGP_SVC);
    let first = repos.commit("Deploy xgp-web v1");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());

    let rev = serve.wait_revision(&first);
    assert_eq!(phase(&rev), "Applied", "{rev}");
    assert_eq!(
        rev.pointer("/status/changes/created"),
        Some(&Value::from(2))
    );
    let warnings = rev.pointer("/status/warnings").unwrap().to_string();
    assert!(
        warnings.contains("extensions/v1beta1"),
        "legacy conversion warned: {warnings}"
    );
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "xgp-server");
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "tend"
    );
    assert_eq!(
        d["metadata"]["annotations"]["tend.dev/source-file"],
        "xgp.yaml"
    );
    assert_eq!(d["metadata"]["generation"], 1);
    let short = &first[..7];
    assert_eq!(
        d["metadata"]["annotations"]["kubernetes.io/change-cause"],
        format!("{short} Deploy xgp-web v1")
    );
    let svc = serve.get_ok("/api/v1/namespaces/default/services/xgp-svc");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30123);
    assert!(
        svc["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10."),
        "{svc}"
    );

    // One broken file and one valid change: nothing is applied, both problems are named.
    repos.write("xgp.yaml", &xgp_web(4, "192.168.1.21:5000/web:v1"));
    repos.write("broken.yaml", "kind: Deployment\napiVersion: apps/v1\nmetadata:\nname: broken\nspec:\n  replicas: three\n");
    repos.write(
        "bad-port.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n",
    );
    let bad = repos.commit("Scale to 4 and add broken files");
    repos.push();
    let rev = serve.wait_revision(&bad);
    assert_eq!(phase(&rev), "Rejected", "{rev}");
    let errs = errors(&rev);
    assert!(
        errs.iter().any(|e| e.starts_with("broken.yaml:")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("bad-port.yaml:7")),
        "{errs:?}"
    );
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(d["spec"]["replicas"], 3, "the last good state stays");

    // `describe revision` shows every error.
    let out = serve.cli(&["describe", "revision", &bad]);
    let text = String::from_utf8_lossy(&out.stdout);
    for e in &errs {
        assert!(text.contains(e.as_str()), "describe shows {e}: {text}");
    }

    // The fix applies the pending valid change too.
    repos.remove("broken.yaml");
    repos.remove("bad-port.yaml");
    let fix = repos.commit("Remove broken files");
    repos.push();
    assert_eq!(phase(&serve.wait_revision(&fix)), "Applied");
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["metadata"]["generation"], 2);

    // A removed file is pruned.
    repos.remove("xgp-svc.yaml");
    let prune = repos.commit("Remove the service");
    repos.push();
    let rev = serve.wait_revision(&prune);
    assert_eq!(
        rev.pointer("/status/changes/pruned"),
        Some(&Value::from(1)),
        "{rev}"
    );
    let (code, status) = serve.get("/api/v1/namespaces/default/services/xgp-svc");
    assert_eq!(code, 404);
    assert_eq!(status["kind"], "Status");

    // Every commit is a revision, listed through the CLI.
    let out = serve.cli(&["get", "revisions"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [&first, &bad, &fix, &prune] {
        assert!(text.contains(&id[..12]), "{id} listed: {text}");
    }
    assert!(
        text.contains("Rejected") && text.contains("Applied"),
        "{text}"
    );
}

#[test]
fn several_commits_at_once_apply_the_newest_and_supersede_the_rest() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    let first = repos.commit("v1");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");

    repos.write("xgp.yaml", &xgp_web(3, "web:v2"));
    let v2 = repos.commit("v2");
    repos.write("xgp.yaml", &xgp_web(3, "web:v3"));
    let v3 = repos.commit("v3");
    repos.write("xgp.yaml", &xgp_web(5, "web:v3"));
    let v4 = repos.commit("scale to 5");
    repos.push();
    assert_eq!(phase(&serve.wait_revision(&v4)), "Applied");
    assert_eq!(phase(&serve.wait_revision(&v2)), "Superseded");
    assert_eq!(phase(&serve.wait_revision(&v3)), "Superseded");
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v3"
    );
    let list = serve.get_ok("/apis/tend.dev/v1/revisions");
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
}

#[test]
fn restart_keeps_objects_revisions_and_allocations() {
    let repos = Repos::new();
    repos.write("xgp-svc.yaml", XGP_SVC);
    repos.write(
        "other.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\nspec:\n  type: NodePort\n  selector:\n    app: other\n  ports:\n  - port: 8080\n",
    );
    let first = repos.commit("services");
    repos.push();
    let state = repos.state();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &state);
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    let before = serve.get_ok("/api/v1/namespaces/default/services/other");
    let revisions_before = serve.get_ok("/apis/tend.dev/v1/revisions")["items"].clone();
    let token = serve.token.clone();
    serve.kill(); // SIGKILL

    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &state);
    assert_eq!(serve.token, token, "tokens are kept");
    // Let the restarted controller look at the source again.
    std::thread::sleep(Duration::from_millis(500));
    let after = serve.get_ok("/api/v1/namespaces/default/services/other");
    assert_eq!(after["spec"]["clusterIP"], before["spec"]["clusterIP"]);
    assert_eq!(
        after["spec"]["ports"][0]["nodePort"],
        before["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "nothing re-applied"
    );
    assert_eq!(
        serve.get_ok("/apis/tend.dev/v1/revisions")["items"],
        revisions_before
    );

    // A new Service after the restart does not get a taken address or port.
    repos.write(
        "third.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: third\nspec:\n  type: NodePort\n  selector:\n    app: third\n  ports:\n  - port: 8080\n",
    );
    let next = repos.commit("third service");
    repos.push();
    assert_eq!(phase(&serve.wait_revision(&next)), "Applied");
    let third = serve.get_ok("/api/v1/namespaces/default/services/third");
    assert_ne!(third["spec"]["clusterIP"], before["spec"]["clusterIP"]);
    assert_ne!(
        third["spec"]["ports"][0]["nodePort"],
        before["spec"]["ports"][0]["nodePort"]
    );
    assert_ne!(third["spec"]["ports"][0]["nodePort"], 30123);
}

#[test]
fn clashing_node_port_is_rejected_naming_the_holder() {
    let repos = Repos::new();
    repos.write("a.yaml", XGP_SVC);
    let first = repos.commit("a");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    let ip =
        serve.get_ok("/api/v1/namespaces/default/services/xgp-svc")["spec"]["clusterIP"].clone();
    repos.write(
        "b.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: b\nspec:\n  clusterIP: {}\n  selector:\n    app: b\n  ports:\n  - port: 80\n",
            ip.as_str().unwrap()
        ),
    );
    let clash = repos.commit("b takes a's address");
    repos.push();
    let rev = serve.wait_revision(&clash);
    assert_eq!(phase(&rev), "Rejected");
    let errs = errors(&rev);
    assert!(
        errs.iter().any(|e| e.starts_with("b.yaml:") && e.contains("already allocated to service/xgp-svc")),
        "{errs:?}"
    );
}

#[test]
fn api_needs_a_valid_token() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    repos.commit("v1");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    let http = reqwest::blocking::Client::new();
    let url = format!("{}/apis/apps/v1/namespaces/default/deployments", serve.url);
    let resp = http.get(&url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["code"], 401);
    assert_eq!(
        http.get(&url)
            .bearer_auth("wrong")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&serve.token)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(serve.state.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new(TEND)
        .args([
            "--server",
            &serve.url,
            "--token",
            "wrong",
            "get",
            "deployments",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn diff_exit_codes() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    repos.write("xgp-svc.yaml", XGP_SVC);
    let first = repos.commit("v1");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    let work = repos.work.to_str().unwrap();

    let out = serve.cli(&["diff", "--repo", work]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no change: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = serve.cli(&["diff", "--repo", repos.bare.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "bare: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    repos.write("xgp.yaml", &xgp_web(3, "web:v2"));
    let out = serve.cli(&["diff", "--repo", work]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--- a/deployments/xgp-web"), "{text}");
    let removed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    let added: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .collect();
    assert_eq!(removed.len(), 1, "{text}");
    assert_eq!(added.len(), 1, "{text}");
    assert!(
        removed[0].contains("image: web:v1") && added[0].contains("image: web:v2"),
        "{text}"
    );
    assert!(
        !text.contains("clusterIP"),
        "allocations are not changes: {text}"
    );

    repos.write(
        "broken.yaml",
        "kind: Service\napiVersion: v1\nmetadata: [\n",
    );
    let out = serve.cli(&["diff", "--repo", work]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.yaml:"));
}

#[test]
fn remote_repository_is_fetched_on_a_signed_webhook() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    let first = repos.commit("v1");
    repos.push();
    let secret = repos.tmp.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let url = format!("file://{}", repos.bare.display());
    let serve = Serve::start(
        &[
            "--repo",
            &url,
            "--interval",
            "1h",
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
        &repos.state(),
    );
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    assert!(
        repos.state().join("sources").exists(),
        "cloned under --state"
    );

    repos.write("xgp.yaml", &xgp_web(3, "web:v2"));
    let second = repos.commit("v2");
    repos.push();
    let http = reqwest::blocking::Client::new();
    let body = br#"{"ref":"refs/heads/main"}"#;
    let hook = format!("{}/api/v1/hooks/git", serve.url);
    let bad = http
        .post(&hook)
        .header("X-Hub-Signature-256", "sha256=00")
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let sig = tend::source::webhook::sign(b"s3cret", body);
    let ok = http
        .post(&hook)
        .header("X-Hub-Signature-256", sig)
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 202);
    assert_eq!(phase(&serve.wait_revision(&second)), "Applied");
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v2"
    );
}

#[test]
fn directory_source_applies_settled_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("xgp.yaml"), xgp_web(3, "web:v1")).unwrap();
    let serve = Serve::start(&["--dir", dir.to_str().unwrap()], &tmp.path().join("state"));
    let wait_image = |image: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (code, d) = serve.get("/apis/apps/v1/namespaces/default/deployments/xgp-web");
            if code == 200 && d["spec"]["template"]["spec"]["containers"][0]["image"] == image {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{image} not applied: {d}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_image("web:v1");
    std::fs::write(dir.join("xgp.yaml"), xgp_web(3, "web:v2")).unwrap();
    wait_image("web:v2");
    let revs = serve.get_ok("/apis/tend.dev/v1/revisions");
    let items = revs["items"].as_array().unwrap();
    assert!(items.len() >= 2, "{revs}");
    assert!(items.iter().all(|r| {
        r["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    }));
}

#[test]
fn a_repository_with_a_work_tree_deploys_its_commits_not_its_edits() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(3, "web:v1"));
    let first = repos.commit("v1");
    let serve = Serve::start(&["--repo", repos.work.to_str().unwrap()], &repos.state());
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");

    // An uncommitted edit is not deployed; committing it is.
    repos.write("xgp.yaml", &xgp_web(3, "web:v2"));
    std::thread::sleep(Duration::from_millis(300));
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v1"
    );
    let second = repos.commit("v2");
    assert_eq!(phase(&serve.wait_revision(&second)), "Applied");
    let d = serve.get_ok("/apis/apps/v1/namespaces/default/deployments/xgp-web");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v2"
    );
    assert_eq!(d["metadata"]["generation"], 2);
}

/// `--event-ttl`, as kube-apiserver's: an Event is deleted that long after it last happened
/// (the Deployment's "Scaled up" here, which happens once); a TTL that is not a duration is
/// refused at start, naming the flag.
#[test]
fn events_go_after_the_event_ttl() {
    let repos = Repos::new();
    repos.write("xgp.yaml", &xgp_web(1, "192.168.1.21:5000/web:v1"));
    let first = repos.commit("Deploy xgp-web v1");
    repos.push();
    let serve = Serve::start(
        &["--repo", repos.bare.to_str().unwrap(), "--event-ttl", "2s"],
        &repos.state(),
    );
    assert_eq!(phase(&serve.wait_revision(&first)), "Applied");
    const EVENTS: &str = "/api/v1/namespaces/default/events";
    let scaled = |l: &Value| {
        l["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| {
                e["reason"] == "ScalingReplicaSet" && e["involvedObject"]["name"] == "xgp-web"
            })
        })
    };
    serve.wait_for(EVENTS, "the Deployment's ScalingReplicaSet event", scaled);
    serve.wait_for(EVENTS, "that event to expire", |l| !scaled(l));

    let out = std::process::Command::new(TEND)
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(repos.state().with_extension("other"))
        .args([
            "--repo",
            repos.bare.to_str().unwrap(),
            "--event-ttl",
            "an hour",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--event-ttl"), "{stderr}");
}
