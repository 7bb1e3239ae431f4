//! `tend bench load`: many simulated agents against one real `tend serve`, for minutes.
//!
//! serve (the binary, its own process, so its memory is its own) runs on a git repository of
//! as many Deployments (3 replicas) and Services as there are agents. Each simulated agent is
//! a tokio task with its own HTTP client and its own loopback address (127.1.x.y: the rate
//! limit and the watch cap are per client address, as for real nodes). Like the real agent it
//! registers its Node, follows its pods (`fieldSelector=spec.nodeName=NAME`), every Service
//! and every Endpoints (list, then watch from the list's resourceVersion, resuming from the
//! last one seen), and every second writes its Node's status and the status of each of its
//! pods (Running, Ready, an IP from its pod CIDR); it deletes the pods marked for deletion.
//! Meanwhile a commit every few seconds scales a Deployment or switches its image between
//! two tags, so pods come and go and Endpoints change while the store's state stays steady.
//!
//! Measured: the latency of every API request (watches excepted: the lists they start from
//! count), serve's VmRSS every 5 s, and whether any watch dropped an event. A watch
//! *dropped an event* when, once the load stops:
//! - a pod-status write the agent made (answered 200 with a new resourceVersion) never came
//!   back on that agent's pod watch, which selects that pod;
//! - the watch's view (its initial list plus every event it received) differs from a fresh
//!   list of the same selection: an object missing, one too many (a DELETED not received),
//!   or one at another resourceVersion (a MODIFIED not received);
//! - it received events out of resourceVersion order, or an object twice at one version;
//! - it had to list again (410 Gone: it fell behind the server's window).

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::agent::client::{namespace_and_name, with_status};
use crate::agent::sim::{lowest_free_ip, running_status};
use crate::agent::{NodeIdentity, node_object, node_status, now_millis};

pub mod rss;

pub use rss::RssGrowth;

/// The goal of the issue: API p99 at or under this.
pub const P99_GOAL_MS: f64 = 50.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The `tend` binary serve is started from.
    pub tend: PathBuf,
    pub agents: usize,
    /// How long the load runs once every agent is registered.
    pub duration: Duration,
    /// How often an agent writes its Node's and its pods' status.
    pub report_every: Duration,
    /// How often a commit scales a Deployment or switches its image.
    pub commit_every: Duration,
    /// serve's `--event-ttl`; `None`: its default (1 h), so Events accumulate for an hour.
    pub event_ttl: Option<Duration>,
}

impl LoadConfig {
    pub fn new(tend: PathBuf, agents: usize, duration: Duration) -> LoadConfig {
        LoadConfig {
            tend,
            agents,
            duration,
            report_every: Duration::from_secs(1),
            commit_every: Duration::from_secs(5),
            event_ttl: None,
        }
    }
}

/// Latencies of one kind of request.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<f64>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1],
        }
    }
}

/// What the watches received and what the final check found.
#[derive(Debug, Clone, Default)]
pub struct EventCheck {
    pub watches: usize,
    /// Events received (ADDED, MODIFIED, DELETED) by all watches.
    pub events: u64,
    /// Pod-status writes whose new resourceVersion was looked for on the writer's pod watch.
    pub own_writes_checked: usize,
    pub own_writes_missing: usize,
    /// Objects of the final lists compared with the watches' views.
    pub final_objects_checked: usize,
    /// Objects missing, extra or at another resourceVersion in a watch's view.
    pub final_mismatches: usize,
    pub out_of_order: u64,
    pub relists: u64,
    /// Watches that ended (their timeout, a broken connection) and were resumed.
    pub resumed: u64,
    /// A few of the differences, for the report.
    pub examples: Vec<String>,
}

