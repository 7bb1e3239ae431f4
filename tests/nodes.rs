//! Nodes: the lifecycle controller fed by hand (pod CIDRs, NotReady, eviction, recovery), the
//! API a node uses (its own credential, fieldSelector), and simulated nodes against a real API.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tend::agent::sim::{self, SimNodeArgs};
use tend::api::{Kind, ObjectKey};
use tend::controller::node::NodeController;
use tend::controller::runtime::{self, Action, Context, FakeClock, Reconciler, SystemClock};
use tend::server::{self, ApiState, Tokens};
use tend::store::memory::MemoryStore;
use tend::store::recording::RecordingStore;
use tend::store::{Op, Store};
use tokio::sync::{mpsc, oneshot, watch};

const T0: &str = "2026-01-01T00:00:00Z";

fn t0() -> jiff::Timestamp {
    T0.parse().expect("time")
}

fn node_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Node, "", name)
}

/// A node whose agent last posted Ready at `heartbeat`.
fn ready_node(name: &str, heartbeat: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"disk": "ssd"}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat, "lastTransitionTime": heartbeat}]}})
}

fn bound_pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "nginx:1"}]},
        "status": {"phase": "Running"}})
}

struct Fixture {
    store: Arc<RecordingStore>,
    clock: Arc<FakeClock>,
    ctx: Context,
}

impl Fixture {
    fn new(inner: Arc<dyn Store>) -> Fixture {
        let store = Arc::new(RecordingStore::new(inner));
        let clock = Arc::new(FakeClock::new(t0()));
        let ctx = Context::new(store.clone(), clock.clone());
        Fixture { store, clock, ctx }
    }

    fn create(&self, object: Value) {
        self.store.commit(vec![Op::Create(object)]).expect("create");
    }

    fn node(&self, name: &str) -> Value {
        self.store.get(&node_key(name)).expect("get").expect("node")
    }

    /// The ops since the last call, events left out.
    fn lines(&self) -> Vec<String> {
        self.store
            .take_lines()
            .into_iter()
            .filter(|l| !l.contains(" Event "))
            .collect()
    }

    fn events(&self) -> Vec<(String, String, String)> {
        let (events, _) = self.store.list(Kind::Event, None).expect("events");
        events
            .iter()
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                (s("/involvedObject/name"), s("/reason"), s("/message"))
            })
            .collect()
    }
}

fn ready_status(node: &Value) -> (String, String) {
    let ready = tend::controller::node::ready_condition(node)
        .cloned()
        .unwrap_or(Value::Null);
    let s = |f: &str| {
        ready
            .get(f)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("status"), s("lastTransitionTime"))
}

