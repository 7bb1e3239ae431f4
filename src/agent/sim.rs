//! `tend sim-node`: a simulated node that speaks the same API as a real agent. It registers
//! its Node (capacity, address, `kubeletVersion: tend-sim`), heartbeats, and for each pod
//! bound to it pretends to run it: after `--start-delay` the pod is Running with an IP from
//! the node's pod CIDR, after `--ready-delay` more it is Ready. A pod marked for deletion is
//! "stopped" and deleted. Restarted, it adopts the pods already bound to it (keeping their
//! IPs). Nothing is executed: the control plane can be tested without containers.

use super::client::{AgentClient, ClientError, PodEvent, backoff, namespace_and_name, with_status};
use super::parse_pairs;
use super::registration::Registration;
use crate::api::pod;
use anyhow::Context as _;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Flags of `tend sim-node`. The servers come from the global `--server URL[,URL]`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimNodeArgs {
    /// API servers, tried in order (filled from `--server`).
    #[arg(skip)]
    pub servers: Vec<String>,
    /// File holding the join token: the node registers with it at start (a new credential
    /// each time: a simulated node keeps no state), then uses its own credential.
    #[arg(long)]
    pub token_file: PathBuf,
    /// PEM CA certificate(s) the API server's TLS certificate must chain to (filled from the
    /// global `--ca`).
    #[arg(skip)]
    pub ca: Option<PathBuf>,
    /// The node's name.
    #[arg(long)]
    pub name: String,
    /// Labels the Node is created with (kept as they are when it already exists).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// The node's InternalIP (and every pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Ipv4Addr,
    /// Port of the (simulated) log endpoint on `--address`; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Capacity (and allocatable), Kubernetes quantities.
    #[arg(long, default_value = "cpu=4,memory=8Gi,pods=110")]
    pub capacity: String,
    /// How often the node posts its status.
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    pub heartbeat: Duration,
    /// How long a pod takes to start running.
    #[arg(long, default_value = "100ms", value_parser = parse_delay)]
    pub start_delay: Duration,
    /// How long a running pod takes to become Ready.
    #[arg(long, default_value = "0s", value_parser = parse_delay)]
    pub ready_delay: Duration,
}

impl SimNodeArgs {
    /// The flags' defaults, for tests that run a node in-process.
    pub fn new(servers: Vec<String>, token_file: PathBuf, name: &str) -> SimNodeArgs {
        SimNodeArgs {
            servers,
            token_file,
            ca: None,
            name: name.to_string(),
            labels: String::new(),
            address: Ipv4Addr::LOCALHOST,
            port: 0,
            capacity: "cpu=4,memory=8Gi,pods=110".into(),
            heartbeat: Duration::from_secs(2),
            start_delay: Duration::from_millis(100),
            ready_delay: Duration::ZERO,
        }
    }
}

/// A duration such as `2s` or `100ms`; zero is allowed.
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    if digits.parse::<u64>() == Ok(0) {
        return Ok(Duration::ZERO);
    }
    crate::cli::serve::parse_duration(s)
}

/// The lowest free pod address of `cidr` (a /24): `.1` is the node's bridge, so pods start
/// at `.2`; the broadcast address is never given.
pub fn lowest_free_ip(cidr: &str, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (addr, prefix) = cidr.split_once('/')?;
    let base = u32::from(addr.parse::<Ipv4Addr>().ok()?);
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 30)?;
    let size = 1u32 << (32 - prefix);
    (2..size - 1)
        .map(|i| Ipv4Addr::from(base.wrapping_add(i)))
        .find(|ip| !used.contains(ip))
}

/// Whether `ip` lies in `cidr`.
pub fn cidr_contains(cidr: &str, ip: Ipv4Addr) -> bool {
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u32>()) else {
        return false;
    };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32))
    };
    u32::from(ip) & mask == u32::from(base) & mask
}

/// The status of a simulated running pod: every container running since `started_at`, ready
/// when `ready`; conditions keep their `lastTransitionTime` while their status holds, and
/// conditions this node does not own (PodScheduled) are kept.
pub fn running_status(
    pod: &Value,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    started_at: &str,
    ready: bool,
    now: &str,
) -> Value {
    let previous = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    let conditions = super::pod_conditions(&previous, ready, "ContainersNotReady", now);
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let container_statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            json!({
                "name": name,
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "image": image,
                "imageID": format!("sim://{image}"),
                "containerID": format!("sim://{name}"),
                "state": {"running": {"startedAt": started_at}},
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": previous.get("startTime").cloned().unwrap_or_else(|| json!(started_at)),
        "containerStatuses": container_statuses,
        "qosClass": previous.get("qosClass").cloned().unwrap_or_else(|| json!("BestEffort")),
    })
}

