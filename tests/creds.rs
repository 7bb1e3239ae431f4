//! Issue 8 part 4, against a real `tend serve`: the join token only registers; a node's
//! credential writes only its own Node and its own pods; credentials survive a restart of
//! serve (and of the agent, which keeps its own 0600); TLS with a pinned CA; the audit log.

mod common;

use common::TEND;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTER: &str = "/apis/tend.dev/v1/noderegistrations";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n";

/// A `tend serve` process (plain or TLS), killed when dropped.
struct Serve {
    child: Child,
    url: String,
    state: PathBuf,
    admin: String,
    join: String,
    http: reqwest::blocking::Client,
}

impl Serve {
    fn start(dir: &Path, state: &Path, extra: &[&str], http: reqwest::blocking::Client) -> Serve {
        let mut child = Command::new(TEND)
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .arg("--state")
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tend serve starts");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("first line");
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(url.contains("://127.0.0.1:"), "serve printed {line:?}");
        let read = |name: &str| {
            std::fs::read_to_string(state.join(name))
                .expect("token")
                .trim()
                .to_string()
        };
        Serve {
            child,
            url,
            state: state.to_path_buf(),
            admin: read("admin.token"),
            join: read("join.token"),
            http,
        }
    }

    fn plain(dir: &Path, state: &Path) -> Serve {
        Serve::start(dir, state, &[], reqwest::blocking::Client::new())
    }

    fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("send");
        let code = response.status().as_u16();
        (code, response.json().unwrap_or(Value::Null))
    }

    fn register(&self, node: &str) -> String {
        let (code, body) = self.call(&self.join, "POST", REGISTER, Some(json!({ "name": node })));
        assert_eq!(code, 201, "{body}");
        body["credential"].as_str().expect("credential").to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn source_dir(root: &Path) -> PathBuf {
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("web.yaml"), SERVICE).expect("manifest");
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn pod(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "web:v1"}]},
    })
}

