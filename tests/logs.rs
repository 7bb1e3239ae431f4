//! `tend logs` end to end: the agent's log endpoint over a real socket with log files on
//! disk (signatures, tail, previous, follow), the pod sync keeping one previous log, the API
//! streaming a followed log from an agent, then `tend serve` with simulated nodes that serve
//! logs, read through the CLI.

mod common;

use common::{Repos, Serve, SimNode};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tend::agent::logs::{self, ContainerLogs, LogServer, LogSource, PodDirectory, files, sign};
use tend::agent::network::ipam::IpamStore;
use tend::agent::network::{NodeNetwork, PodNetwork, RecordingNetOps};
use tend::agent::pods::{FakeImages, PodSyncer, SyncOutcome, container_id};
use tend::agent::runtime::runc::{
    ContainerRuntime, ContainerState, ExecOutput, RecordingRuntime, RuntimeError, Signal,
};

const KEY: &[u8] = b"the-join-token";

/// Log files in a directory; "running" as the test says.
struct DirLogs {
    dir: PathBuf,
    running: AtomicBool,
}

impl ContainerLogs for DirLogs {
    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }
    fn running(&self, _id: &str) -> bool {
        self.running.load(Ordering::SeqCst)
    }
}

/// An agent's log endpoint on 127.0.0.1, serving one pod `shop/web-1` (uid `u1`, containers
/// `web` and `sidecar`); stopped when dropped.
struct Endpoint {
    base: String,
    logs: Arc<DirLogs>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = Arc::new(DirLogs {
            dir: dir.path().to_path_buf(),
            running: AtomicBool::new(true),
        });
        let pods = PodDirectory::default();
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"},
            "spec": {"containers": [{"name": "web"}, {"name": "sidecar"}]}});
        pods.replace([&pod]);
        let listener = logs::bind([127, 0, 0, 1].into(), 0).await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = Arc::new(LogServer {
            node: "n1".into(),
            key: KEY.to_vec(),
            pods,
            source: LogSource::Files(logs.clone()),
            poll: Duration::from_millis(20),
        });
        let task = tokio::spawn(logs::serve(listener, server));
        Endpoint {
            base,
            logs,
            _dir: dir,
            task,
            http: reqwest::Client::new(),
        }
    }

    fn write(&self, id: &str, text: &str) {
        std::fs::write(self.logs.log_path(id), text).expect("write log");
    }

    /// GET `path` with `authorization` (None: no header).
    async fn get_with(&self, path: &str, authorization: Option<String>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("send");
        let code = resp.status().as_u16();
        (code, resp.text().await.expect("body"))
    }

    /// GET `path`, signed as the control plane signs.
    async fn get(&self, path: &str) -> (u16, String) {
        let header = sign::sign(KEY, "GET", path, sign::unix_now());
        self.get_with(path, Some(header)).await
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn agent_endpoint_serves_signed_requests_for_its_pods() {
    let e = Endpoint::start().await;
    let lines: String = (1..=5).map(|i| format!("line {i}\n")).collect();
    e.write("u1-web", &lines);

    let (code, body) = e.get("/containerLogs/shop/web-1/web").await;
    assert_eq!((code, body.as_str()), (200, lines.as_str()));
    let (code, body) = e.get("/containerLogs/shop/web-1/web?tailLines=2").await;
    assert_eq!((code, body.as_str()), (200, "line 4\nline 5\n"));
    let (code, body) = e.get("/containerLogs/shop/web-1/web?tailLines=0").await;
    assert_eq!((code, body.as_str()), (200, ""));

    // No previous instance yet; after a restart's rotation, there is one.
    let (code, body) = e.get("/containerLogs/shop/web-1/web?previous=true").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        message(&body),
        "previous terminated container \"web\" in pod \"web-1\" not found"
    );
    assert!(files::rotate(&e.logs.log_path("u1-web")).expect("rotate"));
    e.write("u1-web", "second instance\n");
    let (code, body) = e.get("/containerLogs/shop/web-1/web?previous=true").await;
    assert_eq!((code, body.as_str()), (200, lines.as_str()));
    let (code, body) = e.get("/containerLogs/shop/web-1/web").await;
    assert_eq!((code, body.as_str()), (200, "second instance\n"));

    // A container without a log yet, an unknown container, an unknown pod.
    let (code, body) = e.get("/containerLogs/shop/web-1/sidecar").await;
    assert_eq!(code, 400, "{body}");
    assert!(message(&body).contains("is waiting to start"), "{body}");
    let (code, body) = e.get("/containerLogs/shop/web-1/db").await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(message(&body), "container db is not valid for pod web-1");
    let (code, body) = e.get("/containerLogs/default/web-1/web").await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(message(&body), "pod default/web-1 is not bound to node n1");
    let (code, body) = e.get("/containerLogs/shop/web-1/web?tailLines=x").await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn agent_endpoint_refuses_unsigned_and_misused_signatures() {
    let e = Endpoint::start().await;
    e.write("u1-web", "secret\n");
    let path = "/containerLogs/shop/web-1/web";
    let now = sign::unix_now();

    let (code, body) = e.get_with(path, None).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        message(&body).starts_with("missing Authorization header"),
        "{body}"
    );
    // The join token itself, as a bearer token, is not how the control plane asks.
    let (code, _) = e.get_with(path, Some("Bearer the-join-token".into())).await;
    assert_eq!(code, 401);
    // Another key.
    let (code, body) = e
        .get_with(path, Some(sign::sign(b"other", "GET", path, now)))
        .await;
    assert_eq!(code, 401);
    assert!(message(&body).contains("does not match"), "{body}");
    // A signature of another path (another container's log) replayed on this one.
    let other = sign::sign(KEY, "GET", "/containerLogs/shop/web-1/sidecar", now);
    let (code, _) = e.get_with(path, Some(other)).await;
    assert_eq!(code, 401);
    // Too old.
    let (code, body) = e
        .get_with(path, Some(sign::sign(KEY, "GET", path, now - 120)))
        .await;
    assert_eq!(code, 401);
    assert!(
        message(&body).contains("away from the node's clock"),
        "{body}"
    );
    // The same request, signed now, goes through.
    let (code, body) = e.get(path).await;
    assert_eq!((code, body.as_str()), (200, "secret\n"));
}

