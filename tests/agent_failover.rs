//! An agent's client given two API servers over one store (two control planes sharing etcd,
//! here sharing a memory store in-process): when the one it uses is stopped, or stops
//! answering without closing its connections (paused, wedged), its watch resumes on the other
//! from the last resourceVersion it saw (no second list), and its writes go there.

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tend::agent::client::{AgentClient, WatchEvent};
use tend::server::{self, ApiState, Tokens};
use tend::store::memory::MemoryStore;
use tend::store::{Op, Store};
use tokio::sync::{mpsc, oneshot, watch};

/// One API server on `store`; `frozen` makes it stop answering (new requests hang, and open
/// responses send nothing more) without closing anything, as a SIGSTOPped process.
struct Api {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    frozen: Arc<AtomicBool>,
}

impl Api {
    async fn start(store: Arc<dyn Store>, tokens: Tokens) -> Api {
        let (refresh, _) = mpsc::channel(1);
        let state = Arc::new(ApiState {
            store,
            tokens,
            webhook_secret: None,
            source_refresh: refresh,
            source_writer: None,
        });
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let router =
            server::router(state).layer(middleware::from_fn(move |req: Request, next: Next| {
                let flag = flag.clone();
                async move { freezable(flag, req, next).await }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, router, async move {
            let _ = stopped.await;
        }));
        Api {
            base,
            stop: Some(stop),
            frozen,
        }
    }

    /// Shuts the server down: its listener closes and open watches end.
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn freezable(frozen: Arc<AtomicBool>, req: Request, next: Next) -> Response {
    if frozen.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream();
    let body = futures_util::stream::unfold(body, move |mut body| {
        let frozen = frozen.clone();
        async move {
            let chunk = body.next().await?;
            if frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Some((chunk, body))
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})
}

async fn create(store: &Arc<dyn Store>, name: &str) {
    store.commit(vec![Op::Create(pod(name))]).expect("create");
}

/// Receives the next event that is not a plain re-send; panics after 30 s.
async fn next_event(events: &mut mpsc::Receiver<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("an event within 30 s")
        .expect("the channel is open")
}

fn name_of(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Applied(o) | WatchEvent::Deleted(o) => {
            o["metadata"]["name"].as_str().unwrap_or("").to_string()
        }
        WatchEvent::Listed(items) => format!("list of {}", items.len()),
    }
}

struct Cluster {
    store: Arc<dyn Store>,
    a: Api,
    b: Api,
    client: Arc<AgentClient>,
    events: mpsc::Receiver<WatchEvent>,
    _shutdown: watch::Sender<bool>,
}

/// Two servers, a client given both (A first) following the pods, and its first list.
async fn cluster() -> Cluster {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let tokens = Tokens::new("a".repeat(64), "j".repeat(64));
    let a = Api::start(store.clone(), tokens.clone()).await;
    let b = Api::start(store.clone(), tokens).await;
    let mut client =
        AgentClient::new(vec![format!("{},{}", a.base, b.base)], "a".repeat(64)).expect("client");
    client.set_watch_timeouts(Duration::from_millis(500), Duration::from_secs(2));
    let client = Arc::new(client);
    let (tx, mut events) = mpsc::channel(16);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let follower = client.clone();
    tokio::spawn(async move { follower.follow("/api/v1/pods", None, tx, shutdown_rx).await });
    // The list, then p1 through the watch: the watch is open (on A, which answered first).
    let first = next_event(&mut events).await;
    assert_eq!(name_of(&first), "list of 0");
    create(&store, "p1").await;
    let second = next_event(&mut events).await;
    assert_eq!(name_of(&second), "p1");
    Cluster {
        store,
        a,
        b,
        client,
        events,
        _shutdown: shutdown,
    }
}

/// After the failover: p2 arrives as a change (resumed, not listed again), and a status
/// write goes through.
async fn carries_on(c: &mut Cluster) {
    create(&c.store, "p2").await;
    let event = next_event(&mut c.events).await;
    assert_eq!(
        name_of(&event),
        "p2",
        "resumed from the last resourceVersion: {event:?}"
    );
    assert!(matches!(event, WatchEvent::Applied(_)));
    let current = c
        .client
        .get_pod("default", "p2")
        .await
        .expect("read through the other server");
    let written = tokio::time::timeout(
        Duration::from_secs(20),
        c.client.put_pod_status(&tend::agent::client::with_status(
            &current,
            json!({"phase": "Running"}),
        )),
    )
    .await
    .expect("the write did not wait on the dead server")
    .expect("status written");
    assert_eq!(written["status"]["phase"], "Running");
    let stored = c
        .store
        .get(&tend::api::ObjectKey::new(
            tend::api::Kind::Pod,
            "default",
            "p2",
        ))
        .expect("get")
        .expect("p2");
    assert_eq!(stored["status"]["phase"], "Running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_resumes_on_the_other_server_when_one_is_stopped() {
    let mut c = cluster().await;
    c.a.stop();
    // A is really gone.
    let gone = reqwest::get(format!("{}/healthz", c.a.base)).await;
    assert!(gone.is_err(), "{gone:?}");
    carries_on(&mut c).await;
    drop(c.b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_leaves_a_server_that_stops_answering() {
    let mut c = cluster().await;
    c.a.frozen.store(true, Ordering::SeqCst);
    carries_on(&mut c).await;
    drop(c.b);
}
