//! Container probes: the plan's answer to probe results (pure), the pod sync and the probe
//! tasks wired together with fakes, and the real prober against servers on 127.0.0.1 and a
//! real runc container. The runc test needs root, runc, ip, chroot and /bin/busybox
//! (busybox-static), the HTTPS test `openssl`; without them they skip with a reason, unless
//! `CI` is set, where they fail.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde_json::{Value, json};
use tend::agent::network::ipam::{Cidr, IpamStore};
use tend::agent::network::{NodeNetwork, PodNetwork, RecordingNetOps};
use tend::agent::pods::{
    ContainerObserved, FakeImages, ImageObserved, PodAction, PodObserved, PodSyncer, SyncOutcome,
    container_id, plan_pod,
};
use tend::agent::probe::{ProbeObserved, ProbeOutcome, ProbeTarget};
use tend::agent::prober::{FakeProber, NetProber, ProbeManager, ProbeResults, ProbeRunner};
use tend::agent::runtime::restart::{Exit, Observed, Tracked};
use tend::agent::runtime::runc::{Call, ContainerRuntime, RecordingRuntime};
use tokio::sync::mpsc;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
}

const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

/// A pod whose container `web` has the given probes (`readinessProbe`, ... as JSON).
fn pod(policy: &str, probes: Value) -> Value {
    let mut c = json!({
        "name": "web",
        "image": "web:v1",
        "ports": [{"name": "http", "containerPort": 8080}],
    });
    if let (Some(c), Some(probes)) = (c.as_object_mut(), probes.as_object()) {
        c.extend(probes.clone());
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default", "uid": UID},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": policy,
            "terminationGracePeriodSeconds": 5,
            "containers": [c],
        },
    })
}