#[tokio::test]
async fn following_streams_new_lines_until_the_container_stops() {
    let e = Endpoint::start().await;
    e.write("u1-web", "old 1\nold 2\n");
    let path = "/containerLogs/shop/web-1/web?tailLines=1&follow=true";
    let header = sign::sign(KEY, "GET", path, sign::unix_now());
    let mut resp = e
        .http
        .get(format!("{}{path}", e.base))
        .header("Authorization", header)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut appended = false;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a chunk in time")
            .expect("read");
        let Some(chunk) = chunk else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen == "old 2\n" && !appended {
            // New lines reach the open stream; then the container stops and the stream ends.
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(e.logs.log_path("u1-web"))
                .expect("open");
            f.write_all(b"new 3\n").expect("append");
            appended = true;
        }
        if seen.ends_with("new 3\n") {
            e.logs.running.store(false, Ordering::SeqCst);
        }
        assert!(Instant::now() < deadline, "follow did not end: {seen:?}");
    }
    assert_eq!(seen, "old 2\nnew 3\n");
}

// ---- through the control plane ----

fn pod(name: &str, node: Option<&str>, containers: &[&str], annotation: Option<&str>) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": containers.iter().map(|c| json!({"name": c, "image": "busybox"})).collect::<Vec<_>>()}});
    match node {
        Some(n) => pod["spec"]["nodeName"] = json!(n),
        // Fits no node: stays unscheduled.
        None => pod["spec"]["nodeSelector"] = json!({"tend.dev/nowhere": "true"}),
    }
    if let Some(a) = annotation {
        pod["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/default-container": a});
    }
    pod
}

fn create(serve: &Serve, path: &str, object: &Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}{path}", serve.url))
        .bearer_auth(&serve.token)
        .json(object)
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text());
}

