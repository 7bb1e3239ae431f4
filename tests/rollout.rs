//! Rollout commands as commits: in-place manifest edits, the git and directory writers, and
//! `tend scale|rollout|label` against a real `tend serve`.

mod common;

use common::{Repos, Serve, git, xgp_web};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tend::api::{Kind, ObjectKey};
use tend::manifest::edit::{EditError, apply_edit};
use tend::source::write::{DirWriter, Edit, GitWriter, SourceWriter};

fn web() -> ObjectKey {
    ObjectKey::new(Kind::Deployment, "default", "web")
}

const WEB: &str = r#"# the web tier
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    note: 'keep me'
spec:
  # how many
  replicas: 3 # three
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: nginx:1.25 # pinned
          ports:
            - containerPort: 80
  revisionHistoryLimit: 5
"#;

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n";

fn changed_lines(a: &str, b: &str) -> Vec<(String, String)> {
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect()
}

#[test]
fn scale_keeps_quotes_comments_and_other_documents() {
    let text = format!("{SVC}---\n{WEB}---\n{SVC}");
    assert!(WEB.contains("note: 'keep me'"));
    let out = apply_edit(&text, &web(), &Edit::SetReplicas(4)).unwrap();
    assert_eq!(
        out,
        text.replace("replicas: 3 # three", "replicas: 4 # three")
    );
}

#[test]
fn replicas_inserted_when_absent_and_crlf_kept() {
    let text = xgp_web(2, "nginx").replace("  replicas: 2\n", "");
    let key = ObjectKey::new(Kind::Deployment, "default", "xgp-web");
    let out = apply_edit(&text, &key, &Edit::SetReplicas(4)).unwrap();
    assert_eq!(
        out,
        xgp_web(4, "nginx"),
        "legacy extensions/v1beta1 document"
    );

    let crlf = WEB.replace('\n', "\r\n");
    let out = apply_edit(&crlf, &web(), &Edit::SetPaused(true)).unwrap();
    assert!(
        out.contains("spec:\r\n  paused: true\r\n  # how many\r\n"),
        "{out}"
    );
    let back = apply_edit(&out, &web(), &Edit::SetPaused(false)).unwrap();
    assert_eq!(back, crlf);
    // Already resumed: nothing to change.
    assert_eq!(
        apply_edit(&crlf, &web(), &Edit::SetPaused(false)).unwrap(),
        crlf
    );
}

#[test]
fn template_replaced_at_its_indentation_only_when_different() {
    let mut template = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.24", "ports": [{"containerPort": 80}]}]}
    });
    let out = apply_edit(WEB, &web(), &Edit::SetTemplate(template.clone())).unwrap();
    let changes = changed_lines(WEB, &out);
    assert_eq!(
        changes,
        vec![(
            "          image: nginx:1.25 # pinned".to_string(),
            "          image: nginx:1.24".to_string()
        )],
        "{out}"
    );
    assert!(out.starts_with("# the web tier\n") && out.ends_with("  revisionHistoryLimit: 5\n"));
    // The same template (even with defaults filled in) changes nothing.
    template["spec"]["containers"][0]["image"] = json!("nginx:1.25");
    template["spec"]["restartPolicy"] = json!("Always");
    assert_eq!(
        apply_edit(WEB, &web(), &Edit::SetTemplate(template)).unwrap(),
        WEB
    );
}

#[test]
fn flow_style_and_missing_objects_are_clear_errors() {
    let flow = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 1, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: nginx}]}}}\n";
    let err = apply_edit(flow, &web(), &Edit::SetReplicas(2)).unwrap_err();
    assert!(matches!(err, EditError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("edit the file by hand"), "{err}");
    let other = ObjectKey::new(Kind::Deployment, "default", "api");
    let err = apply_edit(WEB, &other, &Edit::SetReplicas(2)).unwrap_err();
    assert!(matches!(err, EditError::NotFound { .. }), "{err}");
}

fn git_out(dir: &Path, args: &[&str]) -> String {
    git(dir, args)
}

/// A repository with a work tree holding `app/web.yaml`.
fn work_repo() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    git(
        tmp.path(),
        &["init", "-q", "-b", "main", work.to_str().unwrap()],
    );
    std::fs::create_dir_all(work.join("app")).unwrap();
    std::fs::write(work.join("app/web.yaml"), WEB).unwrap();
    std::fs::write(work.join("README"), "hi\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    (tmp, work)
}