fn pod_cidr(node: &Value) -> String {
    node.pointer("/spec/podCIDR")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[test]
fn pod_cidrs_are_lowest_free_kept_per_name_and_rebuilt_on_restart() {
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let f = Fixture::new(inner.clone());
    let nodes = NodeController::new(Duration::from_secs(40), "10.244.0.0/16").expect("ctrl");
    f.create(ready_node("a", T0));
    f.create(ready_node("b", T0));
    for name in ["a", "b"] {
        nodes.reconcile(&node_key(name), &f.ctx).expect("reconcile");
    }
    assert_eq!(
        f.lines(),
        ["create Node a", "create Node b", "put Node a", "put Node b"]
    );
    assert_eq!(pod_cidr(&f.node("a")), "10.244.0.0/24");
    assert_eq!(f.node("a")["spec"]["podCIDRs"], json!(["10.244.0.0/24"]));
    assert_eq!(pod_cidr(&f.node("b")), "10.244.1.0/24");
    assert_eq!(
        f.node("a")["metadata"]["labels"]["disk"],
        "ssd",
        "labels are kept"
    );

    // A node that goes away and comes back gets its CIDR again, even after another node came.
    f.store
        .commit(vec![Op::Delete {
            key: node_key("a"),
            expect_rv: None,
        }])
        .expect("delete");
    f.create(ready_node("c", T0));
    nodes.reconcile(&node_key("c"), &f.ctx).expect("reconcile");
    f.create(ready_node("a", T0));
    nodes.reconcile(&node_key("a"), &f.ctx).expect("reconcile");
    assert_eq!(pod_cidr(&f.node("c")), "10.244.2.0/24");
    assert_eq!(pod_cidr(&f.node("a")), "10.244.0.0/24");
    f.lines();

    // A new controller (a control-plane restart) learns the CIDRs from the stored nodes.
    let restarted = NodeController::new(Duration::from_secs(40), "10.244.0.0/16").expect("ctrl");
    let keys = restarted.initial_keys(&f.ctx).expect("keys");
    assert_eq!(keys.len(), 3);
    for key in &keys {
        restarted.reconcile(key, &f.ctx).expect("reconcile");
    }
    assert_eq!(
        f.lines(),
        Vec::<String>::new(),
        "nothing changes for nodes that have one"
    );
    f.create(ready_node("d", T0));
    restarted
        .reconcile(&node_key("d"), &f.ctx)
        .expect("reconcile");
    assert_eq!(pod_cidr(&f.node("d")), "10.244.3.0/24");
    assert!(NodeController::new(Duration::from_secs(1), "10.244.0.0/25").is_err());
}

#[test]
fn silent_node_goes_not_ready_then_its_pods_are_evicted_then_it_recovers() {
    let f = Fixture::new(Arc::new(MemoryStore::new()));
    let grace = Duration::from_secs(40);
    let nodes = NodeController::new(grace, "10.244.0.0/16").expect("ctrl");
    f.create(ready_node("n1", T0));
    f.create(ready_node("n2", "2026-01-01T00:01:00Z"));
    for p in [
        bound_pod("web-a", "n1"),
        bound_pod("web-b", "n1"),
        bound_pod("web-c", "n2"),
    ] {
        f.create(p);
    }
    let n1 = node_key("n1");
    assert_eq!(
        nodes.reconcile(&n1, &f.ctx).expect("ok"),
        Action::RequeueAfter(grace)
    );
    f.lines();

    // Within the grace: nothing but a requeue at the heartbeat deadline.
    f.clock.advance(Duration::from_secs(39));
    assert_eq!(
        nodes.reconcile(&n1, &f.ctx).expect("ok"),
        Action::RequeueAfter(Duration::from_secs(1))
    );
    assert_eq!(f.lines(), Vec::<String>::new());

    // The heartbeat is stale: Ready=Unknown, and an event.
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        nodes.reconcile(&n1, &f.ctx).expect("ok"),
        Action::RequeueAfter(grace)
    );
    assert_eq!(f.lines(), ["status Node n1"]);
    let node = f.node("n1");
    let ready = tend::controller::node::ready_condition(&node)
        .cloned()
        .expect("ready");
    assert_eq!(ready["status"], "Unknown");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:40Z");
    assert!(f.events().contains(&(
        "n1".into(),
        "NodeNotReady".into(),
        "Node n1 status is now: NodeNotReady".into()
    )));

    // NotReady for less than the grace: the pods stay.
    f.clock.advance(Duration::from_secs(30));
    assert_eq!(
        nodes.reconcile(&n1, &f.ctx).expect("ok"),
        Action::RequeueAfter(Duration::from_secs(10))
    );
    assert_eq!(f.lines(), Vec::<String>::new());

    // NotReady for the grace: its pods (only its pods) are deleted outright.
    f.clock.advance(Duration::from_secs(10));
    assert_eq!(nodes.reconcile(&n1, &f.ctx).expect("ok"), Action::Done);
    assert_eq!(f.lines(), ["delete Pod web-a", "delete Pod web-b"]);
    let evicted: Vec<_> = f
        .events()
        .into_iter()
        .filter(|e| e.1 == "NodeNotReady" && e.0.starts_with("web-"))
        .collect();
    assert_eq!(evicted.len(), 2, "{evicted:?}");
    assert!(evicted[0].2.contains("node n1"), "{evicted:?}");
    assert!(
        f.store
            .get(&ObjectKey::new(Kind::Pod, "default", "web-c"))
            .expect("get")
            .is_some()
    );

    // A pod bound to it later is evicted too (the pod's event enqueues the node).
    f.create(bound_pod("web-d", "n1"));
    let event = f
        .store
        .watch(f.store.current_rv() - 1)
        .expect("watch")
        .try_next()
        .expect("ok")
        .expect("event");
    assert_eq!(nodes.keys_for(&event), std::slice::from_ref(&n1));
    nodes.reconcile(&n1, &f.ctx).expect("ok");
    assert_eq!(f.lines(), ["create Pod web-d", "delete Pod web-d"]);

    // The agent posts again: Ready, with a new transition time, and a NodeReady event.
    let now = "2026-01-01T00:01:30Z";
    f.clock.advance(Duration::from_secs(10));
    let node = f.node("n1");
    let status =
        json!({"conditions": tend::agent::heartbeat_conditions(node.get("status"), true, now)});
    f.store
        .commit(vec![Op::PutStatus {
            key: n1.clone(),
            status,
            expect_rv: None,
        }])
        .expect("heartbeat");
    assert_eq!(
        nodes.reconcile(&n1, &f.ctx).expect("ok"),
        Action::RequeueAfter(grace)
    );
    assert_eq!(
        ready_status(&f.node("n1")),
        ("True".to_string(), now.to_string())
    );
    assert!(f.events().iter().any(|e| e.0 == "n1" && e.1 == "NodeReady"));
}