/// `tend logs ARGS` with `token`: (exit code, stdout, stderr).
fn logs_cli(serve: &Serve, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(common::TEND)
        .args(["--server", &serve.url, "--token", token, "logs"])
        .args(args)
        .env_remove("TEND_TOKEN")
        .output()
        .expect("tend logs runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn tend_logs_reads_through_the_control_plane_from_the_pods_node() {
    let repos = Repos::new();
    repos.write("README.md", "nothing to deploy\n");
    repos.commit("empty");
    let serve = Serve::start(&["--repo", repos.work.to_str().unwrap()], &repos.state());
    let _node = SimNode::start(&serve, "node-a", "");
    let node = serve.wait_for("/api/v1/nodes/node-a", "node-a's log port", |n| {
        n.pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .is_some_and(|p| p > 0)
    });
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.1");
    let pods = "/api/v1/namespaces/default/pods";
    create(&serve, pods, &pod("solo", Some("node-a"), &["web"], None));
    create(&serve, pods, &pod("duo", Some("node-a"), &["a", "b"], None));
    create(
        &serve,
        pods,
        &pod("picked", Some("node-a"), &["a", "b"], Some("b")),
    );
    create(&serve, pods, &pod("pending", None, &["web"], None));
    for name in ["solo", "duo", "picked"] {
        serve.wait_for(&format!("{pods}/{name}"), "pod running", |p| {
            p.pointer("/status/phase") == Some(&json!("Running"))
        });
    }
    let admin = serve.token.clone();

    let (code, out, err) = logs_cli(&serve, &admin, &["solo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "sim-node node-a pod solo container web\n");
    let (code, out, _) = logs_cli(&serve, &admin, &["pod/solo", "--tail", "1", "-f"]);
    assert_eq!(code, 0);
    assert_eq!(out, "sim-node node-a pod solo container web\n");
    let (code, out, _) = logs_cli(&serve, &admin, &["duo", "-c", "b", "-n", "default"]);
    assert_eq!(code, 0);
    assert_eq!(out, "sim-node node-a pod duo container b\n");
    let (code, out, _) = logs_cli(&serve, &admin, &["picked"]);
    assert_eq!(code, 0);
    assert_eq!(out, "sim-node node-a pod picked container b\n");

    // Errors: one line, exit 2.
    for (args, expected) in [
        (
            &["duo"][..],
            "error: a container name must be specified for pod duo, choose one of: [a b]\n",
        ),
        (
            &["duo", "-c", "zz"][..],
            "error: container zz is not valid for pod duo\n",
        ),
        (&["missing"][..], "error: pods \"missing\" not found\n"),
        (
            &["pending"][..],
            "error: pod pending does not have a host assigned\n",
        ),
        (
            &["solo", "--previous"][..],
            "error: previous terminated container \"web\" in pod \"solo\" not found\n",
        ),
    ] {
        let (code, out, err) = logs_cli(&serve, &admin, args);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (2, "", expected),
            "{args:?}"
        );
    }

    // Only the admin token reads logs: a join token (any node's) may not; no token is 401.
    let join = std::fs::read_to_string(serve.state.join("join.token")).expect("join token");
    let (code, _, err) = logs_cli(&serve, join.trim(), &["solo"]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: the join token may not read pod logs\n");
    let http = reqwest::blocking::Client::new();
    let url = format!("{}{pods}/solo/log", serve.url);
    let resp = http.get(&url).bearer_auth(join.trim()).send().expect("get");
    assert_eq!(resp.status().as_u16(), 403);
    let resp = http.get(&url).send().expect("get");
    assert_eq!(resp.status().as_u16(), 401);
    let (code, _, err) = logs_cli(&serve, "not-a-token", &["solo"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: unauthorized: "), "{err}");

    // A node whose agent does not answer: 502 naming the node and its address.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    create(
        &serve,
        "/api/v1/nodes",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost"}, "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": closed}}}}),
    );
    create(&serve, pods, &pod("haunted", Some("ghost"), &["web"], None));
    let resp = http
        .get(format!("{}{pods}/haunted/log", serve.url))
        .bearer_auth(&admin)
        .send()
        .expect("get");
    assert_eq!(resp.status().as_u16(), 502);
    let (code, _, err) = logs_cli(&serve, &admin, &["haunted"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the agent of node ghost at 127.0.0.1:{closed}: "
        )),
        "{err}"
    );
}

// ---- the agent's pod sync keeps one previous log and removes logs with the pod ----

/// The recording runtime, with logs in a directory: each run appends `instance N`, as a
/// container's output would.
struct LoggingRuntime {
    inner: RecordingRuntime,
    dir: PathBuf,
    runs: std::sync::atomic::AtomicU32,
}

impl ContainerRuntime for LoggingRuntime {
    fn run(&self, id: &str, bundle: &std::path::Path) -> Result<u32, RuntimeError> {
        use std::io::Write as _;
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log");
        writeln!(log, "instance {n}").expect("write");
        self.inner.run(id, bundle)
    }
    fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        self.inner.state(id)
    }
    fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.inner.kill(id, signal)
    }
    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.inner.delete(id)
    }
    fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        self.inner.list()
    }
    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.inner.exec(id, argv, timeout)
    }
}

