//! `tend agent`: the real node agent's lifecycle. Checks it can work (root, `runc`, `nft`,
//! `ip`), becomes a child subreaper, imports `--images`, registers its Node (created only
//! when absent, so admin labels survive), heartbeats, waits for its pod CIDR, sets up the
//! node network, adopts the containers of pods still bound to it (removing the rest), then
//! follows its pods and syncs each one ([`PodSyncer`]) on every change and every
//! `--sync-period`, writing a pod's status only when it changed. SIGINT/SIGTERM stop the
//! agent and leave containers running: the next agent adopts them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::client::{AgentClient, PodEvent, backoff, namespace_and_name, with_status};
use super::image::{ImageStore, OciRegistry, RegistryAuth};
use super::network::ip::IpCommands;
use super::network::ipam::{Cidr, IpamStore};
use super::network::{NodeNetwork, PodNetwork};
use super::pods::{PodSyncer, StoreImages, SyncOutcome, grace_period, status_changed};
use super::registration::Registration;
use super::runtime::runc::{ContainerRuntime, Runc, become_subreaper};
use super::sim::parse_delay;
use super::{now_millis, parse_pairs};

/// Flags of `tend agent`. The servers come from the global `--server URL[,URL]`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// API servers, tried in order (filled from `--server`).
    #[arg(skip)]
    pub servers: Vec<String>,
    /// File holding the join token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The node's name.
    #[arg(long)]
    pub name: String,
    /// Labels the Node is created with (kept as they are when it already exists).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// The node's InternalIP (every pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Ipv4Addr,
    /// Capacity (and allocatable), Kubernetes quantities.
    #[arg(long, default_value = "cpu=4,memory=8Gi,pods=110")]
    pub capacity: String,
    /// Where the agent keeps images, containers' state, logs and IP allocations.
    #[arg(long, default_value = "/var/lib/tend-agent")]
    pub state: PathBuf,
    /// Image archives to import at start (air-gapped nodes).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Registries (HOST:PORT) reached over plain HTTP.
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    /// The whole cluster's pod network (traffic leaving it is masqueraded).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Cidr,
    /// How often the node posts its status.
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    pub heartbeat: Duration,
    /// How often every pod is synced even without a change (exits, restarts, back-offs).
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    pub sync_period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("tend agent must run as root (it creates network namespaces and runs runc)")]
    NotRoot,
    #[error("`{tool}` is not installed or does not run ({hint})")]
    Missing { tool: String, hint: &'static str },
}

/// The agent's requirements, as one clear error: root, then `runc`, `nft` and `ip`.
/// `runs(tool, args)` says whether a command runs successfully.
pub fn preflight(
    is_root: bool,
    runs: impl Fn(&str, &[&str]) -> bool,
) -> Result<(), PreflightError> {
    if !is_root {
        return Err(PreflightError::NotRoot);
    }
    for (tool, args, hint) in [
        ("runc", &["--version"][..], "apt-get install runc"),
        ("nft", &["--version"][..], "apt-get install nftables"),
        ("ip", &["-V"][..], "apt-get install iproute2"),
    ] {
        if !runs(tool, args) {
            return Err(PreflightError::Missing {
                tool: tool.to_string(),
                hint,
            });
        }
    }
    Ok(())
}

fn command_runs(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `tend agent`: runs until SIGINT or SIGTERM.
pub fn main(
    mut args: AgentArgs,
    server: &str,
    log: crate::telemetry::LogFormat,
) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(log);
    args.servers = vec![server.to_string()];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    preflight(root, command_runs)?;
    become_subreaper()?;
    crate::cli::serve::bound_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            crate::shutdown::signal().await;
            let _ = stop_tx.send(true);
        });
        run(args, stop_rx).await
    });
    // A sync still stopping a container is not waited for: containers outlive the agent.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

type Syncer = PodSyncer<PodNetwork<IpCommands>>;

fn uid_of(pod: &Value) -> String {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Container ids (`<uid>-<name>`) that belong to none of `bound` (pod uids).
pub fn orphans<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    bound: &BTreeSet<String>,
) -> Vec<String> {
    ids.into_iter()
        .filter(|id| !bound.iter().any(|uid| id.starts_with(&format!("{uid}-"))))
        .map(str::to_string)
        .collect()
}