fn running_with(probes: ProbeObserved, tracked: Tracked) -> PodObserved {
    PodObserved {
        ip: Some(Ipv4Addr::new(10, 244, 1, 2)),
        host_ip: Some(Ipv4Addr::new(172, 31, 0, 2)),
        start_time: Some(t(0)),
        containers: BTreeMap::from([(
            "web".to_string(),
            ContainerObserved {
                image: ImageObserved::Ready {
                    image_id: "web:v1@sha256:abc".into(),
                },
                runtime: Some(Observed::Running { started_at: t(1) }),
                tracked,
                probes,
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

fn condition(status: &Value, kind: &str) -> String {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
        .to_string()
}

fn liveness() -> Value {
    json!({"livenessProbe": {"tcpSocket": {"port": "http"}}})
}

fn unhealthy() -> ProbeObserved {
    ProbeObserved {
        started: true,
        unhealthy: Some("Liveness probe failed: dial tcp 10.244.1.2:8080: refused".into()),
        ..ProbeObserved::default()
    }
}

// ---------------------------------------------------------------------------------------
// The plan.

#[test]
fn an_unhealthy_container_is_stopped_and_restarted_with_count_plus_one() {
    let actions = plan_pod(
        &pod("Always", liveness()),
        &running_with(unhealthy(), Tracked::default()),
        t(40),
    );
    assert_eq!(
        actions[..2],
        [
            PodAction::StopContainer {
                name: "web".into(),
                grace: Duration::from_secs(5)
            },
            PodAction::RunContainer {
                name: "web".into(),
                restart_count: 1
            },
        ]
    );
    let s = status(&actions);
    let c = &s["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);
    assert_eq!(
        c["lastState"]["terminated"]["startedAt"],
        t(1).to_string(),
        "{c}"
    );
    assert_eq!(
        c["lastState"]["terminated"]["finishedAt"],
        t(40).to_string()
    );
    assert_eq!(c["ready"], false);
}

#[test]
fn a_second_liveness_kill_waits_the_crash_back_off() {
    let before = Tracked {
        restart_count: 1,
        last_exit: Some(Exit {
            exit_code: 137,
            started_at: t(0),
            finished_at: t(1),
        }),
        ..Tracked::default()
    };
    let actions = plan_pod(
        &pod("Always", liveness()),
        &running_with(unhealthy(), before),
        t(40),
    );
    assert_eq!(
        actions[..],
        [
            PodAction::StopContainer {
                name: "web".into(),
                grace: Duration::from_secs(5)
            },
            actions[1].clone()
        ]
    );
    assert!(matches!(actions[1], PodAction::ReportStatus(_)));
    let c = &status(&actions)["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(c["restartCount"], 1);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);
}

#[test]
fn never_leaves_a_killed_container_terminated_and_a_probe_grace_wins() {
    let mut probes = unhealthy();
    probes.kill_grace = Some(Duration::from_secs(1));
    let actions = plan_pod(
        &pod("Never", liveness()),
        &running_with(probes, Tracked::default()),
        t(40),
    );
    assert_eq!(
        actions[0],
        PodAction::StopContainer {
            name: "web".into(),
            grace: Duration::from_secs(1)
        }
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, PodAction::RunContainer { .. })),
        "{actions:?}"
    );
    let s = status(&actions);
    assert_eq!(
        s["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        137
    );
    assert_eq!(s["phase"], "Failed");
}

#[test]
fn failing_readiness_keeps_ready_false_while_the_container_runs() {
    let readiness = json!({"readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}}});
    for observed in [
        // Before the first result, and after failureThreshold failures.
        ProbeObserved {
            started: true,
            ..ProbeObserved::default()
        },
        ProbeObserved {
            started: true,
            ready: Some(false),
            ..ProbeObserved::default()
        },
    ] {
        let actions = plan_pod(
            &pod("Always", readiness.clone()),
            &running_with(observed.clone(), Tracked::default()),
            t(5),
        );
        assert_eq!(actions.len(), 1, "nothing to do: {actions:?}");
        let s = status(&actions);
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert!(c["state"]["running"].is_object());
        assert_eq!(c["ready"], false, "{observed:?}");
        assert_eq!(c["started"], true);
        assert_eq!(condition(&s, "ContainersReady"), "False");
        assert_eq!(condition(&s, "Ready"), "False");
        assert_eq!(condition(&s, "PodScheduled"), "True");
    }
    let ready = ProbeObserved {
        started: true,
        ready: Some(true),
        ..ProbeObserved::default()
    };
    let s = status(&plan_pod(
        &pod("Always", readiness),
        &running_with(ready, Tracked::default()),
        t(5),
    ));
    assert_eq!(s["containerStatuses"][0]["ready"], true);
    assert_eq!(condition(&s, "Ready"), "True");
}

#[test]
fn a_pending_startup_probe_means_not_started_and_not_ready() {
    let startup = json!({"startupProbe": {"exec": {"command": ["cat", "/tmp/up"]}}});
    let s = status(&plan_pod(
        &pod("Always", startup.clone()),
        &running_with(ProbeObserved::default(), Tracked::default()),
        t(5),
    ));
    let c = &s["containerStatuses"][0];
    assert_eq!(
        (c["started"].clone(), c["ready"].clone()),
        (json!(false), json!(false))
    );
    assert_eq!(s["phase"], "Running");
    let started = ProbeObserved {
        started: true,
        ..ProbeObserved::default()
    };
    let s = status(&plan_pod(
        &pod("Always", startup),
        &running_with(started, Tracked::default()),
        t(5),
    ));
    let c = &s["containerStatuses"][0];
    assert_eq!(
        (c["started"].clone(), c["ready"].clone()),
        (json!(true), json!(true))
    );
}

// ---------------------------------------------------------------------------------------
// The pod sync and the probe tasks, wired as the agent wires them, with fakes.

struct Wired {
    runtime: Arc<RecordingRuntime>,
    prober: Arc<FakeProber>,
    probes: Arc<ProbeManager>,
    syncer: PodSyncer<PodNetwork<RecordingNetOps>>,
    changed: mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

fn wired() -> Wired {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = Arc::new(RecordingRuntime::default());
    let cidr: Cidr = "10.244.1.0/24".parse().expect("cidr");
    let network = PodNetwork::open(
        RecordingNetOps::default(),
        NodeNetwork {
            pod_cidr: cidr,
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            peers: Vec::new(),
        },
        IpamStore::new(dir.path().join("ipam.json")),
    )
    .expect("network");
    let prober = Arc::new(FakeProber::default());
    let (tx, changed) = mpsc::unbounded_channel();
    let probes = Arc::new(ProbeManager::new(prober.clone(), tx));
    let mut syncer = PodSyncer::new(
        runtime.clone(),
        network,
        Arc::new(FakeImages::default()),
        dir.path(),
        Ipv4Addr::new(172, 31, 0, 2),
    )
    .with_probes(probes.clone());
    syncer.poll = Duration::from_millis(1);
    Wired {
        runtime,
        prober,
        probes,
        syncer,
        changed,
        _dir: dir,
    }
}

fn synced(outcome: SyncOutcome) -> Value {
    match outcome {
        SyncOutcome::Status(s) => s,
        SyncOutcome::Deleted => panic!("deleted"),
    }
}

/// Waits (in paused time) until a probe task asks for a sync of the pod.
async fn sync_requested(w: &mut Wired) {
    let uid = tokio::time::timeout(Duration::from_secs(30), w.changed.recv())
        .await
        .expect("a probe result changed within 30 s");
    assert_eq!(uid.as_deref(), Some(UID));
}

#[tokio::test(start_paused = true)]
async fn readiness_then_a_liveness_failure_restart_through_sync_and_probe_tasks() {
    let mut w = wired();
    let mut p = pod(
        "Always",
        json!({
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
        }),
    );
    let s = synced(w.syncer.sync(&p, t(0)).expect("sync"));
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["containerStatuses"][0]["ready"], false, "no result yet");
    assert_eq!(condition(&s, "Ready"), "False");
    // As the agent: the reported status starts the probes.
    p["status"] = s.clone();
    w.probes.update(&p, &s);
    sync_requested(&mut w).await;
    let s = synced(w.syncer.sync(&p, t(1)).expect("sync"));
    assert_eq!(s["containerStatuses"][0]["ready"], true, "{s}");
    assert_eq!(condition(&s, "Ready"), "True");
    assert!(
        w.prober
            .calls()
            .contains(&"GET http://10.244.1.2:8080/ready".to_string())
    );

    // The liveness probe fails twice: the pod is synced, the container killed and restarted.
    w.prober.answer(
        "tcp 10.244.1.2:8080",
        ProbeOutcome::Failure("connection refused".into()),
    );
    sync_requested(&mut w).await;
    assert_eq!(
        w.probes.liveness_failed(UID, "web").as_deref(),
        Some("Liveness probe failed: connection refused")
    );
    let calls_before = w.runtime.calls().len();
    let s = synced(w.syncer.sync(&p, t(10)).expect("sync"));
    let id = container_id(UID, "web");
    let calls = w.runtime.calls()[calls_before..].to_vec();
    assert_eq!(
        calls[0],
        Call::Kill {
            id: id.clone(),
            signal: tend::agent::runtime::runc::Signal::Term
        },
        "{calls:?}"
    );
    assert!(
        matches!(calls.last(), Some(Call::Run { id: i, .. }) if *i == id),
        "{calls:?}"
    );
    let c = &s["containerStatuses"][0];
    assert_eq!(c["restartCount"], 1);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137);
    assert_eq!(c["state"]["running"]["startedAt"], t(10).to_string());
    assert_eq!(c["ready"], false, "the new instance has no readiness yet");
    // The new instance gets fresh probe tasks.
    w.probes.update(&p, &s);
    assert_eq!(
        w.probes.workers(),
        vec![(UID.to_string(), "web".to_string(), t(10).to_string())]
    );
    assert_eq!(w.probes.liveness_failed(UID, "web"), None);
}

// ---------------------------------------------------------------------------------------
// The real prober against servers on 127.0.0.1.

/// An HTTP server on 127.0.0.1: `/ok` 200, `/fail` 500, `/moved` 301 elsewhere, `/slow`
/// never answers. Keeps every request's head.
async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                log.lock().expect("lock").push(head.clone());
                let answer = if head.starts_with("get /ok ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                } else if head.starts_with("get /moved ") {
                    "HTTP/1.1 301 Moved Permanently\r\nlocation: http://192.0.2.1/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                } else if head.starts_with("get /slow ") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                } else {
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

fn http(port: u16, path: &str, headers: &[(&str, &str)]) -> ProbeTarget {
    ProbeTarget::Http {
        url: format!("http://127.0.0.1:{port}{path}"),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    }
}

fn net_prober() -> NetProber {
    NetProber::new(Arc::new(RecordingRuntime::default())).expect("prober")
}

#[tokio::test]
async fn http_probes_by_status_code_with_headers_and_a_timeout() {
    let (port, seen) = http_server().await;
    let prober = net_prober();
    let second = Duration::from_secs(1);
    assert_eq!(
        prober
            .run(&http(port, "/ok", &[("X-Probe", "yes")]), second)
            .await,
        ProbeOutcome::Success
    );
    {
        let seen = seen.lock().expect("lock");
        assert!(seen[0].contains("x-probe: yes\r\n"), "{seen:?}");
        assert!(seen[0].contains("user-agent: kube-probe/"), "{seen:?}");
        assert!(
            seen[0].contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{seen:?}"
        );
    }
    assert_eq!(
        prober.run(&http(port, "/fail", &[]), second).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    // A redirect succeeds and is not followed.
    assert_eq!(
        prober.run(&http(port, "/moved", &[]), second).await,
        ProbeOutcome::Success
    );
    // The probe's own Host and User-Agent replace the defaults.
    let custom = [("Host", "probe.example"), ("User-Agent", "mine")];
    assert_eq!(
        prober.run(&http(port, "/ok", &custom), second).await,
        ProbeOutcome::Success
    );
    {
        let seen = seen.lock().expect("lock");
        let last = seen.last().expect("a request");
        assert!(last.contains("host: probe.example\r\n"), "{last}");
        assert!(last.contains("user-agent: mine\r\n"), "{last}");
        assert!(!last.contains("kube-probe"), "{last}");
        assert_eq!(seen.len(), 4, "the redirect was not followed: {seen:?}");
    }
    let started = Instant::now();
    let slow = prober
        .run(&http(port, "/slow", &[]), Duration::from_millis(300))
        .await;
    assert!(
        matches!(&slow, ProbeOutcome::Failure(m) if m.contains("timed out")),
        "{slow:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn tcp_probes_connect_or_fail() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let prober = net_prober();
    let target = |port| ProbeTarget::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    assert_eq!(
        prober.run(&target(port), Duration::from_secs(1)).await,
        ProbeOutcome::Success
    );
    let refused = prober
        .run(&target(closed_port()), Duration::from_secs(1))
        .await;
    assert!(
        matches!(&refused, ProbeOutcome::Failure(m) if m.starts_with("dial tcp 127.0.0.1:")),
        "{refused:?}"
    );
    let refused_http = prober
        .run(&http(closed_port(), "/", &[]), Duration::from_secs(1))
        .await;
    assert!(
        matches!(refused_http, ProbeOutcome::Failure(_)),
        "{refused_http:?}"
    );
}

fn skip(test: &str, reason: Option<String>) -> bool {
    match reason {
        None => false,
        Some(reason) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {reason}, and CI is set")
        }
        Some(reason) => {
            eprintln!("skipping {test}: {reason}");
            true
        }
    }
}

fn runs(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `openssl s_server` with a self-signed certificate; killed in Drop.
struct TlsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn https_probes_do_not_verify_certificates() {
    let test = "https_probes_do_not_verify_certificates";
    let missing = (!runs("openssl", &["version"])).then(|| "openssl is missing".to_string());
    if skip(test, missing) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    assert!(runs(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not-this-host",
            "-keyout",
            &path(&key),
            "-out",
            &path(&cert),
        ]
    ));
    let port = closed_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", &path(&cert), "-key", &path(&key)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let server = TlsServer {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let target = ProbeTarget::Http {
        url: format!("https://127.0.0.1:{}/", server.port),
        headers: Vec::new(),
    };
    let outcome = net_prober().run(&target, Duration::from_secs(5)).await;
    assert_eq!(outcome, ProbeOutcome::Success);
}

// ---------------------------------------------------------------------------------------
// Exec probes in a real runc container.

fn runc_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (tool, arg) in [("runc", "--version"), ("ip", "-V"), ("chroot", "--version")] {
        if !runs(tool, &[arg]) {
            return Some(format!("{tool} is missing"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// A busybox container in a network namespace the test made; all removed in Drop.
struct Lab {
    runtime: Arc<tend::agent::runtime::runc::Runc>,
    uid: String,
    dir: tempfile::TempDir,
    netns: Option<String>,
    container: Option<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(id) = self.container.take()
            && let Err(e) = self.runtime.delete(&id)
        {
            eprintln!("cleanup: {e}");
        }
        if let Some(netns) = self.netns.take() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &netns])
                .status();
        }
    }
}

fn must(tool: &str, args: &[&str]) {
    let out = Command::new(tool).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(test: &str) -> Option<Lab> {
        if skip(test, runc_missing()) {
            return None;
        }
        tend::agent::runtime::runc::become_subreaper().expect("subreaper");
        let name = format!(
            "tend-pr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut lab = Lab {
            runtime: Arc::new(
                tend::agent::runtime::runc::Runc::new("runc", &dir.path().join("state"))
                    .expect("runtime"),
            ),
            uid: name.clone(),
            dir,
            netns: None,
            container: None,
        };
        must("ip", &["netns", "add", &name]);
        lab.netns = Some(name);
        let rootfs = lab.bundle().join("rootfs");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        let root = rootfs.to_str().expect("utf-8").to_string();
        must(
            "chroot",
            &[&root, "/bin/busybox", "--install", "-s", "/bin"],
        );
        std::fs::write(lab.dir.path().join("hosts"), "127.0.0.1 localhost\n").expect("hosts");
        std::fs::write(lab.dir.path().join("resolv.conf"), "").expect("resolv.conf");
        Some(lab)
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    /// Runs the pod's container `main` (`sh -c script`) as `<uid>-main`, as the agent names it.
    fn run(&mut self, script: &str) -> String {
        use k8s_openapi::api::core::v1::Container;
        use tend::agent::runtime::bundle::{ImageConfig, PodContext, runtime_spec};
        let container = Container {
            name: "main".into(),
            command: Some(["sh", "-c", script].map(String::from).to_vec()),
            ..Container::default()
        };
        let context = PodContext {
            pod_name: "probed".into(),
            netns: format!("/var/run/netns/{}", self.uid),
            hosts_file: self.dir.path().join("hosts"),
            resolv_conf: self.dir.path().join("resolv.conf"),
            rootfs: self.bundle().join("rootfs"),
            service_env: Default::default(),
        };
        let image = ImageConfig::default();
        let spec = runtime_spec(&image, &container, &context).expect("spec");
        std::fs::write(
            self.bundle().join("config.json"),
            serde_json::to_vec(&spec).expect("json"),
        )
        .expect("config.json");
        let id = container_id(&self.uid, "main");
        self.container = Some(id.clone());
        self.runtime.run(&id, &self.bundle()).expect("runc run");
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_in_a_real_container_and_a_liveness_kill_request() {
    let Some(mut lab) = Lab::new("exec_probes_in_a_real_container_and_a_liveness_kill_request")
    else {
        return;
    };
    let id = lab.run("trap 'exit 0' TERM; touch /tmp/healthy; sleep 60 & wait");
    let prober = NetProber::new(lab.runtime.clone()).expect("prober");
    let exec = |command: &[&str]| ProbeTarget::Exec {
        container_id: id.clone(),
        command: command.iter().map(|s| s.to_string()).collect(),
    };
    let healthy = exec(&["cat", "/tmp/healthy"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = prober.run(&healthy, Duration::from_secs(2)).await;
        if outcome == ProbeOutcome::Success {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = prober
        .run(&exec(&["sleep", "10"]), Duration::from_millis(500))
        .await;
    assert!(
        matches!(&slow, ProbeOutcome::Failure(m) if m.contains("timed out")),
        "{slow:?}"
    );

    // Through the probe tasks: the file goes, the liveness probe fails, a kill is asked for.
    let pod = json!({
        "metadata": {"name": "probed", "namespace": "default", "uid": lab.uid},
        "spec": {"containers": [{
            "name": "main", "image": "busybox",
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]},
                              "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 2},
        }]},
    });
    let status = json!({"containerStatuses": [
        {"name": "main", "state": {"running": {"startedAt": "T1"}}},
    ]});
    let (tx, mut changed) = mpsc::unbounded_channel();
    let probes = ProbeManager::new(Arc::new(prober), tx);
    probes.update(&pod, &status);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probes.liveness_failed(&lab.uid, "main"), None);
    let gone = lab
        .runtime
        .exec(
            &id,
            &["rm".to_string(), "/tmp/healthy".to_string()],
            Duration::from_secs(5),
        )
        .expect("exec rm");
    assert_eq!(gone.exit_code, Some(0), "{gone:?}");
    let uid = tokio::time::timeout(Duration::from_secs(10), changed.recv())
        .await
        .expect("a kill asked for within 10 s");
    assert_eq!(uid.as_deref(), Some(lab.uid.as_str()));
    let reason = probes.liveness_failed(&lab.uid, "main").expect("unhealthy");
    assert!(
        reason.starts_with(
            "Liveness probe failed: command [\"cat\", \"/tmp/healthy\"] exited with 1"
        ),
        "{reason}"
    );
    assert_eq!(
        probes.observe(&lab.uid, "main", "T1").unhealthy,
        Some(reason)
    );
    probes.remove_pod(&lab.uid);
    assert!(probes.workers().is_empty());
}