impl EventCheck {
    /// Every kind of drop, summed: the goal is 0.
    pub fn dropped(&self) -> usize {
        self.own_writes_missing
            + self.final_mismatches
            + self.out_of_order as usize
            + self.relists as usize
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub agents: usize,
    pub duration: Duration,
    pub deployments: usize,
    pub commits: usize,
    /// Every API request but watches.
    pub all: Latency,
    /// By kind of request (`PUT pod status`, ...).
    pub by_request: Vec<(String, Latency)>,
    /// Requests that failed: transport errors, 429, 5xx, other unexpected codes.
    pub errors: u64,
    pub error_examples: Vec<String>,
    /// Pod-status writes and deletions of pods that were gone meanwhile (404), expected.
    pub vanished: u64,
    /// serve's VmRSS every 5 s, and how it moved after the warm-up.
    pub rss: RssGrowth,
    pub events: EventCheck,
}

impl LoadReport {
    /// The goals missed, one line each (empty: all met).
    pub fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        if self.all.p99_ms > P99_GOAL_MS {
            misses.push(format!(
                "API p99 {:.1} ms > {P99_GOAL_MS} ms",
                self.all.p99_ms
            ));
        }
        if self.rss.grew_more_than(rss::GROWTH_GOAL) {
            misses.push(format!(
                "serve's VmRSS grew after the warm-up from {:.1} to {:.1} MiB ({:+.1}%)",
                self.rss.baseline_mib,
                self.rss.end_mib,
                self.rss.growth() * 100.0
            ));
        }
        if self.events.dropped() > 0 {
            misses.push(format!("{} watch events dropped", self.events.dropped()));
        }
        if self.errors > 0 {
            misses.push(format!("{} requests failed", self.errors));
        }
        misses
    }

    pub fn print(&self) {
        println!(
            "tend bench load: {} agents for {} s; {} Deployments ({} pods) + {} Services; {} commits",
            self.agents,
            self.duration.as_secs(),
            self.deployments,
            3 * self.deployments,
            self.deployments,
            self.commits
        );
        let row = |name: &str, l: &Latency, goal: &str| {
            println!(
                "  {:<30} {:>8}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.1} ms  {goal}",
                name, l.count, l.p50_ms, l.p99_ms, l.max_ms
            );
        };
        row("API requests (all)", &self.all, "(goal p99 <= 50 ms)");
        for (name, l) in &self.by_request {
            row(&format!("  {name}"), l, "");
        }
        println!(
            "  {:<30} {:>8}  (goal 0){}",
            "failed requests",
            self.errors,
            if self.error_examples.is_empty() {
                String::new()
            } else {
                format!(": {}", self.error_examples.join("; "))
            }
        );
        println!(
            "  {:<30} {:>8}  (pods deleted meanwhile: expected)",
            "404 on vanished pods", self.vanished
        );
        let m = &self.rss;
        println!(
            "  {:<30} start {:.1} MiB; after the warm-up ({:.0}-{:.0} s) {:.1} MiB; last {:.0} s {:.1} MiB: {:+.1}%; slope after the warm-up {:+.2} MiB/min; max {:.1} MiB  (goal: last <= after warm-up + {:.0}%)",
            "serve VmRSS (every 5 s)",
            m.start_mib,
            m.warmup_seconds,
            m.warmup_seconds + m.window_seconds,
            m.baseline_mib,
            m.window_seconds,
            m.end_mib,
            m.growth() * 100.0,
            m.slope_mib_per_min,
            m.max_mib,
            rss::GROWTH_GOAL * 100.0
        );
        println!(
            "    VmRSS, mean of each {:.0} s, MiB: {}",
            rss::SERIES_SECONDS,
            m.series_line()
        );
        let e = &self.events;
        println!(
            "  {:<30} {} watches, {} events; {} own writes and {} final objects checked",
            "watch events", e.watches, e.events, e.own_writes_checked, e.final_objects_checked
        );
        println!(
            "  {:<30} {:>8}  (goal 0: own writes missing {}, final-state mismatches {}, out of order {}, relists {}; watches resumed {})",
            "dropped watch events",
            e.dropped(),
            e.own_writes_missing,
            e.final_mismatches,
            e.out_of_order,
            e.relists,
            e.resumed
        );
        for example in &e.examples {
            println!("    {example}");
        }
        let misses = self.misses();
        if misses.is_empty() {
            println!("  all goals met");
        } else {
            println!("  MISSED: {}", misses.join("; "));
        }
    }
}

/// The YAML of app `i`: a Deployment of `replicas` at `tag` and its Service.
fn app_yaml(i: usize, replicas: usize, tag: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: app-{i}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app: app-{i}
    spec:
      containers:
      - name: web
        image: registry.local:5000/app-{i}:{tag}
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: app-{i}
spec:
  selector:
    app: app-{i}
  ports:
  - port: 80
    targetPort: 8080
"
    )
}

