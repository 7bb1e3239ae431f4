//! The API's bounds against a real server over real sockets: a client sending its request
//! head or body byte by byte (slow loris) or nothing at all is cut off while others are
//! served; open connections are capped; open watches are capped per client (identity and
//! address, so nodes sharing the join token each get their own cap); bodies over the limit
//! are refused. The short bounds run in-process (the server `tend serve` runs, with bounds
//! of 1 s); the defaults are checked once against the `tend serve` binary.

mod common;

use common::{Repos, Serve};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tend::server::{self, ApiState, Limits, Tokens};
use tend::store::memory::MemoryStore;
use tokio::sync::{mpsc, oneshot};

/// An in-process API server on a real socket, with `limits` on both the router and the
/// connections.
struct Server {
    addr: SocketAddr,
    tokens: Tokens,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _refresh: mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::load_or_create(dir.path()).expect("tokens");
        let (refresh_tx, refresh) = mpsc::channel(1);
        let state = Arc::new(ApiState {
            store: Arc::new(MemoryStore::new()),
            tokens: tokens.clone(),
            webhook_secret: None,
            source_refresh: refresh_tx,
            source_writer: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let router = server::router_with_limits(state, limits.clone());
        let task = tokio::spawn(async move {
            server::serve_with_limits(listener, router, &limits, async move {
                let _ = stopped.await;
            })
            .await
        });
        Server {
            addr,
            tokens,
            stop: Some(stop),
            task,
            _refresh: refresh,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "server did not stop cleanly"
        );
    }
}

/// A quick request from another connection answers while a slow client is being held.
async fn healthz_answers(url: &str) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("healthz while a slow client holds a connection");
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "healthz took {:?} while a slow client was connected",
        started.elapsed()
    );
}

/// Writes `head` then `dribble` one byte per 100 ms (in a thread, blocking sockets); returns
/// what the server answered and how long until it closed the connection or answered. Stops
/// dribbling after `give_up`.
fn slow_client(
    addr: SocketAddr,
    head: Vec<u8>,
    dribble: Vec<u8>,
    give_up: Duration,
) -> std::thread::JoinHandle<(String, Duration, bool)> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut closed = false;
        if !head.is_empty() && stream.write_all(&head).is_err() {
            return (String::new(), started.elapsed(), true);
        }
        let mut next = dribble.iter();
        while started.elapsed() < give_up {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // A whole answer (head and a Status body) ends the wait.
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
            if let Some(byte) = next.next()
                && stream.write_all(&[*byte]).is_err()
            {
                closed = true;
                break;
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
            closed,
        )
    })
}