/// The repository's git config names the author; `tend <tend@localhost>` when it names nobody.
fn expected_author(repo: &Path) -> String {
    let config = |key: &str| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["config", key])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match (config("user.name"), config("user.email")) {
        (Some(name), Some(email)) => format!("{name} <{email}>"),
        _ => "tend <tend@localhost>".to_string(),
    }
}

#[test]
fn git_writer_on_a_work_tree_refuses_dirty_and_checks_out() {
    let (tmp, work) = work_repo();
    let writer = GitWriter::open(
        work.to_str().unwrap(),
        None,
        Some("app"),
        &tmp.path().join("s"),
    )
    .unwrap();
    std::fs::write(work.join("README"), "edited\n").unwrap();
    let err = writer
        .edit(
            &web(),
            "web.yaml",
            &Edit::SetReplicas(5),
            "Scale deployment/web to 5 replicas",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("uncommitted changes; commit or stash them first"),
        "{err}"
    );
    git(&work, &["checkout", "--", "README"]);
    // Untracked files are not the user's pending edits of tracked files.
    std::fs::write(work.join("notes.txt"), "scratch\n").unwrap();

    let written = writer
        .edit(
            &web(),
            "web.yaml",
            &Edit::SetReplicas(5),
            "Scale deployment/web to 5 replicas",
        )
        .unwrap();
    assert_eq!(written.revision, git_out(&work, &["rev-parse", "HEAD"]));
    assert_eq!(
        git_out(&work, &["log", "-1", "--format=%s|%an <%ae>"]),
        format!(
            "Scale deployment/web to 5 replicas|{}",
            expected_author(&work)
        )
    );
    assert_eq!(
        git_out(&work, &["diff", "--name-only", "HEAD~1", "HEAD"]),
        "app/web.yaml"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("app/web.yaml")).unwrap(),
        WEB.replace("replicas: 3 # three", "replicas: 5 # three")
    );
    assert_eq!(
        git_out(&work, &["status", "--porcelain", "--untracked-files=no"]),
        ""
    );
}

#[test]
fn git_writer_on_a_bare_repository_moves_only_the_ref() {
    let (tmp, work) = work_repo();
    let bare = tmp.path().join("bare.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let writer = GitWriter::open(bare.to_str().unwrap(), Some("main"), None, tmp.path()).unwrap();
    let before = git_out(&bare, &["rev-parse", "main"]);
    let written = writer
        .edit(
            &web(),
            "app/web.yaml",
            &Edit::SetPaused(true),
            "Pause rollout of deployment/web",
        )
        .unwrap();
    assert_eq!(git_out(&bare, &["rev-parse", "main~1"]), before);
    assert_eq!(git_out(&bare, &["rev-parse", "main"]), written.revision);
    let shown = git_out(&bare, &["show", "main:app/web.yaml"]);
    assert!(shown.contains("spec:\n  paused: true\n"), "{shown}");
    // The branch moved since (a push by someone): the next edit builds on it.
    git(&work, &["commit", "-q", "--allow-empty", "-m", "elsewhere"]);
    git(
        &work,
        &["push", "-q", "--force", bare.to_str().unwrap(), "main"],
    );
    let moved = git_out(&bare, &["rev-parse", "main"]);
    let written = writer
        .edit(
            &web(),
            "app/web.yaml",
            &Edit::SetReplicas(7),
            "Scale deployment/web to 7 replicas",
        )
        .unwrap();
    assert_eq!(git_out(&bare, &["rev-parse", "main~1"]), moved);
    assert_eq!(git_out(&bare, &["rev-parse", "main"]), written.revision);
    let err = writer
        .edit(&web(), "app/missing.yaml", &Edit::SetReplicas(1), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("app/missing.yaml not found"), "{err}");
}

#[test]
fn dir_writer_rewrites_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("web.yaml"), WEB).unwrap();
    let writer = DirWriter::open(tmp.path());
    let written = writer
        .edit(&web(), "web.yaml", &Edit::SetReplicas(2), "Scale")
        .unwrap();
    assert!(
        written.revision.starts_with("sha256:"),
        "{}",
        written.revision
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("web.yaml")).unwrap(),
        WEB.replace("replicas: 3 # three", "replicas: 2 # three")
    );
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert_eq!(names.len(), 1, "no temporary file left");
}