struct Serve {
    child: Child,
    url: String,
    admin: String,
    join: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(
    tend: &Path,
    repo: &Path,
    state: &Path,
    event_ttl: Option<Duration>,
) -> anyhow::Result<Serve> {
    let mut command = Command::new(tend);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(repo)
        .arg("--state")
        .arg(state);
    if let Some(ttl) = event_ttl {
        command.arg(format!("--event-ttl={}ms", ttl.as_millis()));
    }
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} serve", tend.display()))?;
    let stdout = child.stdout.take().context("serve's stdout")?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Keep reading serve's stdout, so that it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("serve printed {line:?} instead of its URL"))?
        .to_string();
    let read = |name: &str| -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(state.join(name))
            .with_context(|| format!("reading {name}"))?
            .trim()
            .to_string())
    };
    Ok(Serve {
        url,
        admin: read("admin.token")?,
        join: read("join.token")?,
        child,
    })
}

/// Latencies and failures of every request, shared by all agents.
#[derive(Default)]
struct Samples {
    by_request: HashMap<&'static str, Vec<f64>>,
    errors: u64,
    error_examples: Vec<String>,
    vanished: u64,
}

impl Samples {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.error_examples.len() < 5 {
            self.error_examples.push(what);
        }
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one watch received.
#[derive(Default)]
struct WatchRecord {
    /// The list path and field selector it follows.
    path: String,
    selector: Option<String>,
    /// Its view: object key -> resourceVersion.
    view: HashMap<String, u64>,
    /// Every (key, resourceVersion) received, from lists and events.
    seen: HashSet<(String, u64)>,
    last_rv: u64,
    events: u64,
    out_of_order: u64,
    relists: u64,
    resumed: u64,
    listed: bool,
    /// A few of the out-of-order events, for the report.
    examples: Vec<String>,
}

fn key_of(object: &Value) -> String {
    let (ns, name) = namespace_and_name(object);
    format!("{ns}/{name}")
}

fn rv_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One simulated agent's connection to serve.
struct Agent {
    name: String,
    address: Ipv4Addr,
    http: reqwest::Client,
    url: String,
    token: String,
    samples: Shared<Samples>,
}

impl Agent {
    /// A request whose latency is recorded under `what`; `Ok((status, body))` for any
    /// answer. Transport failures are recorded as errors.
    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Option<(StatusCode, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .query(query)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|b| (status, b))
            }
            Err(e) => Err(e),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut samples = lock(&self.samples);
        samples.by_request.entry(what).or_default().push(ms);
        match outcome {
            Ok((status, bytes)) => {
                let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Some((status, value))
            }
            Err(e) => {
                samples.error(format!("{what} from {}: {e}", self.name));
                None
            }
        }
    }

    fn unexpected(&self, what: &str, status: StatusCode, body: &Value) {
        let message = body.get("message").and_then(Value::as_str).unwrap_or("");
        lock(&self.samples).error(format!("{what} from {}: {status} {message}", self.name));
    }
}