/// Runs the agent until `shutdown` turns true. Preflight and subreaper are [`main`]'s.
pub async fn run(args: AgentArgs, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let labels = parse_pairs("--labels", &args.labels).map_err(anyhow::Error::msg)?;
    let capacity = parse_pairs("--capacity", &args.capacity).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating the state directory {}", args.state.display()))?;
    let store = ImageStore::open(&args.state)?;
    if let Some(dir) = &args.images {
        let imported = store.import_dir(dir)?;
        tracing::info!(
            count = imported.len(),
            "imported images from {}",
            dir.display()
        );
    }
    let client = AgentClient::from_token_file(args.servers.clone(), &args.token_file)?;
    let registration = Registration {
        client,
        name: args.name.clone(),
        address: args.address.into(),
        version: concat!("tend-", env!("CARGO_PKG_VERSION")).to_string(),
        runtime: "runc".to_string(),
        labels,
        capacity,
    };

    // Register, then wait for the pod CIDR the control plane gives the node.
    let mut failures = 0;
    let pod_cidr = loop {
        match registration.register().await {
            Ok(Some(cidr)) => break cidr,
            Ok(None) => tracing::info!(node = %args.name, "waiting for a pod CIDR"),
            Err(e) => tracing::warn!(node = %args.name, "registering: {e}"),
        }
        let wait = if failures < 3 {
            Duration::from_millis(500)
        } else {
            backoff(failures)
        };
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = super::stopped(&mut shutdown) => return Ok(()),
        }
    };
    let pod_cidr: Cidr = pod_cidr
        .parse()
        .with_context(|| format!("the node's podCIDR {pod_cidr:?}"))?;
    tracing::info!(node = %args.name, %pod_cidr, "registered");

    let node = NodeNetwork {
        pod_cidr,
        cluster_cidr: args.cluster_cidr,
        peers: Vec::new(),
    };
    let mut network = PodNetwork::open(
        IpCommands::new(),
        node,
        IpamStore::new(args.state.join("network/ipam.json")),
    )?;
    network
        .setup_node()
        .context("setting up the node's pod network")?;
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(Runc::new("runc", &args.state)?);
    let images = Arc::new(StoreImages {
        store,
        registry: OciRegistry::new(args.insecure_registry.clone()),
        auth: RegistryAuth::Anonymous,
        handle: tokio::runtime::Handle::current(),
    });
    let syncer: Arc<Syncer> = Arc::new(PodSyncer::new(
        runtime,
        network,
        images,
        &args.state,
        args.address,
    ));

    let (events_tx, mut events) = mpsc::channel(256);
    let follower = {
        let client = AgentClient::from_token_file(args.servers.clone(), &args.token_file)?;
        let selector = format!("spec.nodeName={}", args.name);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { client.follow_pods(&selector, events_tx, shutdown).await })
    };
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut agent = Agent {
        client: AgentClient::from_token_file(args.servers.clone(), &args.token_file)?,
        syncer,
        pods: BTreeMap::new(),
        reported: BTreeMap::new(),
        in_flight: BTreeSet::new(),
        again: BTreeSet::new(),
        adopted: false,
        done: done_tx,
    };
    let mut heartbeats = tokio::time::interval(args.heartbeat);
    heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut syncs = tokio::time::interval(args.sync_period);
    syncs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => break,
            _ = heartbeats.tick() => {
                if let Err(e) = registration.heartbeat().await {
                    tracing::warn!(node = %args.name, "heartbeat: {e}");
                }
            }
            _ = syncs.tick() => {
                let uids: Vec<String> = agent.pods.keys().cloned().collect();
                for uid in uids {
                    agent.start_sync(&uid);
                }
            }
            event = events.recv() => match event {
                Some(event) => agent.on_event(event).await,
                None => break,
            },
            Some((uid, outcome)) = done.recv() => agent.on_done(uid, outcome).await,
        }
    }
    follower.abort();
    tracing::info!(node = %args.name, "stopped; containers keep running");
    Ok(())
}

type Done = (String, Result<SyncOutcome, String>);

struct Agent {
    client: AgentClient,
    syncer: Arc<Syncer>,
    /// The newest version of each pod bound here, by uid.
    pods: BTreeMap<String, Value>,
    /// The status last written, by uid.
    reported: BTreeMap<String, Value>,
    in_flight: BTreeSet<String>,
    /// Pods that changed while a sync ran: synced again when it ends.
    again: BTreeSet<String>,
    adopted: bool,
    done: mpsc::UnboundedSender<Done>,
}