fn short_bounds() -> Limits {
    Limits {
        request_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_byte_by_byte_is_cut_off() {
    let server = Server::start(short_bounds()).await;
    // Headers that never end: 200 bytes at 10 bytes a second would take 20 s.
    let dribble = "X-Slow: "
        .bytes()
        .chain(std::iter::repeat_n(b'a', 200))
        .collect();
    let slow = slow_client(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
        dribble,
        Duration::from_secs(20),
    );
    healthz_answers(&server.url("/healthz")).await;
    let (answer, took, closed) = tokio::task::spawn_blocking(move || slow.join().expect("thread"))
        .await
        .expect("join");
    assert!(
        closed || answer.starts_with("HTTP/1.1 408"),
        "the slow head was answered {answer:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "a head dribbled for {took:?} before the server cut it off (bound: 1 s)"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = Server::start(short_bounds()).await;
    let silent = slow_client(server.addr, Vec::new(), Vec::new(), Duration::from_secs(20));
    healthz_answers(&server.url("/healthz")).await;
    let (answer, took, closed) =
        tokio::task::spawn_blocking(move || silent.join().expect("thread"))
            .await
            .expect("join");
    assert!(closed, "a silent connection got {answer:?} and stayed open");
    assert!(
        took < Duration::from_secs(8),
        "a silent connection stayed open {took:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_byte_by_byte_is_cut_off_with_a_504() {
    let server = Server::start(short_bounds()).await;
    let head = format!(
        "PUT /api/v1/namespaces/default/pods/p/status HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 400\r\n\r\n",
        server.tokens.admin
    );
    let slow = slow_client(
        server.addr,
        head.into_bytes(),
        vec![b' '; 400],
        Duration::from_secs(20),
    );
    healthz_answers(&server.url("/healthz")).await;
    let (answer, took, closed) = tokio::task::spawn_blocking(move || slow.join().expect("thread"))
        .await
        .expect("join");
    assert!(
        answer.starts_with("HTTP/1.1 504"),
        "a dribbled body got {answer:?} (closed: {closed})"
    );
    assert!(answer.contains("\"reason\":\"Timeout\""), "{answer}");
    assert!(
        took < Duration::from_secs(8),
        "a body dribbled for {took:?} before the 504 (bound: 1 s)"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let server = Server::start(Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    // Give the server the time to accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = server.url("/healthz");
    let third = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while 2 (the cap) were open"
    );
    drop(idle);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a connection closed")
        .expect("join")
        .expect("request");
    assert_eq!(status, 200);
    server.stop().await;
}

/// A reqwest client whose connections come from `ip` (any 127.0.0.0/8 address is local).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .build()
        .expect("client")
}

async fn open_watch(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u16, Option<reqwest::Response>, String) {
    let response = http
        .get(url)
        .bearer_auth(token)
        .query(&[("watch", "true")])
        .send()
        .await
        .expect("watch request");
    let code = response.status().as_u16();
    if code == 200 {
        (code, Some(response), String::new())
    } else {
        (code, None, response.text().await.unwrap_or_default())
    }
}

/// Against the `tend serve` binary and its default bounds: 64 open watches per client, a
/// 4 MiB body, 10 s to send a request's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tend_serve_caps_watches_per_client_bodies_and_slow_heads() {
    let repos = Repos::new();
    let repos_dir = repos.tmp.path().join("dir");
    std::fs::create_dir_all(&repos_dir).expect("dir");
    let state = repos.state();
    let dir_arg = repos_dir.to_str().expect("utf-8").to_string();
    let serve = tokio::task::spawn_blocking(move || Serve::start(&["--dir", &dir_arg], &state))
        .await
        .expect("serve starts");
    let join = std::fs::read_to_string(serve.state.join("join.token"))
        .expect("join token")
        .trim()
        .to_string();
    // A node (its own credential, registered with the join token) watches Services.
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/apis/tend.dev/v1/noderegistrations", serve.url))
        .bearer_auth(&join)
        .json(&serde_json::json!({"name": "limits-node"}))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("registration answer");
    let join = registered["credential"]
        .as_str()
        .expect("a credential")
        .to_string();
    let pods = format!("{}/api/v1/services", serve.url);

    // One node from 127.0.0.1: 64 watches, then 429.
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let mut held = Vec::new();
    for i in 0..64 {
        let (code, watch, body) = open_watch(&here, &pods, &join).await;
        assert_eq!(code, 200, "watch {i}: {body}");
        held.push(watch);
    }
    let (code, _, body) = open_watch(&here, &pods, &join).await;
    assert_eq!(code, 429, "the 65th watch: {body}");
    assert!(body.contains("TooManyRequests"), "{body}");
    assert!(body.contains("64 open watches from 127.0.0.1"), "{body}");
    // The same credential from another address has its own cap, and so has the admin.
    let there = client_from(Ipv4Addr::new(127, 0, 0, 2));
    let (code, other_node, body) = open_watch(&there, &pods, &join).await;
    assert_eq!(code, 200, "another address: {body}");
    let (code, admin, body) = open_watch(&here, &pods, &serve.token).await;
    assert_eq!(code, 200, "the admin token: {body}");
    // A closed watch gives its slot back.
    held.pop();
    let mut freed = false;
    for _ in 0..50 {
        let (code, watch, _) = open_watch(&here, &pods, &join).await;
        if code == 200 {
            held.push(watch);
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot of a closed watch did not come back");
    drop((held, other_node, admin));

    // A body over 4 MiB.
    let response = here
        .post(format!("{}/api/v1/namespaces/default/pods", serve.url))
        .bearer_auth(&serve.token)
        .header("Content-Type", "application/json")
        .body(vec![b' '; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);

    // A head dribbled for longer than the default 10 s is cut off.
    let addr: SocketAddr = serve
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let dribble = "X-Slow: "
        .bytes()
        .chain(std::iter::repeat_n(b'a', 400))
        .collect();
    let slow = slow_client(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
        dribble,
        Duration::from_secs(40),
    );
    healthz_answers(&format!("{}/healthz", serve.url)).await;
    let (answer, took, closed) = tokio::task::spawn_blocking(move || slow.join().expect("thread"))
        .await
        .expect("join");
    assert!(
        closed || answer.starts_with("HTTP/1.1 408"),
        "the slow head was answered {answer:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "a head dribbled for {took:?} before tend serve cut it off (bound: 10 s)"
    );
    tokio::task::spawn_blocking(move || drop(serve))
        .await
        .expect("stop serve");
}