/// Follows `record`'s path as the agent's informers do, until `stop`: lists, then watches
/// from the list's resourceVersion, resuming from the last one seen; lists again on 410.
/// `pods`, when given, receives the followed objects (the pods the agent reports on).
async fn follow(
    agent: Arc<Agent>,
    record: Shared<WatchRecord>,
    pods: Option<Shared<HashMap<String, Value>>>,
    mut stop: watch::Receiver<bool>,
) {
    let (path, selector) = {
        let r = lock(&record);
        (r.path.clone(), r.selector.clone())
    };
    let mut from: Option<u64> = None;
    while !*stop.borrow() {
        let step = async {
            match from {
                None => list_into(&agent, &path, selector.as_deref(), &record, &pods).await,
                Some(rv) => {
                    watch_into(&agent, &path, selector.as_deref(), rv, &record, &pods).await
                }
            }
        };
        let next = tokio::select! {
            next = step => next,
            _ = stop.wait_for(|s| *s) => return,
        };
        match next {
            Some(next) => from = next,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Lists `path`: the view is replaced. Returns where to watch from (`None`: failed).
async fn list_into(
    agent: &Agent,
    path: &str,
    selector: Option<&str>,
    record: &Shared<WatchRecord>,
    pods: &Option<Shared<HashMap<String, Value>>>,
) -> Option<Option<u64>> {
    let query: Vec<(&str, &str)> = selector.map(|s| ("fieldSelector", s)).into_iter().collect();
    let (status, list) = agent.call("LIST", Method::GET, path, &query, None).await?;
    if !status.is_success() {
        agent.unexpected("LIST", status, &list);
        return None;
    }
    let rv = rv_of(&list);
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut r = lock(record);
    if r.listed {
        r.relists += 1;
    }
    r.listed = true;
    r.view = items.iter().map(|o| (key_of(o), rv_of(o))).collect();
    for item in &items {
        r.seen.insert((key_of(item), rv_of(item)));
    }
    r.last_rv = rv;
    drop(r);
    if let Some(pods) = pods {
        *lock(pods) = items.into_iter().map(|o| (key_of(&o), o)).collect();
    }
    Some(Some(rv))
}

/// One watch from `rv` until it ends. Returns where to resume (`Some(None)`: list again).
async fn watch_into(
    agent: &Agent,
    path: &str,
    selector: Option<&str>,
    rv: u64,
    record: &Shared<WatchRecord>,
    pods: &Option<Shared<HashMap<String, Value>>>,
) -> Option<Option<u64>> {
    use futures_util::StreamExt;
    let rv_text = rv.to_string();
    let mut query = vec![
        ("watch", "true"),
        ("resourceVersion", rv_text.as_str()),
        ("timeoutSeconds", "300"),
    ];
    if let Some(s) = selector {
        query.push(("fieldSelector", s));
    }
    let response = agent
        .http
        .get(format!("{}{path}", agent.url))
        .bearer_auth(&agent.token)
        .query(&query)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            lock(&agent.samples).error(format!("watch {path} from {}: {e}", agent.name));
            return None;
        }
    };
    let status = response.status();
    if status == StatusCode::GONE {
        return Some(None);
    }
    if !status.is_success() {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        agent.unexpected("watch", status, &body);
        return None;
    }
    let mut last = rv;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let Ok(mut event) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let object = event.get_mut("object").map(Value::take).unwrap_or_default();
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let object_rv = rv_of(&object);
            match kind {
                "BOOKMARK" => {
                    last = last.max(object_rv);
                    continue;
                }
                "ERROR" => {
                    if object.get("code").and_then(Value::as_u64) == Some(410) {
                        return Some(None);
                    }
                    lock(&agent.samples)
                        .error(format!("watch {path} from {}: ERROR {object}", agent.name));
                    return Some(Some(last));
                }
                "ADDED" | "MODIFIED" | "DELETED" => {}
                _ => continue,
            }
            let key = key_of(&object);
            {
                let mut r = lock(record);
                r.events += 1;
                if object_rv < r.last_rv || !r.seen.insert((key.clone(), object_rv)) {
                    r.out_of_order += 1;
                    if r.examples.len() < 2 {
                        let last = r.last_rv;
                        r.examples.push(format!(
                            "{} {path}: {kind} {key} at {object_rv} after {last}",
                            agent.name
                        ));
                    }
                }
                r.last_rv = r.last_rv.max(object_rv);
                if kind == "DELETED" {
                    r.view.remove(&key);
                } else {
                    r.view.insert(key.clone(), object_rv);
                }
            }
            if let Some(pods) = pods {
                let mut pods = lock(pods);
                if kind == "DELETED" {
                    pods.remove(&key);
                } else {
                    pods.insert(key, object);
                }
            }
            last = last.max(object_rv);
        }
    }
    lock(record).resumed += 1;
    Some(Some(last))
}

/// The agent's pods: IPs given out, start times, and the writes to check.
#[derive(Default)]
struct PodBook {
    ips: HashMap<String, Ipv4Addr>,
    used: BTreeSet<Ipv4Addr>,
    started: HashMap<String, String>,
}