#[test]
fn the_join_token_registers_and_a_node_writes_only_its_own_objects() {
    let tmp = tempfile::tempdir().expect("tmp");
    let serve = Serve::plain(&source_dir(tmp.path()), &tmp.path().join("state"));
    let join = serve.join.clone();

    // The join token registers, and nothing else: no pods, no services, no Node.
    for (method, path) in [
        ("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Da"),
        ("GET", "/api/v1/services"),
        ("GET", "/api/v1/nodes"),
    ] {
        let (code, body) = serve.call(&join, method, path, None);
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap_or("")
                .contains("only register"),
            "{body}"
        );
    }
    let (code, _) = serve.call(&join, "POST", "/api/v1/nodes", Some(node("a")));
    assert_eq!(code, 403);
    let (code, _) = serve.call(&join, "POST", REGISTER, Some(json!({"name": "Not/A/Name"})));
    assert_eq!(code, 400);
    let (code, _) = serve.call("wrong", "POST", REGISTER, Some(json!({"name": "a"})));
    assert_eq!(code, 401);
    let a = serve.register("a");
    let b = serve.register("b");
    assert_ne!(a, b);

    // Each node creates and updates its own Node; not the other's.
    for (credential, name) in [(&a, "a"), (&b, "b")] {
        let (code, body) = serve.call(credential, "POST", "/api/v1/nodes", Some(node(name)));
        assert_eq!(code, 201, "{body}");
    }
    let (code, _) = serve.call(&a, "POST", "/api/v1/nodes", Some(node("c")));
    assert_eq!(code, 403);
    let mut with_cidr = node("d");
    with_cidr["spec"] = json!({"podCIDR": "10.244.0.0/24"});
    let d = serve.register("d");
    let (code, body) = serve.call(&d, "POST", "/api/v1/nodes", Some(with_cidr));
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("pod CIDR"),
        "{body}"
    );
    let (code, own) = serve.call(&a, "GET", "/api/v1/nodes/a", None);
    assert_eq!(code, 200);
    let (code, _) = serve.call(&a, "PUT", "/api/v1/nodes/a", Some(own));
    assert_eq!(
        code, 403,
        "a node's spec and labels are not its own to write"
    );
    let (code, node_b) = serve.call(&a, "GET", "/api/v1/nodes/b", None);
    assert_eq!(code, 200, "a node reads other Nodes (routes)");
    let mut status = node_b.clone();
    status["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    let (code, body) = serve.call(&a, "PUT", "/api/v1/nodes/b/status", Some(status.clone()));
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("node a"),
        "{body}"
    );
    let (code, _) = serve.call(&b, "PUT", "/api/v1/nodes/b/status", Some(status));
    assert_eq!(code, 200);

    // A pod bound to b: a may not read it, write its status, delete it, or list b's pods.
    let (code, created) = serve.call(
        &serve.admin,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("p", "b")),
    );
    assert_eq!(code, 201, "{created}");
    let path = "/api/v1/namespaces/default/pods/p";
    let mut running = created.clone();
    running["status"] = json!({"phase": "Running"});
    let (code, body) = serve.call(&a, "PUT", &format!("{path}/status"), Some(running.clone()));
    assert_eq!(code, 403, "{body}");
    assert_eq!(serve.call(&a, "GET", path, None).0, 403);
    assert_eq!(serve.call(&a, "DELETE", path, None).0, 403);
    let (code, _) = serve.call(
        &a,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Db",
        None,
    );
    assert_eq!(code, 403);
    let (code, list) = serve.call(
        &a,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Da",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    // b may.
    let (code, body) = serve.call(&b, "PUT", &format!("{path}/status"), Some(running));
    assert_eq!(code, 200, "{body}");
    let (code, list) = serve.call(
        &b,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Db",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    // Neither node touches Deployments, nor creates pods.
    assert_eq!(
        serve.call(&a, "GET", "/apis/apps/v1/deployments", None).0,
        403
    );
    let (code, _) = serve.call(
        &a,
        "POST",
        "/api/v1/namespaces/default/pods",
        Some(pod("q", "a")),
    );
    assert_eq!(code, 403);

    // Registering a again (a reinstalled machine) rotates its credential.
    let a2 = serve.register("a");
    assert_eq!(serve.call(&a, "GET", "/api/v1/nodes/a", None).0, 401);
    assert_eq!(serve.call(&a2, "GET", "/api/v1/nodes/a", None).0, 200);

    // Every mutation is in the audit log (0600): who, what, the answer.
    let audit = serve.state.join("audit.log");
    assert_eq!(mode(&audit), 0o600);
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let has = |identity: &str, verb: &str, name: &str, code: u64| {
        lines.iter().any(|l| {
            l["identity"] == identity && l["verb"] == verb && l["name"] == name && l["code"] == code
        })
    };
    assert!(has("join", "register", "a", 201), "{lines:#?}");
    assert!(has("node a", "update", "b", 403), "{lines:#?}");
    assert!(has("node b", "update", "p", 200), "{lines:#?}");
    assert!(has("admin", "create", "p", 201), "{lines:#?}");
    assert!(has("node a", "create", "a", 201), "{lines:#?}");
    assert!(
        lines
            .iter()
            .all(|l| l["time"].as_str().is_some_and(|t| t.contains('T'))),
        "{lines:#?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&audit).expect("audit log");
        if text.contains("\"identity\":\"source\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no applied revision audited: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secrets = std::fs::read_to_string(&audit).expect("audit log");
    assert!(
        !secrets.contains(&a2) && !secrets.contains(&join),
        "no secret in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_survive_restarts_of_serve_and_agent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = source_dir(tmp.path());
    let state = tmp.path().join("state");
    let agent_state = tmp.path().join("agent");
    let join_file = state.join("join.token");
    let (_stop, mut shutdown) = tokio::sync::watch::channel(false);

    let serve = tokio::task::block_in_place(|| Serve::plain(&dir, &state));
    let servers = vec![serve.url.clone()];
    let first = tend::agent::credential::obtain(
        &servers,
        &join_file,
        None,
        Some(&agent_state),
        "n1",
        &mut shutdown,
    )
    .await
    .expect("obtain")
    .expect("not shut down");
    let stored = tend::agent::credential::credential_path(&agent_state, "n1");
    assert_eq!(mode(&stored), 0o600);
    assert_eq!(mode(&state.join("node-credentials.json")), 0o600);
    assert_eq!(mode(&state.join("join.token")), 0o600);
    assert_eq!(mode(&state.join("admin.token")), 0o600);
    let kept = std::fs::read_to_string(state.join("node-credentials.json")).expect("read");
    assert!(
        !kept.contains(&first.credential),
        "the server keeps digests only"
    );

    // serve restarts (another port): the same credential still works, and the agent
    // restarting uses the one it kept rather than registering again.
    drop(serve);
    let serve = tokio::task::block_in_place(|| Serve::plain(&dir, &state));
    let servers = vec![serve.url.clone()];
    let (code, _) =
        tokio::task::block_in_place(|| serve.call(&first.credential, "GET", "/api/v1/nodes", None));
    assert_eq!(code, 200);
    let again = tend::agent::credential::obtain(
        &servers,
        &join_file,
        None,
        Some(&agent_state),
        "n1",
        &mut shutdown,
    )
    .await
    .expect("obtain")
    .expect("not shut down");
    assert_eq!(again.credential, first.credential);

    // A server with a new state forgot it: the agent registers again with the join token.
    drop(serve);
    let fresh_state = tmp.path().join("fresh");
    let serve = tokio::task::block_in_place(|| Serve::plain(&dir, &fresh_state));
    let servers = vec![serve.url.clone()];
    let fresh = tend::agent::credential::obtain(
        &servers,
        &fresh_state.join("join.token"),
        None,
        Some(&agent_state),
        "n1",
        &mut shutdown,
    )
    .await
    .expect("obtain")
    .expect("not shut down");
    assert_ne!(fresh.credential, first.credential);
    let (code, _) =
        tokio::task::block_in_place(|| serve.call(&fresh.credential, "GET", "/api/v1/nodes", None));
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::read_to_string(&stored).expect("stored").trim(),
        fresh.credential
    );
}

/// A CA, and a server certificate it signed for 127.0.0.1, as PEM files under `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_ca(dir: &Path, name: &str) -> (rcgen::Certificate, rcgen::KeyPair, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("tend test CA {name}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, cert.pem()).expect("write ca");
    (cert, key, path)
}

fn make_pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key, ca) = make_ca(dir, "server");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("signed");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Pki {
        ca,
        cert: cert_path,
        key: key_path,
    }
}