// ---- the API, over a real socket ----

struct Api {
    base: String,
    tokens: Tokens,
    store: Arc<dyn Store>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    join_file: PathBuf,
    /// Node n1's credential.
    n1: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Api {
    async fn start(store: Arc<dyn Store>) -> Api {
        let dir = tempfile::tempdir().expect("dir");
        let tokens = Tokens::load_or_create(dir.path()).expect("tokens");
        let n1 = tokens.nodes.issue("n1").expect("register n1");
        let (refresh, _) = mpsc::channel(1);
        let state = Arc::new(ApiState {
            store: store.clone(),
            tokens: tokens.clone(),
            webhook_secret: None,
            source_refresh: refresh,
            source_writer: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, server::router(state), async move {
            let _ = stopped.await;
        }));
        Api {
            base,
            tokens,
            store,
            http: reqwest::Client::new(),
            join_file: dir.path().join("join.token"),
            n1,
            _dir: dir,
            stop: Some(stop),
        }
    }

    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(&self.tokens.admin.clone(), method, path, body)
            .await
    }

    /// A request as node n1, with the credential it was issued when it registered.
    async fn as_n1(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(&self.n1.clone(), method, path, body).await
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|o| {
                    o.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_node_lists_watches_and_updates_only_what_its_credential_allows() {
    let api = Api::start(Arc::new(MemoryStore::new())).await;
    for p in [bound_pod("a", "n1"), bound_pod("b", "n2")] {
        api.store.commit(vec![Op::Create(p)]).expect("create");
    }
    let (code, list) = api
        .as_n1(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(names(&list), ["a"]);
    let (_, list) = api
        .admin(
            Method::GET,
            "/api/v1/namespaces/default/pods?fieldSelector=metadata.name!%3Da",
            None,
        )
        .await;
    assert_eq!(names(&list), ["b"]);
    let (code, status) = api
        .as_n1(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1,spec.host%3Dn1",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or("")
            .contains("spec.host"),
        "{status}"
    );
    let (code, _) = api
        .as_n1(
            Method::GET,
            "/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dn1,nonsense",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = api
        .as_n1(Method::GET, "/api/v1/namespaces/default/services", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api.as_n1(Method::GET, "/api/v1/endpoints", None).await;
    assert_eq!(code, StatusCode::OK);

    // A watch with a field selector sees only the node's pods.
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let mut watch = api
        .http
        .get(format!(
            "{}/api/v1/pods?watch=true&resourceVersion={rv}&fieldSelector=spec.nodeName%3Dn1",
            api.base
        ))
        .bearer_auth(&api.n1)
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    api.store
        .commit(vec![Op::Create(bound_pod("c", "n2"))])
        .expect("create");
    api.store
        .commit(vec![Op::Create(bound_pod("d", "n1"))])
        .expect("create");
    let chunk = tokio::time::timeout(Duration::from_secs(5), watch.chunk())
        .await
        .expect("in time")
        .expect("chunk")
        .expect("some");
    let event: Value = serde_json::from_slice(&chunk).expect("json");
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "d");

    // Without the selector, or for another node, listing pods is refused.
    for path in [
        "/api/v1/pods",
        "/api/v1/pods?watch=true",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn2",
    ] {
        let (code, body) = api.as_n1(Method::GET, path, None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    // Another node's pod: neither read, nor status written, nor deleted.
    let (code, b) = api
        .admin(Method::GET, "/api/v1/namespaces/default/pods/b", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .as_n1(Method::GET, "/api/v1/namespaces/default/pods/b", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, body) = api
        .as_n1(
            Method::PUT,
            "/api/v1/namespaces/default/pods/b/status",
            Some(b.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("not bound to it"),
        "{body}"
    );
    let (code, _) = api
        .as_n1(Method::DELETE, "/api/v1/namespaces/default/pods/b", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Pod status and deletion are a node's; creating pods or writing specs is not.
    let (_, pod) = api
        .as_n1(Method::GET, "/api/v1/namespaces/default/pods/a", None)
        .await;
    let mut running = pod.clone();
    running["status"] = json!({"phase": "Running", "podIP": "10.244.0.2"});
    let (code, stored) = api
        .as_n1(
            Method::PUT,
            "/api/v1/namespaces/default/pods/a/status",
            Some(running.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{stored}");
    assert_eq!(stored["status"]["podIP"], "10.244.0.2");
    let (code, _) = api
        .as_n1(
            Method::PUT,
            "/api/v1/namespaces/default/pods/a",
            Some(stored.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = api
        .as_n1(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(bound_pod("e", "n1")),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = api
        .as_n1(Method::GET, "/apis/apps/v1/replicasets", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = api
        .as_n1(Method::DELETE, "/api/v1/namespaces/default/pods/a", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .admin(Method::GET, "/api/v1/namespaces/default/pods/a", None)
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

fn sim_args(servers: Vec<String>, token_file: &Path, name: &str) -> SimNodeArgs {
    let mut args = SimNodeArgs::new(servers, token_file.to_path_buf(), name);
    args.heartbeat = Duration::from_millis(200);
    args.start_delay = Duration::from_millis(50);
    args.labels = "disk=ssd".into();
    args.address = Ipv4Addr::new(127, 0, 0, 9);
    args
}

fn start_sim(
    args: SimNodeArgs,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = watch::channel(false);
    (stop, tokio::spawn(sim::run(args, stopped)))
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|ip| sim::cidr_contains(cidr, ip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_node_runs_pods_then_goes_not_ready_and_loses_them() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = Api::start(store.clone()).await;
    let ctx = Context::new(store.clone(), Arc::new(SystemClock));
    let controller =
        Arc::new(NodeController::new(Duration::from_secs(2), "10.244.0.0/16").expect("ctrl"));
    let (stop_ctrl, ctrl_stopped) = watch::channel(false);
    let ctrl = tokio::spawn(runtime::run(controller, ctx, ctrl_stopped));

    // A node registers through a dead server first (fail-over), then the live one.
    let dead = "http://127.0.0.1:9".to_string();
    let (stop_sim, sim_task) = start_sim(sim_args(
        vec![format!("{dead},{}", api.base)],
        &api.join_file,
        "n1",
    ));
    let node = eventually(10, "node n1 Ready with a pod CIDR", || async {
        let (_, list) = api.admin(Method::GET, "/api/v1/nodes", None).await;
        let node = list["items"].as_array()?.first()?.clone();
        (ready_status(&node).0 == "True" && !pod_cidr(&node).is_empty()).then_some(node)
    })
    .await;
    let cidr = pod_cidr(&node);
    assert_eq!(cidr, "10.244.0.0/24");
    assert_eq!(node["metadata"]["labels"]["disk"], "ssd");
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "tend-sim");
    assert_eq!(
        node["status"]["addresses"][0],
        json!({"type": "InternalIP", "address": "127.0.0.9"})
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");

    for name in ["web-1", "web-2"] {
        let (code, body) = api
            .admin(
                Method::POST,
                "/api/v1/namespaces/default/pods",
                Some(bound_pod(name, "n1")),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let pods = eventually(10, "pods Running and Ready", || async {
        let (_, list) = api
            .admin(Method::GET, "/api/v1/namespaces/default/pods", None)
            .await;
        let items = list["items"].as_array()?.clone();
        let done = items.len() == 2
            && items.iter().all(|p| {
                tend::api::pod::is_ready(p)
                    && p.pointer("/status/containerStatuses/0/state/running")
                        .is_some()
            });
        done.then_some(items)
    })
    .await;
    let ips: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(ips.iter().all(|ip| in_cidr(ip, &cidr)), "{ips:?} in {cidr}");
    assert_ne!(ips[0], ips[1]);
    assert_eq!(pods[0]["status"]["hostIP"], "127.0.0.9");
    assert_eq!(pods[0]["status"]["phase"], "Running");

    // A pod marked for deletion is stopped and deleted by its node.
    let (_, mut doomed) = api
        .admin(Method::GET, "/api/v1/namespaces/default/pods/web-2", None)
        .await;
    doomed["metadata"]["deletionTimestamp"] = json!(tend::api::now_rfc3339());
    let (code, _) = api
        .admin(
            Method::PUT,
            "/api/v1/namespaces/default/pods/web-2",
            Some(doomed),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    eventually(10, "web-2 deleted by its node", || async {
        let (code, _) = api
            .admin(Method::GET, "/api/v1/namespaces/default/pods/web-2", None)
            .await;
        (code == StatusCode::NOT_FOUND).then_some(())
    })
    .await;

    // The node restarts: it adopts web-1 (same IP) and keeps its labels.
    let (_, mut labelled) = api.admin(Method::GET, "/api/v1/nodes/n1", None).await;
    labelled["metadata"]["labels"]["zone"] = json!("a");
    let (code, _) = api
        .admin(Method::PUT, "/api/v1/nodes/n1", Some(labelled))
        .await;
    assert_eq!(code, StatusCode::OK);
    let _ = stop_sim.send(true);
    sim_task.await.expect("join").expect("sim stops cleanly");
    let (stop_sim, sim_task) = start_sim(sim_args(vec![api.base.clone()], &api.join_file, "n1"));
    api.admin(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(bound_pod("web-3", "n1")),
    )
    .await;
    let web3 = eventually(10, "web-3 running after the restart", || async {
        let (_, pod) = api
            .admin(Method::GET, "/api/v1/namespaces/default/pods/web-3", None)
            .await;
        tend::api::pod::is_ready(&pod).then_some(pod)
    })
    .await;
    let (_, web1) = api
        .admin(Method::GET, "/api/v1/namespaces/default/pods/web-1", None)
        .await;
    let web1_ip = web1["status"]["podIP"].as_str().unwrap_or("").to_string();
    assert_eq!(web1_ip, ips[0], "adopted with its IP");
    assert_ne!(web3["status"]["podIP"].as_str(), Some(web1_ip.as_str()));
    let (_, node) = api.admin(Method::GET, "/api/v1/nodes/n1", None).await;
    assert_eq!(
        node["metadata"]["labels"]["zone"], "a",
        "admin labels survive a restart"
    );
    assert_eq!(pod_cidr(&node), cidr);

    // The node stops: NotReady after the 2 s grace, then its pods are evicted after another.
    let _ = stop_sim.send(true);
    sim_task.await.expect("join").expect("sim stops cleanly");
    let stopped_at = Instant::now();
    eventually(10, "node n1 NotReady", || async {
        let (_, node) = api.admin(Method::GET, "/api/v1/nodes/n1", None).await;
        (ready_status(&node).0 == "Unknown").then_some(())
    })
    .await;
    eventually(10, "pods of n1 evicted", || async {
        let (_, list) = api
            .admin(
                Method::GET,
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
                None,
            )
            .await;
        names(&list).is_empty().then_some(())
    })
    .await;
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(3),
        "not before the grace: {:?}",
        stopped_at.elapsed()
    );
    let (_, events) = api
        .admin(Method::GET, "/api/v1/namespaces/default/events", None)
        .await;
    let evicted = events["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["involvedObject"]["kind"] == "Pod" && e["reason"] == "NodeNotReady")
                .count()
        })
        .unwrap_or(0);
    assert_eq!(evicted, 2);
    let _ = stop_ctrl.send(true);
    ctrl.await.expect("controller stops");
}

// ---- a real `tend serve` ----

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Tester",
            "-c",
            "user.email=tester@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(repo: &Path, state: &Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-grace",
            "2",
            "--repo",
        ])
        .arg(repo)
        .arg("--state")
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tend serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "serve printed {line:?}"
    );
    Serve { child, url }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_node_registers_with_a_real_serve_and_runs_a_pod() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    git(
        tmp.path(),
        &["init", "-q", "-b", "main", repo.to_str().expect("utf-8")],
    );
    std::fs::write(
        repo.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n",
    )
    .expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "web service"]);
    let state = tmp.path().join("state");
    let serve = tokio::task::spawn_blocking({
        let (repo, state) = (repo.clone(), state.clone());
        move || start_serve(&repo, &state)
    })
    .await
    .expect("serve");
    let admin = std::fs::read_to_string(state.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_string();
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{}{path}", serve.url))
            .bearer_auth(&admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("send");
            let code = response.status();
            (code, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (stop_sim, sim_task) = start_sim(sim_args(
        vec![serve.url.clone()],
        &state.join("join.token"),
        "sim-1",
    ));
    let node = eventually(20, "sim-1 listed Ready", || async {
        let (_, list) = call(Method::GET, "/api/v1/nodes", None).await;
        let node = list["items"].as_array()?.first()?.clone();
        (ready_status(&node).0 == "True").then_some(node)
    })
    .await;
    assert_eq!(node["metadata"]["name"], "sim-1");

    // serve's node controller gives the node its pod CIDR.
    let node = eventually(20, "sim-1 has a pod CIDR", || async {
        let (_, node) = call(Method::GET, "/api/v1/nodes/sim-1", None).await;
        node["spec"]["podCIDR"].is_string().then_some(node)
    })
    .await;
    let cidr = node["spec"]["podCIDR"].as_str().unwrap_or("").to_string();
    assert_eq!(cidr, "10.244.0.0/24");
    let (code, body) = call(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(bound_pod("web-x", "sim-1")),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let pod = eventually(20, "web-x Ready", || async {
        let (_, pod) = call(Method::GET, "/api/v1/namespaces/default/pods/web-x", None).await;
        tend::api::pod::is_ready(&pod).then_some(pod)
    })
    .await;
    assert!(
        in_cidr(pod["status"]["podIP"].as_str().unwrap_or(""), &cidr),
        "{pod}"
    );
    let _ = stop_sim.send(true);
    sim_task.await.expect("join").expect("sim stops cleanly");
    drop(serve);
}