/// The node credential of `name`, registered with the join token (retried while serve
/// starts or sheds load).
async fn node_credential(
    http: &reqwest::Client,
    url: &str,
    join: &str,
    name: &str,
) -> anyhow::Result<String> {
    let mut last = String::new();
    for _ in 0..20 {
        match http
            .post(format!("{url}{}", crate::server::path::REGISTER_PATH))
            .bearer_auth(join)
            .json(&json!({ "name": name }))
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await?;
                if let Some(credential) = body.get("credential").and_then(Value::as_str) {
                    return Ok(credential.to_string());
                }
                last = format!("no credential in {body}");
            }
            Ok(response) => last = format!("{}", response.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{name} could not register its credential: {last}")
}

/// Registers the Node; returns its object as created (or found).
async fn register(agent: &Agent) -> anyhow::Result<()> {
    let capacity: Map<String, Value> = [
        ("cpu".to_string(), json!("4")),
        ("memory".to_string(), json!("8Gi")),
        ("pods".to_string(), json!("110")),
    ]
    .into_iter()
    .collect();
    let identity = identity(agent);
    let status = node_status(&identity, &capacity, None, &now_millis());
    let node = node_object(&agent.name, &Map::new(), status);
    for _ in 0..20 {
        if let Some((status, body)) = agent
            .call("POST node", Method::POST, "/api/v1/nodes", &[], Some(&node))
            .await
        {
            if status.is_success() || status == StatusCode::CONFLICT {
                return Ok(());
            }
            agent.unexpected("POST node", status, &body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("{} could not register", agent.name)
}

fn identity(agent: &Agent) -> NodeIdentity<'_> {
    NodeIdentity {
        name: &agent.name,
        address: IpAddr::V4(agent.address),
        version: "tend-load",
        runtime: "sim://0",
        port: None,
    }
}

/// Every `every` until `until`: the Node's status, then each pod's (or its deletion).
/// Returns the pod-status writes made: (pod key, new resourceVersion).
async fn report(
    agent: Arc<Agent>,
    pods: Shared<HashMap<String, Value>>,
    every: Duration,
    until: tokio::time::Instant,
) -> Vec<(String, u64)> {
    let capacity: Map<String, Value> = [
        ("cpu".to_string(), json!("4")),
        ("memory".to_string(), json!("8Gi")),
        ("pods".to_string(), json!("110")),
    ]
    .into_iter()
    .collect();
    let node_path = format!("/api/v1/nodes/{}/status", agent.name);
    let mut node_status_now: Option<Value> = None;
    let mut cidr: Option<String> = None;
    let mut book = PodBook::default();
    let mut writes = Vec::new();
    // Agents start spread over one period, as real nodes do not tick together.
    let offset = every.mul_f64((agent.address.octets()[3] as f64 % 97.0) / 97.0);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let tick = ticks.tick().await;
        if tick >= until {
            break;
        }
        let identity = identity(&agent);
        let status = node_status(
            &identity,
            &capacity,
            node_status_now.as_ref(),
            &now_millis(),
        );
        let body = node_object(&agent.name, &Map::new(), status.clone());
        if let Some((code, node)) = agent
            .call("PUT node status", Method::PUT, &node_path, &[], Some(&body))
            .await
        {
            if code.is_success() {
                node_status_now = Some(status);
                if let Some(c) = node.pointer("/spec/podCIDR").and_then(Value::as_str) {
                    cidr = Some(c.to_string());
                }
            } else {
                agent.unexpected("PUT node status", code, &node);
            }
        }
        let Some(cidr) = cidr.clone() else {
            continue;
        };
        let current: Vec<(String, Value)> = lock(&pods)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let keys: HashSet<&String> = current.iter().map(|(k, _)| k).collect();
        let gone: Vec<String> = book
            .ips
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(ip) = book.ips.remove(&key) {
                book.used.remove(&ip);
            }
            book.started.remove(&key);
        }
        for (key, pod) in current {
            let (ns, name) = namespace_and_name(&pod);
            let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
            if crate::api::pod::is_terminating(&pod) {
                if let Some((code, body)) = agent
                    .call("DELETE pod", Method::DELETE, &path, &[], None)
                    .await
                {
                    if code == StatusCode::NOT_FOUND {
                        lock(&agent.samples).vanished += 1;
                    } else if !code.is_success() {
                        agent.unexpected("DELETE pod", code, &body);
                    }
                }
                continue;
            }
            let ip = match book.ips.get(&key) {
                Some(ip) => *ip,
                None => {
                    let Some(ip) = lowest_free_ip(&cidr, &book.used) else {
                        continue;
                    };
                    book.used.insert(ip);
                    book.ips.insert(key.clone(), ip);
                    ip
                }
            };
            let started = book
                .started
                .entry(key.clone())
                .or_insert_with(now_millis)
                .clone();
            let status = running_status(&pod, ip, agent.address, &started, true, &now_millis());
            let mut body = with_status(&pod, status);
            if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            let before = rv_of(&pod);
            if let Some((code, written)) = agent
                .call(
                    "PUT pod status",
                    Method::PUT,
                    &format!("{path}/status"),
                    &[],
                    Some(&body),
                )
                .await
            {
                if code.is_success() {
                    let after = rv_of(&written);
                    if after > before {
                        writes.push((key, after));
                    }
                } else if code == StatusCode::NOT_FOUND {
                    lock(&agent.samples).vanished += 1;
                } else {
                    agent.unexpected("PUT pod status", code, &written);
                }
            }
        }
    }
    writes
}

/// serve's resident memory in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(kb / 1024.0)
}

