//! Test harness: real git repositories, a real `tend serve` process, the real HTTP API.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TEND: &str = env!("CARGO_BIN_EXE_tend");

/// Runs git in `dir`, panicking with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository (what serve watches) and a clone with a work tree (where commits are made).
pub struct Repos {
    pub tmp: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Repos {
    pub fn new() -> Repos {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        git(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(
            tmp.path(),
            &["init", "-q", "-b", "main", work.to_str().unwrap()],
        );
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Repos { tmp, bare, work }
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.work.join(path)).unwrap();
    }

    /// Commits everything in the work tree; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn push(&self) {
        git(&self.work, &["push", "-q", "origin", "main"]);
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
}

/// A running `tend serve`, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub url: String,
    pub token: String,
    pub state: PathBuf,
    http: reqwest::blocking::Client,
}

impl Serve {
    pub fn start(args: &[&str], state: &Path) -> Serve {
        Serve::start_on("127.0.0.1:0", args, state)
    }

    /// `tend serve` listening on `listen` (a lab bridge address, for agents in namespaces).
    pub fn start_on(listen: &str, args: &[&str], state: &Path) -> Serve {
        let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(listen);
        let mut child = Command::new(TEND)
            .arg("serve")
            .args(["--listen", listen, "--state"])
            .arg(state)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tend serve starts");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            url.starts_with(&format!("http://{host}:")),
            "serve printed {line:?}"
        );
        let token = std::fs::read_to_string(state.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Serve {
            child,
            url,
            token,
            state: state.to_path_buf(),
            http,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().unwrap_or(Value::Null))
    }

    pub fn get_ok(&self, path: &str) -> Value {
        let (code, v) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {v}");
        v
    }

    /// Waits until revision `id` leaves Pending; returns the record.
    pub fn wait_revision(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, v) = self.get(&format!("/apis/tend.dev/v1/revisions/{id}"));
            if code == 200
                && v.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p != "Pending")
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "revision {id} not settled: {code} {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(TEND)
            .args(["--server", &self.url, "--token", &self.token])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn phase(revision: &Value) -> &str {
    revision
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn errors(revision: &Value) -> Vec<String> {
    revision
        .pointer("/status/errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The seed lab of seed 000: a legacy Deployment pinned to `disk: ssd` and a NodePort Service.
pub fn xgp_web(replicas: u32, image: &str) -> String {
    format!(
        "kind: Deployment\napiVersion: extensions/v1beta1\nmetadata:\n  name: xgp-web\nspec:\n  replicas: {replicas}\n  template:\n    metadata:\n      labels:\n        app: xgp-server\n    spec:\n      nodeSelector:\n        disk: ssd\n      containers:\n      - name: web\n        image: {image}\n"
    )
}

pub const XGP_SVC: &str = "kind: Service\napiVersion: v1\nmetadata:\n  name: xgp-svc\nspec:\n  type: NodePort\n  selector:\n    app: xgp-server\n  ports:\n    - protocol: TCP\n      port: 80\n      targetPort: 80\n      nodePort: 30123\n";

/// A `tend sim-node` process, stopped when dropped.
pub struct SimNode {
    pub child: Child,
    pub name: String,
}

impl SimNode {
    pub fn start(serve: &Serve, name: &str, labels: &str) -> SimNode {
        let mut cmd = Command::new(TEND);
        cmd.args(["sim-node", "--server", &serve.url, "--token-file"])
            .arg(serve.state.join("join.token"))
            .args(["--name", name, "--heartbeat", "500ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if !labels.is_empty() {
            cmd.args(["--labels", labels]);
        }
        SimNode {
            child: cmd.spawn().expect("tend sim-node starts"),
            name: name.to_string(),
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Polls `path` until `check` holds on the object (or list); panics after 30 s.
    pub fn wait_for(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, v) = self.get(path);
            if code == 200 && check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tend {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// The items of a list response.
pub fn items(list: &Value) -> Vec<Value> {
    list.get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}