/// One pod this node "runs".
struct SimPod {
    uid: String,
    /// The newest version seen (for status writes).
    latest: Value,
    ip: Option<Ipv4Addr>,
    started_at: Option<String>,
    ready: bool,
    /// The last status write failed (no API server answered): retried on the next heartbeat,
    /// or the pod would stay Pending in the API for ever after a control-plane restart.
    unwritten: bool,
}

enum Step {
    Start,
    Ready,
}

struct Node {
    args: SimNodeArgs,
    client: AgentClient,
    registration: Registration,
    pod_cidr: Option<String>,
    pods: BTreeMap<(String, String), SimPod>,
    used_ips: BTreeSet<Ipv4Addr>,
    steps: mpsc::UnboundedSender<((String, String), String, Step)>,
    /// Terminating pods whose deletion failed: retried on the next heartbeat.
    undeleted: BTreeSet<(String, String)>,
}

/// `tend sim-node`: runs until SIGINT or SIGTERM.
pub fn main(
    mut args: SimNodeArgs,
    server: &str,
    log: crate::telemetry::LogFormat,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(log);
    args.servers = vec![server.to_string()];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown::signal().await;
            let _ = stop_tx.send(true);
        });
        run(args, stop_rx).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs a simulated node until `shutdown` turns true.
pub async fn run(args: SimNodeArgs, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let labels = parse_pairs("--labels", &args.labels).map_err(anyhow::Error::msg)?;
    let capacity = parse_pairs("--capacity", &args.capacity).map_err(anyhow::Error::msg)?;
    let Some(access) = super::credential::obtain(
        &args.servers,
        &args.token_file,
        args.ca.as_deref(),
        None,
        &args.name,
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let client = access.client()?;
    let bound_pods = super::logs::PodDirectory::default();
    let (log_port, log_server) = sim_log_endpoint(&args, bound_pods.clone()).await?;
    let registration = Registration {
        client: access.client()?,
        name: args.name.clone(),
        address: args.address.into(),
        version: "tend-sim".to_string(),
        runtime: "sim://0".to_string(),
        port: log_port,
        labels,
        capacity,
    };
    let (steps_tx, mut steps) = mpsc::unbounded_channel();
    let mut node = Node {
        args,
        client,
        registration,
        pod_cidr: None,
        pods: BTreeMap::new(),
        used_ips: BTreeSet::new(),
        steps: steps_tx,
        undeleted: BTreeSet::new(),
    };
    let mut failures = 0;
    loop {
        match node.register().await {
            Ok(()) => break,
            Err(e) => tracing::warn!(node = %node.args.name, "registering: {e}"),
        }
        let wait = backoff(failures);
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = super::stopped(&mut shutdown) => return Ok(()),
        }
    }
    tracing::info!(node = %node.args.name, "registered");
    let (events_tx, mut events) = mpsc::channel(256);
    let selector = format!("spec.nodeName={}", node.args.name);
    let follower = {
        let client = access.client()?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move { client.follow_pods(&selector, events_tx, shutdown).await })
    };
    let mut heartbeats = tokio::time::interval(node.args.heartbeat);
    heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => break,
            _ = heartbeats.tick() => {
                if let Err(e) = node.heartbeat().await {
                    tracing::warn!(node = %node.args.name, "heartbeat: {e}");
                } else {
                    node.retry_failed_writes().await;
                }
            }
            event = events.recv() => match event {
                Some(event) => node.on_event(event).await,
                None => break,
            },
            Some((key, uid, step)) = steps.recv() => node.on_step(key, &uid, step).await,
        }
        bound_pods.replace(node.pods.values().map(|p| &p.latest));
    }
    follower.abort();
    if let Some(server) = log_server {
        server.abort();
    }
    tracing::info!(node = %node.args.name, "stopped");
    Ok(())
}

/// Starts the simulated log endpoint. A node that cannot listen still simulates pods (it
/// advertises no port, and `tend logs` says the agent is unreachable).
async fn sim_log_endpoint(
    args: &SimNodeArgs,
    pods: super::logs::PodDirectory,
) -> anyhow::Result<(Option<u16>, Option<tokio::task::JoinHandle<()>>)> {
    let key = super::logs::read_key(&args.token_file)?;
    let listener = match super::logs::bind(args.address.into(), args.port).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(node = %args.name, "{e}; serving no logs");
            return Ok((None, None));
        }
    };
    let port = listener.local_addr().map_or(args.port, |a| a.port());
    let server = std::sync::Arc::new(super::logs::LogServer {
        node: args.name.clone(),
        key,
        pods,
        source: super::logs::LogSource::Simulated,
        poll: Duration::from_millis(250),
    });
    Ok((
        Some(port),
        Some(tokio::spawn(super::logs::serve(listener, server))),
    ))
}