/// Commits a change every `every` until `until`: odd commits scale a Deployment between 3
/// and 4 replicas, even ones switch its image between two tags, so that a rollout revives
/// the older ReplicaSet (as `tend rollout undo` does) instead of adding one. The store's
/// state then stops growing within one pass over the apps (~8 min) rather than when every
/// Deployment's history reaches `revisionHistoryLimit` (~90 min): serve's memory after the
/// warm-up is serve's own, not a growing workload's. Returns the number of commits.
async fn commit_changes(
    repo: PathBuf,
    apps: usize,
    every: Duration,
    until: tokio::time::Instant,
) -> anyhow::Result<usize> {
    let mut replicas = vec![3usize; apps];
    let mut tags = vec![1usize; apps];
    let mut commits = 0;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if ticks.tick().await >= until {
            return Ok(commits);
        }
        let i = (commits * 7) % apps;
        let message = if commits % 2 == 1 {
            replicas[i] = if replicas[i] == 3 { 4 } else { 3 };
            format!("scale app-{i} to {}", replicas[i])
        } else {
            tags[i] = 3 - tags[i];
            format!("app-{i} to v{}", tags[i])
        };
        let yaml = app_yaml(i, replicas[i], &format!("v{}", tags[i]));
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            std::fs::write(repo.join(format!("apps/app-{i}.yaml")), yaml)?;
            super::git(&repo, &["commit", "-q", "-a", "-m", &message])
        })
        .await
        .context("committing")??;
        commits += 1;
    }
}

