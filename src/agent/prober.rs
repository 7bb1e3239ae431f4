//! Running container probes: [`ProbeRunner`] does one probe (HTTP GET, TCP connect, exec in
//! the container) with [`NetProber`] for real and [`FakeProber`] in tests, and
//! [`ProbeManager`] keeps one task per running container instance that has probes, on the
//! probes' own schedule ([`ContainerProbes`]), not the agent's sync period.
//!
//! The agent tells the manager what runs after every sync ([`ProbeManager::update`], from
//! the status it reports); a task starts when a container instance starts (its
//! `startedAt`), stops when it stops, restarts or its pod goes. When a task's results
//! change it sends the pod's uid on a channel and the agent syncs the pod at once, so Ready
//! and liveness restarts follow within a probe period. The pod sync reads the results
//! through [`ProbeResults`], keyed by the instance so a restarted container never sees the
//! previous one's results.
//!
//! The agent runs in the node's network namespace, where pod IPs are reachable over the
//! node bridge, so HTTP and TCP probes connect to `podIP:port` from the agent itself.

use super::events::PodNote;
use crate::errors::error_chain;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Container;
use serde_json::Value;
use tokio::sync::mpsc;

use super::pods::container_id;
use super::probe::{
    ContainerProbes, ProbeKind, ProbeObserved, ProbeOutcome, ProbeSpec, ProbeTarget,
    container_probes, http_outcome, target,
};
use super::runtime::runc::ContainerRuntime;

/// Does one probe; never longer than about `timeout`.
pub trait ProbeRunner: Send + Sync + 'static {
    fn run<'a>(&'a self, target: &'a ProbeTarget, timeout: Duration)
    -> BoxFuture<'a, ProbeOutcome>;
}

/// The probes' results as the pod sync reads them.
pub trait ProbeResults: Send + Sync {
    /// What the probes of `container` in pod `uid` said about the instance that started at
    /// `instance` (its `startedAt`); the default (nothing known) for any other instance.
    fn observe(&self, uid: &str, container: &str, instance: &str) -> ProbeObserved;
}

/// The `User-Agent` of HTTP probes unless the probe sets one: some applications answer
/// kubelet probes specially and look for this prefix.
pub const USER_AGENT: &str = concat!("kube-probe/tend-", env!("CARGO_PKG_VERSION"));

/// The real probes: HTTP(S) with reqwest (certificates not verified, redirects not
/// followed, no connection kept), TCP with tokio, exec through the container runtime.
pub struct NetProber {
    http: reqwest::Client,
    runtime: Arc<dyn ContainerRuntime>,
}

impl NetProber {
    pub fn new(runtime: Arc<dyn ContainerRuntime>) -> Result<NetProber, String> {
        let http = reqwest::Client::builder()
            // As the kubelet: probes check the container, not its certificate.
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(|e| format!("building the probes' HTTP client: {e}"))?;
        Ok(NetProber { http, runtime })
    }