fn wait_for(serve: &Serve, path: &str, pointer: &str, want: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = serve.get(path);
        if code == 200 && v.pointer(pointer) == Some(want) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} {pointer} never became {want}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(serve: &Serve, path: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}{path}", serve.url))
        .bearer_auth(&serve.token)
        .json(body)
        .send()
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().unwrap_or(Value::Null))
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn commands_commit_to_the_served_repository() {
    let repos = Repos::new();
    repos.write("xgp-web.yaml", &xgp_web(3, "nginx:1.23"));
    let first = repos.commit("v1");
    repos.push();
    let serve = Serve::start(&["--repo", repos.bare.to_str().unwrap()], &repos.state());
    serve.wait_revision(&first);
    let deploy = "/apis/apps/v1/namespaces/default/deployments/xgp-web";

    let out = stdout(&serve.cli(&["scale", "deployment/xgp-web", "--replicas", "4"]));
    let head = git(&repos.bare, &["rev-parse", "main"]);
    assert_eq!(out, format!("deployment.apps/xgp-web scaled\n{head}\n"));
    let diff = git(&repos.bare, &["diff", "-U0", "main~1", "main"]);
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(changed, vec!["-  replicas: 3", "+  replicas: 4"]);
    assert_eq!(
        git(&repos.bare, &["log", "-1", "--format=%s"]),
        "Scale deployment/xgp-web to 4 replicas"
    );
    wait_for(&serve, deploy, "/spec/replicas", &json!(4));

    stdout(&serve.cli(&["rollout", "pause", "deploy/xgp-web"]));
    wait_for(&serve, deploy, "/spec/paused", &json!(true));
    stdout(&serve.cli(&["rollout", "resume", "deployment", "xgp-web"]));
    let head = git(&repos.bare, &["rev-parse", "main"]);
    let d = wait_for(
        &serve,
        deploy,
        "/metadata/annotations/tend.dev~1source-revision",
        &json!(head),
    );
    assert_eq!(d.pointer("/spec/paused"), None);
    assert_eq!(
        git(&repos.bare, &["log", "-2", "--format=%s"]),
        "Resume rollout of deployment/xgp-web\nPause rollout of deployment/xgp-web"
    );

    // A new image makes revision 2 (the controllers run; no node runs the pods, which
    // does not matter for history). Scale, pause and resume made no revision.
    let work = repos.tmp.path().join("work");
    git(&work, &["pull", "-q", "origin", "main"]);
    repos.write("xgp-web.yaml", &xgp_web(4, "nginx:1.24"));
    let second = repos.commit("v2");
    repos.push();
    serve.wait_revision(&second);
    let rs_list = "/apis/apps/v1/namespaces/default/replicasets";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while serve.get_ok(rs_list)["items"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "two ReplicaSets");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let history = stdout(&serve.cli(&["rollout", "history", "deployment/xgp-web"]));
    assert_eq!(
        history,
        format!(
            "deployment.apps/xgp-web\nREVISION  CHANGE-CAUSE\n1         {} v1\n2         {} v2\n",
            &first[..7],
            &second[..7]
        )
    );
    let one = stdout(&serve.cli(&[
        "rollout",
        "history",
        "deployment/xgp-web",
        "--revision",
        "1",
    ]));
    assert!(
        one.starts_with("deployment.apps/xgp-web with revision #1\nPod Template:\n"),
        "{one}"
    );
    assert!(one.contains("nginx:1.23"), "{one}");

    let out = stdout(&serve.cli(&[
        "rollout",
        "undo",
        "deployment/xgp-web",
        "--to-revision",
        "1",
    ]));
    let head = git(&repos.bare, &["rev-parse", "main"]);
    assert!(out.ends_with(&format!("{head}\n")), "{out}");
    assert_eq!(
        git(&repos.bare, &["log", "-1", "--format=%s"]),
        format!(
            "Roll back deployment/xgp-web to revision 1 ({})",
            &first[..7]
        )
    );
    let file = git(&repos.bare, &["show", "main:xgp-web.yaml"]);
    assert_eq!(
        file,
        xgp_web(4, "nginx:1.23").trim_end(),
        "only the image line changes"
    );
    wait_for(
        &serve,
        deploy,
        "/spec/template/spec/containers/0/image",
        &json!("nginx:1.23"),
    );

    let (code, v) = post(
        &serve,
        "/apis/tend.dev/v1/namespaces/default/deployments/xgp-web/rollback",
        &json!({"toRevision": 9}),
    );
    assert_eq!(code, 404, "{v}");
    let (code, _) = post(
        &serve,
        "/apis/tend.dev/v1/namespaces/default/deployments/nope/scale",
        &json!({"replicas": 1}),
    );
    assert_eq!(code, 404);
}