/// Removes the work directory (repository, serve's state) when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the load (see the module's documentation) and reports what it measured.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    let agents = config.agents.max(1);
    let apps = agents;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let work = WorkDir(std::env::temp_dir().join(format!(
        "tend-bench-load-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let _ = std::fs::remove_dir_all(&work.0);
    let repo = work.0.join("repo");
    std::fs::create_dir_all(repo.join("apps"))?;
    super::git(&repo, &["init", "-q", "-b", "main"])?;
    for i in 0..apps {
        std::fs::write(
            repo.join(format!("apps/app-{i}.yaml")),
            app_yaml(i, 3, "v1"),
        )?;
    }
    super::git(&repo, &["add", "-A"])?;
    super::git(&repo, &["commit", "-q", "-m", "load: initial apps"])?;
    let serve = start_serve(&config.tend, &repo, &work.0.join("state"), config.event_ttl)?;
    let pid = serve.child.id();

    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // The initial revision applied: every Deployment is there.
    let deployments_path = format!("{}/apis/apps/v1/deployments", serve.url);
    let started = Instant::now();
    loop {
        let count = admin
            .get(&deployments_path)
            .bearer_auth(&serve.admin)
            .send()
            .await
            .ok()
            .map(|r| r.json::<Value>());
        let count = match count {
            Some(body) => body
                .await
                .ok()
                .and_then(|v| v.get("items").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(0),
            None => 0,
        };
        if count >= apps {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("serve did not apply the {apps} Deployments within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let samples: Shared<Samples> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agent_list = Vec::new();
    let mut records = Vec::new();
    let mut pod_maps = Vec::new();
    let mut followers = Vec::new();
    for i in 0..agents {
        let address = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(address))
            .pool_max_idle_per_host(4)
            .build()?;
        let name = format!("load-{i:03}");
        // The join token only registers; the node then acts with its own credential.
        let token = node_credential(&http, &serve.url, &serve.join, &name).await?;
        let agent = Arc::new(Agent {
            name,
            address,
            http,
            url: serve.url.clone(),
            token,
            samples: Arc::clone(&samples),
        });
        register(&agent).await?;
        let pods: Shared<HashMap<String, Value>> = Arc::default();
        let mut agent_records = Vec::new();
        for (path, selector) in [
            (
                "/api/v1/pods",
                Some(format!("spec.nodeName={}", agent.name)),
            ),
            ("/api/v1/services", None),
            ("/api/v1/endpoints", None),
        ] {
            let record: Shared<WatchRecord> = Arc::new(Mutex::new(WatchRecord {
                path: path.to_string(),
                selector,
                ..WatchRecord::default()
            }));
            let pods_sink = (path == "/api/v1/pods").then(|| Arc::clone(&pods));
            followers.push(tokio::spawn(follow(
                Arc::clone(&agent),
                Arc::clone(&record),
                pods_sink,
                stop_rx.clone(),
            )));
            agent_records.push(record);
        }
        records.push(agent_records);
        pod_maps.push(pods);
        agent_list.push(agent);
    }

    // The load: reports, commits, memory samples.
    let t0 = tokio::time::Instant::now();
    let until = t0 + config.duration;
    let reporters: Vec<_> = agent_list
        .iter()
        .zip(&pod_maps)
        .map(|(agent, pods)| {
            tokio::spawn(report(
                Arc::clone(agent),
                Arc::clone(pods),
                config.report_every,
                until,
            ))
        })
        .collect();
    let committer = tokio::spawn(commit_changes(
        repo.clone(),
        apps,
        config.commit_every,
        until,
    ));
    let mut rss = Vec::new();
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        let now = every.tick().await;
        if now > until {
            break;
        }
        if let Some(mib) = rss_mib(pid) {
            rss.push((now.duration_since(t0).as_secs_f64(), mib));
        }
    }
    let mut own_writes: Vec<Vec<(String, u64)>> = Vec::new();
    for reporter in reporters {
        own_writes.push(reporter.await.context("an agent's reporter")?);
    }
    let commits = committer.await.context("the committer")??;

    // The check: every watch's view must reach a fresh list of its selection, and hold every
    // pod-status write its agent made. Controllers may still be writing: retry for a while.
    let check_until = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let check = check_watches(&agent_list, &records, &own_writes).await;
        if check.dropped() == 0 || Instant::now() > check_until {
            break check;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = stop_tx.send(true);
    for follower in followers {
        let _ = follower.await;
    }
    drop(serve);

    let samples = std::mem::take(&mut *lock(&samples));
    let mut all = Vec::new();
    let mut by_request: Vec<(String, Latency)> = Vec::new();
    let mut names: Vec<&&str> = samples.by_request.keys().collect();
    names.sort();
    for name in names {
        let values = samples.by_request[*name].clone();
        all.extend_from_slice(&values);
        by_request.push((name.to_string(), Latency::of(values)));
    }
    Ok(LoadReport {
        agents,
        duration: config.duration,
        deployments: apps,
        commits,
        all: Latency::of(all),
        by_request,
        errors: samples.errors,
        error_examples: samples.error_examples,
        vanished: samples.vanished,
        rss: RssGrowth::of(rss, config.duration.as_secs_f64()),
        events,
    })
}

/// Compares every watch with a fresh list of its selection, and looks up each agent's own
/// pod-status writes on its pod watch.
async fn check_watches(
    agents: &[Arc<Agent>],
    records: &[Vec<Shared<WatchRecord>>],
    own_writes: &[Vec<(String, u64)>],
) -> EventCheck {
    let mut check = EventCheck::default();
    let note = |check: &mut EventCheck, what: String| {
        if check.examples.len() < 8 {
            check.examples.push(what);
        }
    };
    // Services and Endpoints are the same for all: list them once.
    let mut shared_lists: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for (agent, agent_records) in agents.iter().zip(records) {
        for record in agent_records {
            let (path, selector) = {
                let r = lock(record);
                (r.path.clone(), r.selector.clone())
            };
            let listed = match (&selector, shared_lists.get(&path)) {
                (None, Some(listed)) => listed.clone(),
                _ => {
                    let query: Vec<(&str, &str)> = selector
                        .as_deref()
                        .map(|s| ("fieldSelector", s))
                        .into_iter()
                        .collect();
                    let Ok(response) = agent
                        .http
                        .get(format!("{}{path}", agent.url))
                        .bearer_auth(&agent.token)
                        .query(&query)
                        .send()
                        .await
                    else {
                        check.final_mismatches += 1;
                        note(&mut check, format!("{}: listing {path} failed", agent.name));
                        continue;
                    };
                    let list: Value = response.json().await.unwrap_or(Value::Null);
                    let listed: HashMap<String, u64> = list
                        .get("items")
                        .and_then(Value::as_array)
                        .map(|items| items.iter().map(|o| (key_of(o), rv_of(o))).collect())
                        .unwrap_or_default();
                    if selector.is_none() {
                        shared_lists.insert(path.clone(), listed.clone());
                    }
                    listed
                }
            };
            let r = lock(record);
            check.watches += 1;
            check.events += r.events;
            check.out_of_order += r.out_of_order;
            check.relists += r.relists;
            check.resumed += r.resumed;
            for example in &r.examples {
                note(&mut check, example.clone());
            }
            check.final_objects_checked += listed.len();
            for (key, rv) in &listed {
                match r.view.get(key) {
                    Some(seen) if seen == rv => {}
                    Some(seen) => {
                        check.final_mismatches += 1;
                        note(
                            &mut check,
                            format!("{} {path}: {key} at {seen}, the list has {rv}", agent.name),
                        );
                    }
                    None => {
                        check.final_mismatches += 1;
                        note(
                            &mut check,
                            format!("{} {path}: {key} never seen", agent.name),
                        );
                    }
                }
            }
            for key in r.view.keys().filter(|k| !listed.contains_key(*k)) {
                check.final_mismatches += 1;
                note(
                    &mut check,
                    format!("{} {path}: {key} is gone, no DELETED received", agent.name),
                );
            }
        }
    }
    for ((agent, agent_records), writes) in agents.iter().zip(records).zip(own_writes) {
        let Some(pods) = agent_records.first() else {
            continue;
        };
        let r = lock(pods);
        for (key, rv) in writes {
            check.own_writes_checked += 1;
            if !r.seen.contains(&(key.clone(), *rv)) {
                check.own_writes_missing += 1;
                note(
                    &mut check,
                    format!("{}: its write of {key} at {rv} never came back", agent.name),
                );
            }
        }
    }
    check
}

/// `tend bench load`: runs [`run`] with this binary's serve and prints the table.
pub fn main(
    agents: usize,
    duration: Duration,
    event_ttl: Option<Duration>,
) -> anyhow::Result<std::process::ExitCode> {
    let tend = std::env::current_exe().context("locating the tend binary")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let config = LoadConfig {
        event_ttl,
        ..LoadConfig::new(tend, agents, duration)
    };
    let report = runtime.block_on(run(config))?;
    report.print();
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_sample_at_the_rank() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        let one = Latency::of(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Latency::of(Vec::new()).count, 0);
    }

    #[test]
    fn misses_name_each_goal() {
        let flat: Vec<(f64, f64)> = (0..=60).map(|i| (f64::from(i) * 5.0, 50.0)).collect();
        let mut report = LoadReport {
            rss: RssGrowth::of(flat, 300.0),
            ..LoadReport::default()
        };
        report.all.p99_ms = 12.0;
        assert!(report.misses().is_empty());
        report.all.p99_ms = 51.0;
        let growing: Vec<(f64, f64)> = (0..=60)
            .map(|i| (f64::from(i) * 5.0, 50.0 + f64::from(i)))
            .collect();
        report.rss = RssGrowth::of(growing, 300.0);
        report.events.relists = 1;
        report.errors = 2;
        assert_eq!(report.misses().len(), 4, "{:?}", report.misses());
    }

    #[test]
    fn generated_apps_are_valid() {
        let limits = crate::manifest::Limits::default();
        let parsed = crate::manifest::load_file("a.yaml", app_yaml(3, 4, "v2").as_bytes(), &limits);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 2);
    }
}