#[test]
fn a_restart_keeps_the_previous_log_and_deletion_removes_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Arc::new(LoggingRuntime {
        inner: RecordingRuntime::default(),
        dir: dir.path().to_path_buf(),
        runs: Default::default(),
    });
    let network = PodNetwork::open(
        RecordingNetOps::default(),
        NodeNetwork {
            pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            peers: Vec::new(),
        },
        IpamStore::new(dir.path().join("ipam.json")),
    )
    .expect("network");
    let mut syncer = PodSyncer::new(
        runtime.clone(),
        network,
        Arc::new(FakeImages::default()),
        dir.path(),
        std::net::Ipv4Addr::new(172, 31, 0, 2),
    );
    syncer.poll = Duration::from_millis(1);
    let t = |s: i64| jiff::Timestamp::from_second(1_700_000_000 + s).expect("time");
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": "u-logs"},
        "spec": {"nodeName": "n1", "restartPolicy": "Always",
                 "containers": [{"name": "web", "image": "web:v1"}]}});
    let id = container_id("u-logs", "web");
    let log = runtime.log_path(&id);
    let previous = files::previous_path(&log);
    let logs = logs::RuntimeLogs(runtime.clone());

    let SyncOutcome::Status(status) = syncer.sync(&p, t(0)).expect("sync") else {
        panic!("deleted")
    };
    p["status"] = status;
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "instance 1\n");
    assert!(!previous.exists());
    assert!(logs.running(&id));

    // Exits, backs off 10 s, starts again: the first instance's log is the previous one.
    runtime.inner.exit(&id, 1);
    assert!(!logs.running(&id));
    let SyncOutcome::Status(status) = syncer.sync(&p, t(1)).expect("sync") else {
        panic!("deleted")
    };
    p["status"] = status;
    let SyncOutcome::Status(status) = syncer.sync(&p, t(13)).expect("sync") else {
        panic!("deleted")
    };
    assert_eq!(status["containerStatuses"][0]["restartCount"], 1);
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "instance 2\n");
    assert_eq!(
        std::fs::read_to_string(&previous).expect("previous"),
        "instance 1\n"
    );

    // The pod goes: both logs with it.
    p["status"] = status;
    p["metadata"]["deletionTimestamp"] = json!(t(20).to_string());
    assert_eq!(syncer.sync(&p, t(20)).expect("sync"), SyncOutcome::Deleted);
    assert!(!log.exists() && !previous.exists());
}

// ---- the API streams a followed log from an agent ----

#[tokio::test]
async fn the_api_streams_a_followed_log_from_the_agent() {
    use tend::server::{self, ApiState, Tokens};
    use tend::store::memory::MemoryStore;
    use tend::store::{Op, Store};

    let e = Endpoint::start().await;
    e.write("u1-sidecar", "first\n");
    // The cluster's join token is the endpoint's key.
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(state.path().join("join.token"), "the-join-token\n").expect("join token");
    let tokens = Tokens::load_or_create(state.path()).expect("tokens");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let port: u16 = e
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    store
        .commit(vec![
            Op::Create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}})),
            Op::Create(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop"},
                "spec": {"nodeName": "n1", "containers": [{"name": "web"}, {"name": "sidecar"}]}})),
        ])
        .expect("create");
    let (refresh, _) = tokio::sync::mpsc::channel(1);
    let api = Arc::new(ApiState {
        store,
        tokens: tokens.clone(),
        webhook_secret: None,
        source_refresh: refresh,
        source_writer: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve(listener, server::router(api), async move {
        let _ = stopped.await;
    }));

    let mut resp = e
        .http
        .get(format!(
            "{base}/api/v1/namespaces/shop/pods/web-1/log?container=sidecar&follow=true"
        ))
        .bearer_auth(&tokens.admin)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("a chunk in time")
        .expect("read")
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen == "first\n" {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(e.logs.log_path("u1-sidecar"))
                .expect("open");
            f.write_all(b"second\n").expect("append");
        }
        if seen.ends_with("second\n") {
            e.logs.running.store(false, Ordering::SeqCst);
        }
        assert!(Instant::now() < deadline, "follow did not end: {seen:?}");
    }
    assert_eq!(seen, "first\nsecond\n");
    let _ = stop.send(());
    let _ = server_task.await;
}