#[test]
fn pure_decisions_of_the_commands() {
    use tend::cli::label::{LabelChange, apply_changes, parse_change};
    use tend::cli::rollout::{RolloutState, rollout_state};
    use tend::server::rollout::{RollbackError, rollback_target};

    let rs = |rev: i64| {
        json!({"metadata": {"annotations": {"deployment.kubernetes.io/revision": rev.to_string(),
            "kubernetes.io/change-cause": format!("c{rev} subject")}},
            "spec": {"template": {"metadata": {"labels": {"app": "a", "pod-template-hash": "h"}}}}})
    };
    let (one, two, three) = (rs(1), rs(2), rs(3));
    let owned = vec![&one, &two, &three];
    let previous = rollback_target("a", &owned, 0).unwrap();
    assert_eq!(
        (previous.revision, previous.commit.as_deref()),
        (2, Some("c2"))
    );
    assert_eq!(
        previous.template,
        json!({"metadata": {"labels": {"app": "a"}}})
    );
    assert_eq!(
        rollback_target("a", &owned, 7),
        Err(RollbackError::NoSuchRevision {
            deployment: "a".into(),
            revision: 7
        })
    );

    let d = |updated: i64, replicas: i64, available: i64| {
        json!({"metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3},
            "status": {"observedGeneration": 2, "updatedReplicas": updated, "replicas": replicas, "availableReplicas": available}})
    };
    let waiting = |s: &str| {
        RolloutState::Waiting(format!(
            "Waiting for deployment \"web\" rollout to finish: {s}..."
        ))
    };
    assert_eq!(
        rollout_state(&d(1, 4, 3)),
        waiting("1 out of 3 new replicas have been updated")
    );
    assert_eq!(
        rollout_state(&d(3, 4, 3)),
        waiting("1 old replicas are pending termination")
    );
    assert_eq!(
        rollout_state(&d(3, 3, 2)),
        waiting("2 of 3 updated replicas are available")
    );
    assert_eq!(
        rollout_state(&d(3, 3, 3)),
        RolloutState::Complete("deployment \"web\" successfully rolled out".into())
    );
    let mut failed = d(1, 3, 2);
    failed["status"]["conditions"] =
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
    assert_eq!(
        rollout_state(&failed),
        RolloutState::Failed("deployment \"web\" exceeded its progress deadline".into())
    );

    assert_eq!(
        parse_change("disk-").unwrap(),
        LabelChange::Remove("disk".into())
    );
    let labels = json!({"disk": "hdd"}).as_object().cloned().unwrap();
    let set = [parse_change("disk=ssd").unwrap()];
    assert!(apply_changes(&labels, &set, false).is_err());
    assert_eq!(apply_changes(&labels, &set, true).unwrap()["disk"], "ssd");
}

#[test]
fn a_rollback_keeps_defaults_the_file_spells_out() {
    let file = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: web:v3\n        imagePullPolicy: IfNotPresent\n        ports:\n        - containerPort: 80\n";
    // What a ReplicaSet stores: the defaulted template of revision 1.
    let target = tend::manifest::edit::defaulted_template(&json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:v1", "ports": [{"containerPort": 80}]}]}
    }));
    let out = apply_edit(file, &web(), &Edit::SetTemplate(target)).unwrap();
    assert_eq!(
        changed_lines(file, &out),
        vec![(
            "        image: web:v3".to_string(),
            "        image: web:v1".to_string()
        )],
        "{out}"
    );
}