impl Agent {
    async fn on_event(&mut self, event: PodEvent) {
        match event {
            PodEvent::Listed(pods) => {
                let listed: BTreeMap<String, Value> =
                    pods.into_iter().map(|p| (uid_of(&p), p)).collect();
                let gone: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.on_gone(&uid);
                }
                if !self.adopted {
                    self.adopted = true;
                    self.adopt(listed.keys().cloned().collect()).await;
                }
                for (uid, pod) in listed {
                    self.pods.insert(uid.clone(), pod);
                    self.start_sync(&uid);
                }
            }
            PodEvent::Applied(pod) => {
                let uid = uid_of(&pod);
                self.pods.insert(uid.clone(), pod);
                self.start_sync(&uid);
            }
            PodEvent::Deleted(pod) => self.on_gone(&uid_of(&pod)),
        }
    }

    /// The pod object is gone while its containers may still run: stop them now.
    fn on_gone(&mut self, uid: &str) {
        if let Some(mut pod) = self.pods.remove(uid) {
            pod["metadata"]["deletionTimestamp"] = json!(now_millis());
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace_period(&pod).as_secs());
            self.pods.insert(uid.to_string(), pod);
            self.start_sync(uid);
        }
    }

    /// Keeps the containers of pods still bound here; stops and removes the others.
    async fn adopt(&self, bound: BTreeSet<String>) {
        let syncer = self.syncer.clone();
        let result = tokio::task::spawn_blocking(move || {
            let listed = syncer.runtime().list()?;
            let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
            let removed = orphans(ids, &bound);
            for id in &removed {
                syncer.remove_orphan(id, Duration::from_secs(10))?;
            }
            Ok::<_, super::runtime::runc::RuntimeError>((listed.len(), removed))
        })
        .await;
        match result {
            Ok(Ok((found, removed))) => tracing::info!(
                found,
                removed = removed.len(),
                "adopted the containers of pods still bound here"
            ),
            Ok(Err(e)) => tracing::warn!("adopting containers: {e}"),
            Err(e) => tracing::warn!("adopting containers: {e}"),
        }
    }

    fn start_sync(&mut self, uid: &str) {
        if self.in_flight.contains(uid) {
            self.again.insert(uid.to_string());
            return;
        }
        let Some(pod) = self.pods.get(uid).cloned() else {
            return;
        };
        self.in_flight.insert(uid.to_string());
        let syncer = self.syncer.clone();
        let done = self.done.clone();
        let uid = uid.to_string();
        tokio::task::spawn_blocking(move || {
            let outcome = syncer
                .sync(&pod, jiff::Timestamp::now())
                .map_err(|e| e.to_string());
            let _ = done.send((uid, outcome));
        });
    }

    async fn on_done(&mut self, uid: String, outcome: Result<SyncOutcome, String>) {
        self.in_flight.remove(&uid);
        match outcome {
            Err(e) => tracing::warn!(%uid, "sync: {e}"),
            Ok(SyncOutcome::Deleted) => {
                if let Some(pod) = self.pods.remove(&uid) {
                    let (ns, name) = namespace_and_name(&pod);
                    match self.client.delete_pod(&ns, &name).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => tracing::warn!(pod = %name, "deleting the pod: {e}"),
                    }
                }
                self.reported.remove(&uid);
                self.syncer.forget(&uid);
                self.again.remove(&uid);
                return;
            }
            Ok(SyncOutcome::Status(status)) => self.report(&uid, status).await,
        }
        if self.again.remove(&uid) {
            self.start_sync(&uid);
        }
    }

    async fn report(&mut self, uid: &str, status: Value) {
        if !status_changed(self.reported.get(uid), &status) {
            return;
        }
        let Some(pod) = self.pods.get(uid) else {
            return;
        };
        let (ns, name) = namespace_and_name(pod);
        match self
            .client
            .put_pod_status(&with_status(pod, status.clone()))
            .await
        {
            Ok(stored) => {
                self.pods.insert(uid.to_string(), stored);
                self.reported.insert(uid.to_string(), status);
            }
            Err(e) if e.is_conflict() => {
                // Written again at the next sync, from the newer pod.
                if let Ok(fresh) = self.client.get_pod(&ns, &name).await {
                    self.pods.insert(uid.to_string(), fresh);
                }
            }
            Err(e) => tracing::warn!(pod = %name, "writing pod status: {e}"),
        }
    }
}
