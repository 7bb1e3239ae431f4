//! The HTTP API over a real socket: authentication, Status errors, the object round trip,
//! watches, the git webhook, limits, tokens.

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tend::api::{Kind, ObjectKey};
use tend::server::{self, ApiState, Limits, Tokens};
use tend::store::memory::MemoryStore;
use tend::store::redb::RedbStore;
use tend::store::{Committed, Op, Store, StoreError, Watch};
use tokio::sync::{mpsc, oneshot};

struct Server {
    base: String,
    tokens: Tokens,
    refresh: mpsc::Receiver<()>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(
        state_dir: &Path,
        store: Arc<dyn Store>,
        secret: Option<&[u8]>,
        limits: Limits,
    ) -> Server {
        let tokens = Tokens::load_or_create(state_dir).expect("tokens");
        let (refresh_tx, refresh) = mpsc::channel(1);
        let state = Arc::new(ApiState {
            store,
            tokens: tokens.clone(),
            webhook_secret: secret.map(<[u8]>::to_vec),
            source_refresh: refresh_tx,
            source_writer: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let router = server::router_with_limits(state, limits);
        let task = tokio::spawn(server::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Server {
            base,
            tokens,
            refresh,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "server did not stop cleanly"
        );
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.tokens.admin)
    }

    fn join(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.tokens.join)
    }

    /// Registers `node` with the join token: its credential.
    async fn register(&self, node: &str) -> String {
        let response = self
            .join(Method::POST, "/apis/tend.dev/v1/noderegistrations")
            .json(&json!({ "name": node }))
            .send()
            .await
            .expect("send");
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["name"], node);
        body["credential"].as_str().expect("credential").to_string()
    }

    fn as_node(
        &self,
        credential: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(credential)
    }
}

async fn start_default() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        Arc::new(MemoryStore::new()),
        None,
        Limits::default(),
    )
    .await;
    (dir, server)
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json::<Value>().await.expect("a JSON body");
    (status, body)
}

fn assert_status_object(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["metadata"], json!({}), "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn deployment(name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "default", "labels": { "app": app } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": app } },
            "template": {
                "metadata": { "labels": { "app": app } },
                "spec": { "containers": [{ "name": "web", "image": "nginx:1.25" }] }
            }
        }
    })
}

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

use reqwest::Method;