impl Node {
    async fn register(&mut self) -> Result<(), ClientError> {
        if let Some(cidr) = self.registration.register().await? {
            self.pod_cidr = Some(cidr);
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), ClientError> {
        if let Some(cidr) = self.registration.heartbeat().await? {
            self.pod_cidr = Some(cidr);
        }
        Ok(())
    }

    async fn on_event(&mut self, event: PodEvent) {
        match event {
            PodEvent::Listed(pods) => {
                let listed: BTreeSet<(String, String)> =
                    pods.iter().map(namespace_and_name).collect();
                let gone: Vec<_> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.forget(&key);
                }
                for pod in pods {
                    self.on_pod(pod).await;
                }
            }
            PodEvent::Applied(pod) => self.on_pod(pod).await,
            PodEvent::Deleted(pod) => self.forget(&namespace_and_name(&pod)),
        }
    }

    fn forget(&mut self, key: &(String, String)) {
        if let Some(gone) = self.pods.remove(key)
            && let Some(ip) = gone.ip
        {
            self.used_ips.remove(&ip);
        }
    }

    async fn on_pod(&mut self, latest: Value) {
        let key = namespace_and_name(&latest);
        let uid = latest
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if pod::is_terminating(&latest) {
            // Nothing runs, so stopping is immediate.
            match self.client.delete_pod(&key.0, &key.1).await {
                Err(e) if !e.is_not_found() => {
                    tracing::warn!(pod = %key.1, "deleting a stopped pod: {e}");
                    self.undeleted.insert(key);
                }
                _ => {
                    self.undeleted.remove(&key);
                    self.forget(&key);
                }
            }
            return;
        }
        if let Some(known) = self.pods.get_mut(&key)
            && known.uid == uid
        {
            known.latest = latest;
            return;
        }
        // A new pod, or a pod already bound before a restart (adopted with its IP).
        self.forget(&key);
        let adopted_ip = latest
            .pointer("/status/podIP")
            .and_then(Value::as_str)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !self.used_ips.contains(ip))
            .filter(|ip| {
                self.pod_cidr
                    .as_deref()
                    .is_none_or(|cidr| cidr_contains(cidr, *ip))
            });
        let running = latest.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
        let started_at = latest
            .pointer("/status/startTime")
            .and_then(Value::as_str)
            .map(str::to_string);
        let ready = pod::is_ready(&latest);
        let adopt = running && adopted_ip.is_some() && started_at.is_some();
        if let Some(ip) = adopted_ip.filter(|_| adopt) {
            self.used_ips.insert(ip);
        }
        self.pods.insert(
            key.clone(),
            SimPod {
                uid: uid.clone(),
                latest,
                ip: adopted_ip.filter(|_| adopt),
                started_at: started_at.filter(|_| adopt),
                ready: adopt && ready,
                unwritten: false,
            },
        );
        match (adopt, ready) {
            (true, true) => {}
            (true, false) => self.schedule(key, uid, Step::Ready, self.args.ready_delay),
            (false, _) => self.schedule(key, uid, Step::Start, self.args.start_delay),
        }
    }

    /// Writes again what a control-plane outage refused: the deletions of stopped pods and
    /// the statuses of started ones.
    async fn retry_failed_writes(&mut self) {
        for key in std::mem::take(&mut self.undeleted) {
            match self.client.get_pod(&key.0, &key.1).await {
                Ok(pod) => self.on_pod(pod).await,
                Err(e) if e.is_not_found() => self.forget(&key),
                Err(_) => {
                    self.undeleted.insert(key);
                }
            }
        }
        let unwritten: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, p)| p.unwritten)
            .map(|(k, _)| k.clone())
            .collect();
        for key in unwritten {
            self.write_status(&key).await;
        }
    }

    fn schedule(&self, key: (String, String), uid: String, step: Step, after: Duration) {
        let steps = self.steps.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = steps.send((key, uid, step));
        });
    }

    async fn on_step(&mut self, key: (String, String), uid: &str, step: Step) {
        let Some(pod) = self.pods.get(&key).filter(|p| p.uid == uid) else {
            return;
        };
        match step {
            Step::Start if pod.started_at.is_some() => {}
            Step::Start => {
                let Some(cidr) = self.pod_cidr.clone() else {
                    // No pod CIDR yet: the node controller has not given one; try again.
                    self.schedule(key, uid.to_string(), Step::Start, self.args.heartbeat);
                    return;
                };
                let Some(ip) = lowest_free_ip(&cidr, &self.used_ips) else {
                    tracing::warn!(pod = %key.1, "no free address in {cidr}");
                    self.schedule(key, uid.to_string(), Step::Start, self.args.heartbeat);
                    return;
                };
                self.used_ips.insert(ip);
                let ready = self.args.ready_delay.is_zero();
                if let Some(pod) = self.pods.get_mut(&key) {
                    pod.ip = Some(ip);
                    pod.started_at = Some(crate::controller::node::seconds(jiff::Timestamp::now()));
                    pod.ready = ready;
                }
                self.write_status(&key).await;
                if !ready {
                    self.schedule(key, uid.to_string(), Step::Ready, self.args.ready_delay);
                }
            }
            Step::Ready => {
                if let Some(pod) = self.pods.get_mut(&key) {
                    pod.ready = true;
                }
                self.write_status(&key).await;
            }
        }
    }

    /// Writes the pod's simulated status, guarded by its resourceVersion; after a conflict
    /// reads the pod again and retries.
    async fn write_status(&mut self, key: &(String, String)) {
        // Until a write succeeds, the next heartbeat writes again.
        if let Some(pod) = self.pods.get_mut(key) {
            pod.unwritten = true;
        }
        for _ in 0..5 {
            let Some(pod) = self.pods.get(key) else {
                return;
            };
            let (Some(ip), Some(started_at)) = (pod.ip, pod.started_at.clone()) else {
                return;
            };
            let now = crate::controller::node::seconds(jiff::Timestamp::now());
            let status = running_status(
                &pod.latest,
                ip,
                self.args.address,
                &started_at,
                pod.ready,
                &now,
            );
            match self
                .client
                .put_pod_status(&with_status(&pod.latest, status))
                .await
            {
                Ok(stored) => {
                    if let Some(pod) = self.pods.get_mut(key) {
                        pod.latest = stored;
                        pod.unwritten = false;
                    }
                    return;
                }
                Err(e) if e.is_conflict() => match self.client.get_pod(&key.0, &key.1).await {
                    Ok(fresh) => {
                        if let Some(pod) = self.pods.get_mut(key) {
                            pod.latest = fresh;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key.1, "reading pod: {e}");
                        return;
                    }
                },
                Err(e) if e.is_not_found() => {
                    self.forget(key);
                    return;
                }
                Err(e) => {
                    tracing::warn!(pod = %key.1, "writing pod status: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses() {
        let mut used = BTreeSet::new();
        let first = lowest_free_ip("10.244.3.0/24", &used).expect("free");
        assert_eq!(first, Ipv4Addr::new(10, 244, 3, 2));
        used.insert(first);
        used.insert(Ipv4Addr::new(10, 244, 3, 3));
        assert_eq!(
            lowest_free_ip("10.244.3.0/24", &used),
            Some(Ipv4Addr::new(10, 244, 3, 4))
        );
        used.remove(&first);
        assert_eq!(lowest_free_ip("10.244.3.0/24", &used), Some(first));
        let full: BTreeSet<Ipv4Addr> = (2..255).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(lowest_free_ip("10.0.0.0/24", &full), None);
        assert!(cidr_contains("10.244.3.0/24", first));
        assert!(!cidr_contains("10.244.4.0/24", first));
    }

    #[test]
    fn running_status_keeps_scheduling_and_transition_times() {
        let pod = json!({"spec": {"containers": [{"name": "web", "image": "nginx:1"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "T0"}]}});
        let ip = Ipv4Addr::new(10, 244, 0, 2);
        let host = Ipv4Addr::LOCALHOST;
        let starting = running_status(&pod, ip, host, "T1", false, "T1");
        assert_eq!(starting["phase"], "Running");
        assert_eq!(starting["podIP"], "10.244.0.2");
        assert_eq!(starting["containerStatuses"][0]["ready"], false);
        let by_type = |s: &Value, t: &str| {
            s["conditions"]
                .as_array()
                .and_then(|a| a.iter().find(|c| c["type"] == t).cloned())
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            by_type(&starting, "PodScheduled")["lastTransitionTime"],
            "T0"
        );
        assert_eq!(by_type(&starting, "Ready")["status"], "False");
        let mut later = pod.clone();
        later["status"] = starting;
        let ready = running_status(&later, ip, host, "T1", true, "T2");
        assert_eq!(by_type(&ready, "Ready")["status"], "True");
        assert_eq!(by_type(&ready, "Ready")["lastTransitionTime"], "T2");
        assert_eq!(by_type(&ready, "Initialized")["lastTransitionTime"], "T1");
        assert_eq!(ready["startTime"], "T1");
        assert!(pod::is_ready(&json!({"status": ready})));
    }

    #[test]
    fn delays() {
        assert_eq!(parse_delay("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_delay("x").is_err());
    }
}
