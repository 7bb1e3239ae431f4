//! A real etcd for tests (Debian's `etcd-server`): started on free loopback ports with a data
//! directory of its own, so tests can run in parallel; killed and removed on drop, also when
//! the test fails. It can be killed and started again on the same data directory. Without
//! `etcd` a test skips with a printed reason, unless `CI` is set (then it fails).
//! Included with `#[path]`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The settings tend needs of etcd (docs/etcd.md): a revision apply is one transaction, with
/// a compare and a write per object.
pub const TXN_FLAGS: [&str; 4] = ["--max-txn-ops", "65536", "--max-request-bytes", "67108864"];

pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

/// The etcd binary, or `None` after printing why the test skips (panics under CI).
pub fn binary(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: CI is set and the test needs etcd (apt-get install etcd-server)");
        }
        eprintln!("SKIPPED {test}: needs etcd (apt-get install etcd-server)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Etcd {
    /// A fresh single-member etcd, healthy; `None` when the test must skip.
    pub fn start(test: &str) -> Option<Etcd> {
        let binary = binary(test)?;
        // A port taken between probing and binding makes etcd exit: try other ports.
        let mut log = String::new();
        for _ in 0..5 {
            let mut etcd = Etcd {
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
                dir: tempfile::Builder::new()
                    .prefix("tend-etcd-")
                    .tempdir()
                    .expect("tempdir"),
            };
            if etcd.spawn(&binary) {
                return Some(etcd);
            }
            log = std::fs::read_to_string(etcd.log_path()).unwrap_or_default();
        }
        panic!("{test}: etcd did not start:\n{log}");
    }

    /// `etcd://127.0.0.1:PORT`, for `--store` and `EtcdStore::open`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:PORT`, for etcdctl.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts etcd on this data directory and ports; true once healthy.
    fn spawn(&mut self, binary: &Path) -> bool {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log");
        let child = Command::new(binary)
            .args(["--name", "t", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(TXN_FLAGS)
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok())
                .flatten();
            if exited.is_some() {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Whether etcd answers `/health` with a leader.
    pub fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, self.client_port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /health HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.client_port
        );
        let mut reply = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut reply).is_ok()
            && reply.contains("\"health\":\"true\"")
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        let binary = binary("restart").expect("etcd");
        for _ in 0..3 {
            if self.spawn(&binary) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        panic!("etcd did not come back on its data directory:\n{log}");
    }

    /// Runs etcdctl (API v3) against this etcd; its stdout, or a panic with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            output.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay in front of etcd whose connections can be cut and restored, to take a client
/// away from etcd while etcd goes on (and compacts) without it. Stopped on drop.
pub struct Proxy {
    port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    /// Both ends of every relayed connection, to shut down when cut.
    open: std::sync::Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Relays a free loopback port to etcd's client port.
    pub fn start(etcd: &Etcd) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let target = etcd.client_port;
        let shared = std::sync::Arc::new(ProxyShared::default());
        let accepting = std::sync::Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accepting.cut.load(SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, target)) else {
                    continue;
                };
                let mut open = accepting.open.lock().unwrap_or_else(|e| e.into_inner());
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                open.extend([client, server]);
            }
        });
        Proxy { port, shared }
    }

    /// `etcd://127.0.0.1:PORT` through the proxy.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    /// Breaks every relayed connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        self.shared
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.shared
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accepting thread so that it sees `stop` and ends.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}