#[tokio::test]
async fn no_token_or_wrong_token_is_401_healthz_is_open() {
    let (_dir, server) = start_default().await;
    let response = server
        .http
        .get(server.url(DEPLOYMENTS))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (_, body) = json_of(response).await;
    assert_status_object(&body, 401, "Unauthorized");

    let response = server
        .http
        .get(server.url(DEPLOYMENTS))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Unknown paths do not tell an anonymous client what exists.
    let response = server
        .http
        .get(server.url("/api/v1/widgets"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("text"), "ok");

    let (status, version) = json_of(
        server
            .admin(Method::GET, "/version")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test]
async fn join_token_may_only_register_and_the_node_writes_only_its_own_node() {
    let (_dir, server) = start_default().await;
    let response = server
        .join(Method::GET, DEPLOYMENTS)
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_status_object(&body, 403, "Forbidden");

    let response = server
        .join(Method::POST, DEPLOYMENTS)
        .json(&deployment("web", "web"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"disk": "ssd"}}});
    let response = server
        .join(Method::POST, "/api/v1/nodes")
        .json(&node)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let n1 = server.register("n1").await;
    let response = server
        .as_node(&n1, Method::POST, "/api/v1/nodes")
        .json(&node)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let other = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}});
    let response = server
        .as_node(&n1, Method::POST, "/api/v1/nodes")
        .json(&other)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (status, got) = json_of(
        server
            .as_node(&n1, Method::GET, "/api/v1/nodes/n1")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["metadata"]["labels"]["disk"], "ssd");
    let mut with_status = got.clone();
    with_status["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    let response = server
        .as_node(&n1, Method::PUT, "/api/v1/nodes/n1/status")
        .json(&with_status)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .as_node(&n1, Method::DELETE, "/api/v1/nodes/n1")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn agents_post_events_that_are_counted_not_piled_up() {
    let (_dir, server) = start_default().await;
    let n1 = server.register("n1").await;
    let event = json!({
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default", "uid": "u1"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container web in pod web-1",
        "type": "Warning",
        "source": {"component": "kubelet", "host": "n1"},
    });
    for _ in 0..3 {
        let response = server
            .as_node(&n1, Method::POST, "/api/v1/namespaces/default/events")
            .json(&event)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let (status, list) = json_of(
        server
            .admin(Method::GET, "/api/v1/namespaces/default/events")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["count"], 3);
    assert_eq!(items[0]["involvedObject"]["name"], "web-1");
    assert_eq!(items[0]["type"], "Warning");
    assert_eq!(items[0]["source"]["component"], "kubelet");
    // An event that names no object is refused with the reason.
    let response = server
        .as_node(&n1, Method::POST, "/api/v1/namespaces/default/events")
        .json(&json!({"reason": "X"}))
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("involvedObject"),
        "{body}"
    );
    // A node still may not read events.
    let response = server
        .as_node(&n1, Method::GET, "/api/v1/namespaces/default/events")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn not_found_is_a_status_object() {
    let (_dir, server) = start_default().await;
    let response = server
        .admin(Method::GET, &format!("{DEPLOYMENTS}/nope"))
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_status_object(&body, 404, "NotFound");

    // A plural under another kind's API group names nothing.
    for path in [
        "/api/v1/namespaces/default/deployments",
        "/apis/apps/v1/namespaces/default/pods",
        "/api/v1/widgets",
    ] {
        let (status, body) =
            json_of(server.admin(Method::GET, path).send().await.expect("send")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_status_object(&body, 404, "NotFound");
    }
    server.stop().await;
}

#[tokio::test]
async fn create_get_list_update_status_delete_round_trip() {
    let (_dir, server) = start_default().await;

    let (status, created) = json_of(
        server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&deployment("web", "web"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["name"], "web");
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    assert!(created["metadata"]["uid"].as_str().is_some());

    let (status, body) = json_of(
        server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&deployment("web", "web"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_status_object(&body, 409, "AlreadyExists");

    let response = server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("api", "api"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);

    // The path's namespace must match the body's.
    let mut elsewhere = deployment("x", "x");
    elsewhere["metadata"]["namespace"] = json!("other");
    let (status, body) = json_of(
        server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&elsewhere)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_status_object(&body, 400, "BadRequest");

    let (status, got) = json_of(
        server
            .admin(Method::GET, &format!("{DEPLOYMENTS}/web"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["spec"]["replicas"], 1);

    let (status, list) = json_of(
        server
            .admin(Method::GET, DEPLOYMENTS)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "DeploymentList");
    assert!(list["metadata"]["resourceVersion"].as_str().is_some());
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));

    let (_, list) = json_of(
        server
            .admin(Method::GET, DEPLOYMENTS)
            .query(&[("labelSelector", "app=api")])
            .send()
            .await
            .expect("send"),
    )
    .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["api"]);

    // All namespaces.
    let (_, all) = json_of(
        server
            .admin(Method::GET, "/apis/apps/v1/deployments")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));

    let (status, body) = json_of(
        server
            .admin(Method::GET, DEPLOYMENTS)
            .query(&[("labelSelector", "app in (x")])
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_status_object(&body, 400, "BadRequest");

    // Update guarded by resourceVersion.
    let mut update = got.clone();
    update["spec"]["replicas"] = json!(3);
    let (status, updated) = json_of(
        server
            .admin(Method::PUT, &format!("{DEPLOYMENTS}/web"))
            .json(&update)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["replicas"], 3);
    assert_ne!(updated["metadata"]["resourceVersion"], json!(rv1));

    let (status, body) = json_of(
        server
            .admin(Method::PUT, &format!("{DEPLOYMENTS}/web"))
            .json(&update)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "a stale resourceVersion");
    assert_status_object(&body, 409, "Conflict");

    let mut renamed = updated.clone();
    renamed["metadata"]["name"] = json!("other");
    let response = server
        .admin(Method::PUT, &format!("{DEPLOYMENTS}/web"))
        .json(&renamed)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Status is written apart from spec.
    let mut with_status = updated.clone();
    with_status["status"] = json!({"replicas": 3, "readyReplicas": 2});
    with_status["spec"]["replicas"] = json!(9);
    let (status, after) = json_of(
        server
            .admin(Method::PUT, &format!("{DEPLOYMENTS}/web/status"))
            .json(&with_status)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["status"]["readyReplicas"], 2);
    assert_eq!(
        after["spec"]["replicas"], 3,
        "a status write leaves spec alone"
    );
    let (_, got) = json_of(
        server
            .admin(Method::GET, &format!("{DEPLOYMENTS}/web/status"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(got["status"]["readyReplicas"], 2);

    let response = server
        .admin(Method::DELETE, &format!("{DEPLOYMENTS}/web"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .admin(Method::GET, &format!("{DEPLOYMENTS}/web"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = server
        .admin(Method::DELETE, &format!("{DEPLOYMENTS}/web"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // POST on an all-namespaces collection has no namespace to create in.
    let response = server
        .admin(Method::POST, "/apis/apps/v1/deployments")
        .json(&deployment("z", "z"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}

/// Reads newline-delimited JSON events from a watch response until `count` have arrived.
async fn read_events(
    response: &mut reqwest::Response,
    count: usize,
    skip_bookmarks: bool,
) -> Vec<Value> {
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .expect("read")
            .expect("the stream stays open");
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: Value = serde_json::from_slice(&line).expect("a JSON line");
            if !(skip_bookmarks && event["type"] == "BOOKMARK") {
                events.push(event);
            }
        }
    }
    events
}

#[tokio::test]
async fn watch_from_resource_version_sees_later_events_in_order() {
    let (_dir, server) = start_default().await;
    server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("before", "web"))
        .send()
        .await
        .expect("send");
    let (_, list) = json_of(
        server
            .admin(Method::GET, DEPLOYMENTS)
            .send()
            .await
            .expect("send"),
    )
    .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();

    let mut watch = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[
            ("watch", "true"),
            ("resourceVersion", rv.as_str()),
            ("labelSelector", "app=web"),
        ])
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);

    // Noise the watch must not show: another label, another namespace, another kind.
    server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("other", "blog"))
        .send()
        .await
        .expect("send");
    let mut elsewhere = deployment("web", "web");
    elsewhere["metadata"]["namespace"] = json!("staging");
    server
        .admin(Method::POST, "/apis/apps/v1/namespaces/staging/deployments")
        .json(&elsewhere)
        .send()
        .await
        .expect("send");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"ports": [{"port": 80}]}});
    server
        .admin(Method::POST, "/api/v1/namespaces/default/services")
        .json(&svc)
        .send()
        .await
        .expect("send");

    let (_, created) = json_of(
        server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&deployment("web", "web"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    let mut update = created.clone();
    update["spec"]["replicas"] = json!(2);
    let response = server
        .admin(Method::PUT, &format!("{DEPLOYMENTS}/web"))
        .json(&update)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .admin(Method::DELETE, &format!("{DEPLOYMENTS}/web"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);

    let events = read_events(&mut watch, 3, true).await;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["object"]["metadata"]["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("ADDED", "web"), ("MODIFIED", "web"), ("DELETED", "web")]
    );
    assert_eq!(events[1]["object"]["spec"]["replicas"], 2);
    let rvs: Vec<u64> = events
        .iter()
        .filter_map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()?
                .parse()
                .ok()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn watch_without_resource_version_starts_with_current_objects() {
    let (_dir, server) = start_default().await;
    server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("a", "web"))
        .send()
        .await
        .expect("send");
    server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("b", "web"))
        .send()
        .await
        .expect("send");
    let mut watch = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[("watch", "1")])
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&deployment("c", "web"))
        .send()
        .await
        .expect("send");
    let events = read_events(&mut watch, 3, true).await;
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e["object"]["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(events.iter().all(|e| e["type"] == "ADDED"));
    drop(watch);
    server.stop().await;
}

#[tokio::test]
async fn watches_end_on_timeout_and_on_shutdown() {
    let (_dir, server) = start_default().await;
    let watch = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[("watch", "true"), ("timeoutSeconds", "1")])
        .send()
        .await
        .expect("watch");
    let body = tokio::time::timeout(Duration::from_secs(5), watch.text())
        .await
        .expect("ends after timeoutSeconds");
    assert_eq!(body.expect("body"), "");

    // An open watch does not hold the server up when it shuts down.
    let watch = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[("watch", "true")])
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), StatusCode::OK);
    server.stop().await;
    drop(watch);
}

#[tokio::test]
async fn watch_slots_are_bounded_per_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_watches_per_client: 1,
        ..Limits::default()
    };
    let server = Server::start(dir.path(), Arc::new(MemoryStore::new()), None, limits).await;
    let first = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[("watch", "true")])
        .send()
        .await
        .expect("watch");
    assert_eq!(first.status(), StatusCode::OK);
    let (status, body) = json_of(
        server
            .admin(Method::GET, DEPLOYMENTS)
            .query(&[("watch", "true")])
            .send()
            .await
            .expect("watch"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_status_object(&body, 429, "TooManyRequests");
    drop(first);
    // The slot comes back once the first watch's connection is gone.
    let mut freed = false;
    for _ in 0..50 {
        let again = server
            .admin(Method::GET, DEPLOYMENTS)
            .query(&[("watch", "true"), ("timeoutSeconds", "1")])
            .send()
            .await;
        if again.is_ok_and(|r| r.status() == StatusCode::OK) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed);
    server.stop().await;
}

#[tokio::test]
async fn request_rate_is_bounded_per_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        rate_per_second: 1.0,
        rate_burst: 3.0,
        ..Limits::default()
    };
    let server = Server::start(dir.path(), Arc::new(MemoryStore::new()), None, limits).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(
            server
                .admin(Method::GET, DEPLOYMENTS)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    server.stop().await;
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn git_webhook_needs_a_good_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(
        dir.path(),
        Arc::new(MemoryStore::new()),
        Some(b"hook-secret"),
        Limits::default(),
    )
    .await;
    let body = br#"{"ref":"refs/heads/main"}"#;

    let response = server
        .http
        .post(server.url("/api/v1/hooks/git"))
        .header("X-Hub-Signature-256", sign(b"wrong-secret", body))
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    let (status, status_body) = json_of(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_status_object(&status_body, 401, "Unauthorized");
    let response = server
        .http
        .post(server.url("/api/v1/hooks/git"))
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "no signature");
    assert!(server.refresh.try_recv().is_err());

    let response = server
        .http
        .post(server.url("/api/v1/hooks/git"))
        .header("X-Hub-Signature-256", sign(b"hook-secret", body))
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let refreshed = tokio::time::timeout(Duration::from_secs(2), server.refresh.recv()).await;
    assert_eq!(refreshed.ok().flatten(), Some(()));
    server.stop().await;

    // Without a secret the hook does not exist.
    let (_dir, server) = start_default().await;
    let response = server
        .http
        .post(server.url("/api/v1/hooks/git"))
        .header("X-Hub-Signature-256", sign(b"hook-secret", body))
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_4_mib_are_413() {
    let (_dir, server) = start_default().await;
    let mut big = deployment("big", "big");
    big["metadata"]["annotations"] = json!({ "filler": "x".repeat(4 * 1024 * 1024) });
    let response = server
        .admin(Method::POST, DEPLOYMENTS)
        .json(&big)
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_status_object(&body, 413, "RequestEntityTooLarge");
    let response = server
        .admin(Method::GET, &format!("{DEPLOYMENTS}/big"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_private_files_reused_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first = Server::start(&state, Arc::clone(&store), None, Limits::default()).await;
    let admin = first.tokens.admin.clone();
    let join = first.tokens.join.clone();
    first.stop().await;
    for name in ["admin.token", "join.token"] {
        let mode = std::fs::metadata(state.join(name))
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        let text = std::fs::read_to_string(state.join(name)).expect("read");
        assert_eq!(text.trim().len(), 64, "32 bytes, hex");
    }
    assert_eq!(
        std::fs::read_to_string(state.join("admin.token"))
            .expect("read")
            .trim(),
        admin
    );

    let second = Server::start(&state, store, None, Limits::default()).await;
    assert_eq!(second.tokens.admin, admin);
    assert_eq!(second.tokens.join, join);
    let response = second
        .http
        .get(second.url(DEPLOYMENTS))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    second.stop().await;
}

#[tokio::test]
async fn watch_from_a_resource_version_the_log_no_longer_holds_is_410() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(MemoryStore::with_watch_limits(
        tend::store::watch::WatchLimits::events(2),
    ));
    let server = Server::start(dir.path(), store, None, Limits::default()).await;
    for name in ["a", "b", "c", "d", "e"] {
        let response = server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&deployment(name, "web"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let response = server
        .admin(Method::GET, DEPLOYMENTS)
        .query(&[("watch", "true"), ("resourceVersion", "1")])
        .send()
        .await
        .expect("watch");
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::GONE);
    assert_status_object(&body, 410, "Expired");
    server.stop().await;
}

/// A store whose lists take `delay`: a stand-in for a slow disk.
struct SlowStore {
    inner: MemoryStore,
    delay: Duration,
}

impl Store for SlowStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        std::thread::sleep(self.delay);
        self.inner.list(kind, namespace)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        self.inner.commit(ops)
    }
    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }
}

#[tokio::test]
async fn slow_requests_time_out_and_requests_in_flight_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SlowStore {
        inner: MemoryStore::new(),
        delay: Duration::from_millis(1500),
    });
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        max_in_flight: 1,
        ..Limits::default()
    };
    let server = Server::start(dir.path(), store, None, limits).await;
    let slow = server.admin(Method::GET, DEPLOYMENTS).send();
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.admin(Method::GET, DEPLOYMENTS).send().await
    };
    let (slow, second) = tokio::join!(slow, second);
    let (status, body) = json_of(slow.expect("send")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_status_object(&body, 504, "Timeout");
    let (status, body) = json_of(second.expect("send")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_status_object(&body, 429, "TooManyRequests");
    // Quick requests still go through.
    let response = server
        .admin(Method::GET, &format!("{DEPLOYMENTS}/x"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn objects_survive_a_restart_on_the_redb_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.redb");
    {
        let store = Arc::new(RedbStore::open(&db).expect("open"));
        let server = Server::start(dir.path(), store, None, Limits::default()).await;
        let response = server
            .admin(Method::POST, DEPLOYMENTS)
            .json(&deployment("web", "web"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::CREATED);
        server.stop().await;
    }
    let store = Arc::new(RedbStore::open(&db).expect("reopen"));
    let server = Server::start(dir.path(), store, None, Limits::default()).await;
    let (status, got) = json_of(
        server
            .admin(Method::GET, &format!("{DEPLOYMENTS}/web"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["metadata"]["labels"]["app"], "web");
    server.stop().await;
}