fn pinned(ca: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).expect("ca");
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client")
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_with_a_pinned_ca_and_a_node_registering_over_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = make_pki(tmp.path());
    let (_, _, other_ca) = make_ca(tmp.path(), "other");
    let cert = pki.cert.to_string_lossy().to_string();
    let key = pki.key.to_string_lossy().to_string();
    let serve = Serve::start(
        &source_dir(tmp.path()),
        &tmp.path().join("state"),
        &["--tls-cert", &cert, "--tls-key", &key],
        pinned(&pki.ca),
    );
    assert!(serve.url.starts_with("https://127.0.0.1:"), "{}", serve.url);

    // The pinned CA: the handshake succeeds and the API answers.
    let (code, _) = serve.call(&serve.admin, "GET", "/api/v1/services", None);
    assert_eq!(code, 200);
    // Another CA, or the system's roots: the handshake fails.
    for client in [pinned(&other_ca), reqwest::blocking::Client::new()] {
        let refused = client.get(format!("{}/healthz", serve.url)).send();
        assert!(
            refused.is_err(),
            "a certificate from an unpinned CA was accepted"
        );
    }
    // Plain HTTP to the TLS port gets no answer.
    let plain = serve.url.replacen("https://", "http://", 1);
    let answer = reqwest::blocking::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send();
    assert!(answer.map(|r| !r.status().is_success()).unwrap_or(true));

    // The CLI pins with --ca (and TEND_CA), and fails with another CA.
    let cli = |ca: &Path| {
        Command::new(TEND)
            .args(["--server", &serve.url, "--token", &serve.admin, "--ca"])
            .arg(ca)
            .args(["get", "services"])
            .output()
            .expect("cli")
    };
    let ok = cli(&pki.ca);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("web"));
    let bad = cli(&other_ca);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let by_env = Command::new(TEND)
        .args([
            "--server",
            &serve.url,
            "--token",
            &serve.admin,
            "get",
            "services",
        ])
        .env("TEND_CA", &pki.ca)
        .output()
        .expect("cli");
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );

    // A simulated node registers over TLS with the pinned CA and heartbeats as itself.
    let _node = Killed(
        Command::new(TEND)
            .args(["--server", &serve.url, "--ca"])
            .arg(&pki.ca)
            .args(["sim-node", "--token-file"])
            .arg(serve.state.join("join.token"))
            .args(["--name", "tls-node", "--heartbeat", "200ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sim-node"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, node) = serve.call(&serve.admin, "GET", "/api/v1/nodes/tls-node", None);
        if code == 200 && node.pointer("/status/conditions").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tls-node did not register: {code} {node}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let audit = std::fs::read_to_string(serve.state.join("audit.log")).expect("audit");
    assert!(audit.contains("\"identity\":\"node tls-node\""), "{audit}");
}