    async fn http(
        &self,
        url: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> ProbeOutcome {
        let mut request = self.http.get(url).timeout(timeout);
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
        {
            request = request.header(reqwest::header::USER_AGENT, USER_AGENT);
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.send().await {
            Ok(response) => http_outcome(response.status().as_u16()),
            Err(e) if e.is_timeout() => {
                ProbeOutcome::Failure(format!("Get {url}: timed out after {timeout:?}"))
            }
            Err(e) if e.is_builder() => {
                ProbeOutcome::Error(format!("Get {url}: {}", error_chain(&e)))
            }
            Err(e) => ProbeOutcome::Failure(format!("Get {url}: {}", error_chain(&e))),
        }
    }

    async fn tcp(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => ProbeOutcome::Success,
            Ok(Err(e)) => ProbeOutcome::Failure(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => ProbeOutcome::Failure(format!(
                "dial tcp {host}:{port}: timed out after {timeout:?}"
            )),
        }
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> ProbeOutcome {
        let runtime = self.runtime.clone();
        let (id, argv) = (id.to_string(), command.to_vec());
        let ran = tokio::task::spawn_blocking(move || runtime.exec(&id, &argv, timeout)).await;
        match ran {
            Ok(Ok(out)) => match out.exit_code {
                Some(0) => ProbeOutcome::Success,
                Some(code) => ProbeOutcome::Failure(format!(
                    "command {command:?} exited with {code}: {}",
                    excerpt(&out.output)
                )),
                None => ProbeOutcome::Failure(format!(
                    "command {command:?} timed out after {timeout:?}"
                )),
            },
            Ok(Err(e)) => ProbeOutcome::Error(e.to_string()),
            Err(e) => ProbeOutcome::Error(format!("exec probe task: {e}")),
        }
    }
}

/// The start of a command's output, on one line, for a log line.
fn excerpt(output: &str) -> String {
    let one_line = output.trim().replace('\n', " ");
    match one_line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

impl ProbeRunner for NetProber {
    fn run<'a>(
        &'a self,
        target: &'a ProbeTarget,
        timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome> {
        Box::pin(async move {
            match target {
                ProbeTarget::Http { url, headers } => self.http(url, headers, timeout).await,
                ProbeTarget::Tcp { host, port } => Self::tcp(host, *port, timeout).await,
                ProbeTarget::Exec {
                    container_id,
                    command,
                } => self.exec(container_id, command, timeout).await,
            }
        })
    }
}

/// Probes that answer what the test set: by the target's text (`GET http://...`,
/// `tcp host:port`, `exec [...]`), success when nothing was set. Records every target.
#[derive(Default)]
pub struct FakeProber {
    outcomes: Mutex<BTreeMap<String, ProbeOutcome>>,
    calls: Mutex<Vec<String>>,
}

impl FakeProber {
    /// From now on, probes of `target` (its text) answer `outcome`.
    pub fn answer(&self, target: &str, outcome: ProbeOutcome) {
        lock(&self.outcomes).insert(target.to_string(), outcome);
    }

    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

impl ProbeRunner for FakeProber {
    fn run<'a>(
        &'a self,
        target: &'a ProbeTarget,
        _timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome> {
        let key = target.to_string();
        lock(&self.calls).push(key.clone());
        let outcome = lock(&self.outcomes)
            .get(&key)
            .cloned()
            .unwrap_or(ProbeOutcome::Success);
        Box::pin(async move { outcome })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// (pod uid, container name).
type Key = (String, String);

struct Published {
    instance: String,
    observed: ProbeObserved,
}

struct Worker {
    instance: String,
    task: tokio::task::JoinHandle<()>,
}

/// The probe tasks of the node's containers and their latest results.
pub struct ProbeManager {
    runner: Arc<dyn ProbeRunner>,
    /// Receives a pod's uid when its probes' results changed.
    changed: mpsc::UnboundedSender<String>,
    workers: Mutex<BTreeMap<Key, Worker>>,
    results: Arc<Mutex<BTreeMap<Key, Published>>>,
    /// Receives `Unhealthy` events (pod uid, event) for failed probe runs, when set.
    events: Option<mpsc::UnboundedSender<(String, PodNote)>>,
}

impl ProbeManager {
    pub fn new(runner: Arc<dyn ProbeRunner>, changed: mpsc::UnboundedSender<String>) -> Self {
        ProbeManager {
            runner,
            changed,
            workers: Mutex::new(BTreeMap::new()),
            results: Arc::new(Mutex::new(BTreeMap::new())),
            events: None,
        }
    }

    /// Sends an `Unhealthy` event for every failed probe run to `events`, as the kubelet
    /// records them (`Liveness probe failed: HTTP probe failed with statuscode: 404`).
    pub fn with_events(mut self, events: mpsc::UnboundedSender<(String, PodNote)>) -> Self {
        self.events = Some(events);
        self
    }

    /// After a sync of `pod` that reported `status`: a probe task for every running
    /// container instance with probes (started when new), none for the others. Must be
    /// called from within a Tokio runtime. A pod being deleted loses its probes.
    pub fn update(&self, pod: &Value, status: &Value) {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            self.remove_pod(uid);
            return;
        }
        let pod_name = format!(
            "{}/{}",
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default"),
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        let pod_ip = status.get("podIP").and_then(Value::as_str);
        let running: BTreeMap<&str, &str> = status
            .get("containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s.get("name")?.as_str()?,
                    s.pointer("/state/running/startedAt")?.as_str()?,
                ))
            })
            .collect();
        let containers: Vec<Container> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| serde_json::from_value(c.clone()).ok())
            .collect();
        let mut wanted: BTreeMap<String, (String, Vec<ProbeSpec>)> = BTreeMap::new();
        for c in &containers {
            let specs = container_probes(c);
            if let (Some(instance), false) = (running.get(c.name.as_str()), specs.is_empty()) {
                wanted.insert(c.name.clone(), (instance.to_string(), specs));
            }
        }
        let mut workers = lock(&self.workers);
        let stale: Vec<Key> = workers
            .iter()
            .filter(|((u, name), w)| {
                u == uid && wanted.get(name).is_none_or(|(i, _)| *i != w.instance)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(w) = workers.remove(&key) {
                w.task.abort();
            }
            lock(&self.results).remove(&key);
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pod = %pod_name, "probes not started: no async runtime");
            return;
        };
        for (name, (instance, specs)) in wanted {
            let key = (uid.to_string(), name.clone());
            if workers.contains_key(&key) {
                continue;
            }
            let probes = ContainerProbes::new(specs);
            lock(&self.results).insert(
                key.clone(),
                Published {
                    instance: instance.clone(),
                    observed: probes.observed().clone(),
                },
            );
            let targets: BTreeMap<ProbeKind, Result<ProbeTarget, String>> = [
                ProbeKind::Startup,
                ProbeKind::Liveness,
                ProbeKind::Readiness,
            ]
            .into_iter()
            .filter_map(|kind| {
                let spec = probes.spec(kind)?;
                let t = spec
                    .handler
                    .clone()
                    .and_then(|h| target(kind, &h, pod_ip, &container_id(uid, &name)))
                    .map_err(|e| e.to_string());
                Some((kind, t))
            })
            .collect();
            // initialDelaySeconds counts from the container's start, not from this task's.
            let age = instance
                .parse::<jiff::Timestamp>()
                .ok()
                .and_then(|at| Duration::try_from(jiff::Timestamp::now().duration_since(at)).ok())
                .unwrap_or_default();
            let task = ProbeTask {
                age,
                runner: self.runner.clone(),
                results: self.results.clone(),
                changed: self.changed.clone(),
                events: self.events.clone(),
                key: key.clone(),
                instance: instance.clone(),
                pod: pod_name.clone(),
                targets,
            };
            let task = handle.spawn(task.run(probes));
            workers.insert(key, Worker { instance, task });
        }
    }

    /// Stops the probes of pod `uid` and forgets their results (the pod is gone).
    pub fn remove_pod(&self, uid: &str) {
        let mut workers = lock(&self.workers);
        let keys: Vec<Key> = workers.keys().filter(|(u, _)| u == uid).cloned().collect();
        for key in keys {
            if let Some(w) = workers.remove(&key) {
                w.task.abort();
            }
        }
        lock(&self.results).retain(|(u, _), _| u != uid);
    }

    fn current(&self, uid: &str, container: &str) -> Option<ProbeObserved> {
        lock(&self.results)
            .get(&(uid.to_string(), container.to_string()))
            .map(|p| p.observed.clone())
    }

    /// The readiness result of the running instance; `None` before one (or without probes).
    pub fn ready(&self, uid: &str, container: &str) -> Option<bool> {
        self.current(uid, container).and_then(|o| o.ready)
    }

    /// Whether the running instance's startup probe succeeded (true without one).
    pub fn started(&self, uid: &str, container: &str) -> bool {
        self.current(uid, container).is_some_and(|o| o.started)
    }

    /// Why the running instance is to be killed, when a liveness or startup probe failed;
    /// gone once the container is restarted (a new instance).
    pub fn liveness_failed(&self, uid: &str, container: &str) -> Option<String> {
        self.current(uid, container).and_then(|o| o.unhealthy)
    }

    /// (uid, container, instance) of every probe task, for tests and debugging.
    pub fn workers(&self) -> Vec<(String, String, String)> {
        lock(&self.workers)
            .iter()
            .map(|((u, c), w)| (u.clone(), c.clone(), w.instance.clone()))
            .collect()
    }
}

impl ProbeResults for ProbeManager {
    fn observe(&self, uid: &str, container: &str, instance: &str) -> ProbeObserved {
        lock(&self.results)
            .get(&(uid.to_string(), container.to_string()))
            .filter(|p| p.instance == instance)
            .map(|p| p.observed.clone())
            .unwrap_or_default()
    }
}

impl Drop for ProbeManager {
    fn drop(&mut self) {
        for w in lock(&self.workers).values() {
            w.task.abort();
        }
    }
}

/// One container instance's probes, run until none is left to run or the task is aborted.
struct ProbeTask {
    /// How long the container had run when the task started.
    age: Duration,
    runner: Arc<dyn ProbeRunner>,
    results: Arc<Mutex<BTreeMap<Key, Published>>>,
    changed: mpsc::UnboundedSender<String>,
    events: Option<mpsc::UnboundedSender<(String, PodNote)>>,
    key: Key,
    instance: String,
    pod: String,
    targets: BTreeMap<ProbeKind, Result<ProbeTarget, String>>,
}

impl ProbeTask {
    async fn run(self, mut probes: ContainerProbes) {
        let now = tokio::time::Instant::now();
        let start = now.checked_sub(self.age).unwrap_or(now);
        let container = self.key.1.clone();
        let mut last_error: BTreeMap<ProbeKind, String> = BTreeMap::new();
        loop {
            let now = start.elapsed();
            let due = probes.due(now);
            if due.is_empty() {
                match probes.next_due() {
                    Some(at) => tokio::time::sleep_until(start + at).await,
                    None => return,
                }
                continue;
            }
            let runner = &self.runner;
            let runs = due.into_iter().map(|kind| {
                let timeout = probes.spec(kind).map(|s| s.timeout).unwrap_or_default();
                let target = self.targets.get(&kind);
                async move {
                    let outcome = match target {
                        Some(Ok(t)) => runner.run(t, timeout).await,
                        Some(Err(e)) => ProbeOutcome::Error(e.clone()),
                        None => ProbeOutcome::Error(format!("no {kind} probe")),
                    };
                    (kind, outcome)
                }
            });
            let outcomes = futures_util::future::join_all(runs).await;
            for (kind, outcome) in outcomes {
                match &outcome {
                    ProbeOutcome::Failure(m) => {
                        tracing::debug!(pod = %self.pod, %container, "{kind} probe failed: {m}");
                        if let Some(events) = &self.events {
                            let note =
                                PodNote::warning("Unhealthy", format!("{kind} probe failed: {m}"));
                            let _ = events.send((self.key.0.clone(), note));
                        }
                    }
                    ProbeOutcome::Error(e) if last_error.get(&kind) != Some(e) => {
                        tracing::warn!(pod = %self.pod, %container, "{kind} probe errored: {e}");
                        last_error.insert(kind, e.clone());
                    }
                    _ => {}
                }
                let before = probes.observed().clone();
                if probes.record(kind, &outcome, now) {
                    self.publish(&before, probes.observed());
                }
            }
        }
    }

    /// Makes the new results visible and asks for a sync of the pod; a stale task (its
    /// instance replaced) publishes nothing.
    fn publish(&self, before: &ProbeObserved, after: &ProbeObserved) {
        let container = &self.key.1;
        {
            let mut results = lock(&self.results);
            match results.get_mut(&self.key) {
                Some(p) if p.instance == self.instance => p.observed = after.clone(),
                _ => return,
            }
        }
        if after.unhealthy.is_some() && before.unhealthy != after.unhealthy {
            let reason = after.unhealthy.as_deref().unwrap_or_default();
            tracing::warn!(pod = %self.pod, %container, "{reason}; the container will be restarted");
        }
        if after.started && !before.started {
            tracing::info!(pod = %self.pod, %container, "startup probe succeeded");
        }
        if after.ready != before.ready {
            tracing::info!(pod = %self.pod, %container, ready = ?after.ready, "readiness changed");
        }
        let _ = self.changed.send(self.key.0.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(startup: bool) -> Value {
        let mut c = json!({
            "name": "web",
            "image": "web:v1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
        });
        if startup {
            c["startupProbe"] =
                json!({"exec": {"command": ["cat", "/tmp/started"]}, "periodSeconds": 1});
        }
        json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [c, {"name": "side", "image": "side:v1"}]},
        })
    }

    fn status(started_at: &str) -> Value {
        json!({
            "podIP": "10.244.1.5",
            "containerStatuses": [
                {"name": "web", "state": {"running": {"startedAt": started_at}}},
                {"name": "side", "state": {"running": {"startedAt": started_at}}},
            ],
        })
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_changes_are_published_and_announced() {
        let fake = Arc::new(FakeProber::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.clone(), tx);
        m.update(&pod(false), &status("T1"));
        assert_eq!(
            m.workers(),
            vec![("u1".into(), "web".into(), "T1".into())],
            "one task, for the container with probes"
        );
        assert_eq!(m.ready("u1", "web"), None);
        assert!(m.started("u1", "web"));
        settle().await;
        assert_eq!(m.ready("u1", "web"), Some(true));
        assert_eq!(rx.try_recv().ok().as_deref(), Some("u1"));
        assert_eq!(m.observe("u1", "web", "T1").ready, Some(true));
        assert_eq!(m.observe("u1", "web", "T0"), ProbeObserved::default());
        let calls = fake.calls();
        assert!(
            calls.contains(&"GET http://10.244.1.5:8080/ready".to_string()),
            "{calls:?}"
        );
        assert!(
            calls.contains(&"tcp 10.244.1.5:8080".to_string()),
            "{calls:?}"
        );

        // Readiness fails once (threshold 3): nothing changes; liveness fails twice: kill.
        fake.answer(
            "GET http://10.244.1.5:8080/ready",
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 503".into()),
        );
        fake.answer(
            "tcp 10.244.1.5:8080",
            ProbeOutcome::Failure("connection refused".into()),
        );
        tokio::time::sleep(Duration::from_millis(1001)).await;
        settle().await;
        assert_eq!(m.ready("u1", "web"), Some(true));
        assert_eq!(m.liveness_failed("u1", "web"), None);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        settle().await;
        assert_eq!(
            m.liveness_failed("u1", "web").as_deref(),
            Some("Liveness probe failed: connection refused")
        );
        while rx.try_recv().is_ok() {}
        let probed = fake.calls().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(fake.calls().len(), probed, "no probes once the kill is due");

        // The restarted container is a new instance with fresh results.
        m.update(&pod(false), &status("T2"));
        assert_eq!(m.liveness_failed("u1", "web"), None);
        assert_eq!(m.ready("u1", "web"), None);
        assert_eq!(m.workers()[0].2, "T2");
        // Stopped: no task; gone: nothing left.
        m.update(&pod(false), &json!({"containerStatuses": []}));
        assert!(m.workers().is_empty());
        m.update(&pod(false), &status("T3"));
        m.remove_pod("u1");
        assert!(m.workers().is_empty());
        assert_eq!(m.ready("u1", "web"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_initial_delay_counts_from_the_container_start() {
        let fake = Arc::new(FakeProber::default());
        let (tx, _rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.clone(), tx);
        let mut p = pod(false);
        p["spec"]["containers"][0]["livenessProbe"]["initialDelaySeconds"] = json!(10);
        p["spec"]["containers"][0]
            .as_object_mut()
            .expect("container")
            .remove("readinessProbe");
        let started = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(6);
        m.update(&p, &status(&started.to_string()));
        settle().await;
        tokio::time::sleep(Duration::from_millis(3800)).await;
        settle().await;
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        tokio::time::sleep(Duration::from_millis(400)).await;
        settle().await;
        assert_eq!(fake.calls(), ["tcp 10.244.1.5:8080"]);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_holds_the_others_back() {
        let fake = Arc::new(FakeProber::default());
        fake.answer(
            "exec [\"cat\", \"/tmp/started\"]",
            ProbeOutcome::Failure("exit 1".into()),
        );
        let (tx, _rx) = mpsc::unbounded_channel();
        let m = ProbeManager::new(fake.clone(), tx);
        m.update(&pod(true), &status("T1"));
        settle().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        settle().await;
        assert!(!m.started("u1", "web"));
        assert!(
            fake.calls().iter().all(|c| c.starts_with("exec")),
            "{:?}",
            fake.calls()
        );
        fake.answer("exec [\"cat\", \"/tmp/started\"]", ProbeOutcome::Success);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        settle().await;
        assert!(m.started("u1", "web"));
        assert_eq!(m.ready("u1", "web"), Some(true));
    }
}
