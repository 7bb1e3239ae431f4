//! `tend agent`: the real node agent's lifecycle. Checks it can work (root, `runc`, `nft`,
//! `ip`), becomes a child subreaper, imports `--images`, registers its Node (created only
//! when absent, so admin labels survive), heartbeats, waits for its pod CIDR, sets up the
//! node network, adopts the containers of pods still bound to it (removing the rest), then
//! follows its pods and syncs each one ([`PodSyncer`]) on every change and every
//! `--sync-period`, writing a pod's status only when it changed. SIGINT/SIGTERM stop the
//! agent and leave containers running: the next agent adopts them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::client::{AgentClient, PodEvent, backoff, namespace_and_name, with_status};
use super::events::{event_object, status_events};
use super::image::{ImageStore, OciRegistry};
use super::informer::{Informer, follow_into};
use super::network::ip::IpCommands;
use super::network::ipam::{Cidr, IpamStore};
use super::network::{NodeNetwork, PeerRoute, PodNetwork, peer_routes};
use super::periodic::PeriodicSyncs;
use super::pods::{PodSyncer, StoreImages, SyncOutcome, grace_period, status_changed};
use super::prober::{NetProber, ProbeManager};
use super::registration::Registration;
use super::runtime::reaper::ReaperClient;
use super::runtime::runc::{ContainerRuntime, Runc, become_subreaper};
use super::services::ServiceCache;
use super::sim::parse_delay;
use super::views::EndpointsView;
use super::{now_millis, parse_pairs};

/// Flags of `tend agent`. The servers come from the global `--server URL[,URL]`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// API servers, tried in order (filled from `--server`).
    #[arg(skip)]
    pub servers: Vec<String>,
    /// File holding the join token: the agent registers with it once, and then uses the
    /// node's own credential (kept under `--state`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// PEM CA certificate(s) the API server's TLS certificate must chain to (filled from the
    /// global `--ca`); the system's roots are then not trusted.
    #[arg(skip)]
    pub ca: Option<PathBuf>,
    /// The node's name.
    #[arg(long)]
    pub name: String,
    /// Labels the Node is created with (kept as they are when it already exists).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// The node's InternalIP (every pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Ipv4Addr,
    /// Port of the log endpoint on `--address` (the control plane asks it for `tend logs`).
    #[arg(long, default_value_t = super::logs::DEFAULT_PORT)]
    pub port: u16,
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
    /// A Docker `config.json` with registry credentials (`auths.HOST.auth`); default
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    #[arg(long)]
    pub registry_config: Option<PathBuf>,
    /// The Services' ClusterIP range (routed to `lo` on the node, as LAB.md says).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: Cidr,
    /// The whole cluster's pod network (traffic leaving it is masqueraded).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: Cidr,
    /// How often the node posts its status.
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    pub heartbeat: Duration,
    /// How often every pod is synced even without a change (exits, restarts, back-offs).
    #[arg(long, default_value = "2s", value_parser = parse_delay)]
    pub sync_period: Duration,
    /// NodePorts also answer on 127.0.0.1: sets net.ipv4.conf.all.route_localnet=1 and left
    /// so when the agent stops, as kube-proxy does (`tend up` turns it on, and back off).
    #[arg(long)]
    pub localhost_nodeports: bool,
    /// On stop, remove every container, the pod network, the `tend-lb` table and what else
    /// the agent programmed ([`super::teardown`]); `tend up` without `--keep-workloads`.
    #[arg(skip)]
    pub remove_on_exit: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "tend agent and tend up must run as root (they create network namespaces and run runc)"
    )]
    NotRoot,
    #[error("`{tool}` is not installed or does not run ({hint})")]
    Missing { tool: String, hint: &'static str },
    #[error(
        "no cgroup filesystem is mounted under /sys/fs/cgroup, and runc needs one (`ip netns \
         exec` remounts /sys: start the agent in a node namespace with \
         `nsenter --net=/var/run/netns/NAME tend agent ...` instead)"
    )]
    NoCgroups,
}

/// Whether `/proc/self/mountinfo` text shows a cgroup (v1 or v2) filesystem.
pub fn cgroups_mounted(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        line.split_once(" - ")
            .and_then(|(_, fs)| fs.split_whitespace().next())
            .is_some_and(|fs| fs == "cgroup" || fs == "cgroup2")
    })
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

/// Runs `tool args` with its output discarded; whether it succeeded (preflight checks).
pub fn succeeds(tool: &str, args: &[&str]) -> bool {
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
    check_node()?;
    crate::cli::serve::bound_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(IDLE_THREAD_KEEP_ALIVE)
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

/// What every real node needs (root, `runc`, `nft`, `ip`, cgroups), then becomes a child
/// subreaper (containers' exit codes): `tend agent` and `tend up` start with this.
pub fn check_node() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    preflight(root, succeeds)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !cgroups_mounted(&mountinfo) {
        return Err(PreflightError::NoCgroups.into());
    }
    become_subreaper()?;
    Ok(())
}

type Syncer = PodSyncer<PodNetwork<IpCommands>>;

/// Where Docker keeps credentials: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/`.
fn default_docker_config() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json")))
}

fn uid_of(pod: &Value) -> String {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether two versions of a pod differ at most in their status and resourceVersion.
pub fn same_but_status(a: &Value, b: &Value) -> bool {
    let strip = |p: &Value| {
        let mut p = p.clone();
        if let Some(o) = p.as_object_mut() {
            o.remove("status");
        }
        if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        p
    };
    strip(a) == strip(b)
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
    // Before the agent runs most of its code: each page of it mapped alone from here on.
    let bytes = super::memory::map_code_page_by_page();
    tracing::debug!(bytes, "read-only mappings registered to map page by page");
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
    let Some(access) = super::credential::obtain(
        &args.servers,
        &args.token_file,
        args.ca.as_deref(),
        Some(&args.state),
        &args.name,
        &mut shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let client = access.client()?;
    let log_key = super::logs::read_key(&args.token_file)?;
    let log_listener = super::logs::bind(args.address.into(), args.port).await?;
    let log_port = log_listener.local_addr().map_or(args.port, |a| a.port());
    let registration = Registration {
        client,
        name: args.name.clone(),
        address: args.address.into(),
        version: concat!("tend-", env!("CARGO_PKG_VERSION")).to_string(),
        runtime: "runc".to_string(),
        port: Some(log_port),
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
    // Containers are started by the node's reaper, which keeps their exit codes when this
    // agent is killed or restarted (tests without a `tend` binary run them directly).
    let mut runc = Runc::new("runc", &args.state)?;
    if let Ok(exe) = std::env::current_exe()
        && exe.file_name().is_some_and(|n| n == "tend")
    {
        let reaper = ReaperClient::new(&exe, &args.state, Path::new("runc"));
        reaper.ensure_running()?;
        runc = runc.with_reaper(reaper);
    }
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(runc);
    let bound_pods = super::logs::PodDirectory::default();
    let log_server = super::logs::spawn_for_runtime(
        log_listener,
        &args.name,
        log_key,
        bound_pods.clone(),
        runtime.clone(),
    );
    let images = Arc::new(StoreImages {
        store,
        registry: OciRegistry::new(args.insecure_registry.clone()),
        docker_config: args.registry_config.clone().or_else(default_docker_config),
        handle: tokio::runtime::Handle::current(),
    });
    // Every Service and every Endpoints, kept by watches: containers' Service variables and
    // the Service proxy read them.
    let services = Arc::new(ServiceCache::default());
    tokio::spawn(follow_into(
        access.client()?,
        "/api/v1/services",
        services.clone(),
        shutdown.clone(),
    ));
    let endpoints = Arc::new(Informer::<EndpointsView>::default());
    tokio::spawn(follow_into(
        access.client()?,
        "/api/v1/endpoints",
        endpoints.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(super::memory::keep_releasing(shutdown.clone()));
    // Probes run on their own schedule; a changed result sends the pod's uid to sync it.
    let (probed_tx, mut probed) = mpsc::unbounded_channel();
    let (unhealthy_tx, mut unhealthy) = mpsc::unbounded_channel();
    let probes = Arc::new(
        ProbeManager::new(
            Arc::new(NetProber::new(runtime.clone()).map_err(anyhow::Error::msg)?),
            probed_tx,
        )
        .with_events(unhealthy_tx),
    );
    let syncer: Arc<Syncer> = Arc::new(
        PodSyncer::new(runtime, network, images, &args.state, args.address)
            .with_services(services.clone())
            .with_probes(probes.clone()),
    );

    // The Service proxy: ClusterIPs and NodePorts in nftables, balanced over ready pods.
    let route_localnet = if args.localhost_nodeports {
        let path = Path::new(super::teardown::ROUTE_LOCALNET);
        super::teardown::enable_route_localnet(path)
            .with_context(|| format!("--localhost-nodeports: setting {}", path.display()))?
    } else {
        None
    };
    let proxy = tokio::spawn(super::proxy::keep_load_balancing(
        services.clone(),
        endpoints,
        args.service_cidr,
        args.cluster_cidr,
        args.sync_period,
        args.localhost_nodeports,
        shutdown.clone(),
    ));

    let (events_tx, mut events) = mpsc::channel(256);
    let follower = {
        let client = access.client()?;
        let selector = format!("spec.nodeName={}", args.name);
        let shutdown = shutdown.clone();
        tokio::spawn(async move { client.follow_pods(&selector, events_tx, shutdown).await })
    };
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut agent = Agent {
        client: Arc::new(access.client()?),
        node: args.name.clone(),
        syncer,
        pods: BTreeMap::new(),
        reported: BTreeMap::new(),
        in_flight: BTreeSet::new(),
        periodic: Arc::new(PeriodicSyncs::new(periodic_workers())),
        again: BTreeSet::new(),
        adopted: false,
        done: done_tx,
        peers: None,
        probes,
    };
    agent.sync_peers(&args.name).await;
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
                agent.sync_peers(&args.name).await;
            }
            _ = syncs.tick() => {
                agent.start_periodic_syncs();
            }
            event = events.recv() => match event {
                Some(event) => agent.on_event(event).await,
                None => break,
            },
            Some((uid, outcome)) = done.recv() => agent.on_done(uid, outcome).await,
            Some(uid) = probed.recv() => agent.start_sync(&uid),
            Some((uid, note)) = unhealthy.recv() => agent.post_notes(&uid, vec![note]),
        }
        bound_pods.replace(agent.pods.values());
    }
    follower.abort();
    log_server.abort();
    if !args.remove_on_exit {
        tracing::info!(node = %args.name, "stopped; containers keep running");
        return Ok(());
    }
    // No two syncs of one pod at once: the running ones end first, and the proxy too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !agent.in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some((uid, _))) => {
                agent.in_flight.remove(&uid);
            }
            _ => break,
        }
    }
    let _ = tokio::time::timeout_at(deadline, proxy).await;
    let cleanup = super::teardown::AgentCleanup {
        syncer: agent.syncer.clone(),
        state: args.state.clone(),
        service_cidr: args.service_cidr,
        route_localnet,
        route_localnet_path: PathBuf::from(super::teardown::ROUTE_LOCALNET),
    };
    let pods: Vec<Value> = agent.pods.values().cloned().collect();
    super::teardown::remove_and_report(cleanup, pods, &args.name).await
}

type Done = (String, Result<SyncOutcome, String>);

/// Syncs one pod on the calling (blocking) thread. A panic is an error of that pod's sync,
/// so that it is reported and the pod does not stay in flight forever.
fn sync_now(syncer: &Syncer, pod: &Value) -> Result<SyncOutcome, String> {
    let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        syncer.sync(pod, jiff::Timestamp::now())
    }));
    match synced {
        Ok(outcome) => outcome.map_err(|e| e.to_string()),
        Err(_) => Err("the sync stopped".to_string()),
    }
}

/// At most this many blocking tasks per core (at least 2 in all) work through the periodic
/// pass over the pods (see `agent::periodic`). Syncs for a change run at once, one task each:
/// a burst of starts runs in parallel, and a stop may wait out a pod's grace period while
/// other pods' stops must not wait behind it (kubelet stops pods in parallel too); their
/// threads end once idle for [`IDLE_THREAD_KEEP_ALIVE`].
const PERIODIC_WORKERS_PER_CORE: usize = 1;

fn periodic_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * PERIODIC_WORKERS_PER_CORE).max(2)
}

/// How long an idle blocking thread of the agent's runtime stays (tokio's default: 10 s).
/// A burst of pod starts needs many at once; the periodic syncs need few.
const IDLE_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(2);

struct Agent {
    client: Arc<AgentClient>,
    node: String,
    syncer: Arc<Syncer>,
    /// The newest version of each pod bound here, by uid.
    pods: BTreeMap<String, Value>,
    /// The status last written, by uid.
    reported: BTreeMap<String, Value>,
    in_flight: BTreeSet<String>,
    /// Pods waiting for their periodic sync (in `in_flight` meanwhile).
    periodic: Arc<PeriodicSyncs<Value>>,
    /// Pods that changed while a sync ran: synced again when it ends.
    again: BTreeSet<String>,
    adopted: bool,
    done: mpsc::UnboundedSender<Done>,
    /// The routes to other nodes' pod CIDRs last programmed (`None`: not yet).
    peers: Option<Vec<PeerRoute>>,
    probes: Arc<ProbeManager>,
}

impl Agent {
    /// Routes to the other nodes' pod CIDRs through their addresses, reprogrammed when the
    /// nodes change (a node joins, leaves, or gets its CIDR).
    async fn sync_peers(&mut self, me: &str) {
        let nodes = match self.client.list_nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!("listing nodes for routes: {e}");
                return;
            }
        };
        let routes = peer_routes(&nodes, me);
        if self.peers.as_ref() == Some(&routes) {
            return;
        }
        let syncer = self.syncer.clone();
        let wanted = routes.clone();
        let result = tokio::task::spawn_blocking(move || syncer.network().set_peers(wanted)).await;
        match result {
            Ok(Ok(_)) => {
                tracing::info!(routes = routes.len(), "routes to other nodes' pods set");
                self.peers = Some(routes);
            }
            Ok(Err(e)) => tracing::warn!("routes to other nodes: {e}"),
            Err(e) => tracing::warn!("routes to other nodes: {e}"),
        }
    }

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
                // The echo of a status this agent wrote changes nothing to do: syncing on it
                // would double the syncs and wipe a just-reported state (ErrImagePull) at once.
                let only_status = self
                    .pods
                    .get(&uid)
                    .is_some_and(|known| same_but_status(known, &pod));
                self.pods.insert(uid.clone(), pod);
                if !only_status {
                    self.start_sync(&uid);
                }
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
            // Their directories (rootfs mounts), namespaces and addresses too.
            let cleaned = match syncer.remove_unbound_pods(&bound) {
                Ok(uids) => uids.len(),
                Err(e) => {
                    tracing::warn!("removing what pods no longer here left: {e}");
                    0
                }
            };
            Ok::<_, super::runtime::runc::RuntimeError>((listed.len(), removed, cleaned))
        })
        .await;
        match result {
            Ok(Ok((found, removed, cleaned))) => tracing::info!(
                found,
                removed = removed.len(),
                cleaned,
                "adopted the containers of pods still bound here"
            ),
            Ok(Err(e)) => tracing::warn!("adopting containers: {e}"),
            Err(e) => tracing::warn!("adopting containers: {e}"),
        }
    }

    fn start_sync(&mut self, uid: &str) {
        if self.in_flight.contains(uid) && !self.periodic.take_back(uid) {
            // Synced again once the running sync ends. A pod still waiting for its periodic
            // sync was taken back: it is synced now, for the change, instead.
            self.again.insert(uid.to_string());
            return;
        }
        let Some(pod) = self.pods.get(uid).cloned() else {
            self.in_flight.remove(uid);
            return;
        };
        self.in_flight.insert(uid.to_string());
        let syncer = self.syncer.clone();
        let done = self.done.clone();
        let uid = uid.to_string();
        tokio::task::spawn_blocking(move || {
            let _ = done.send((uid, sync_now(&syncer, &pod)));
        });
    }

    /// The periodic pass: every pod not being synced already is queued for a few workers.
    fn start_periodic_syncs(&mut self) {
        let mut queued = Vec::new();
        for (uid, pod) in &self.pods {
            if self.in_flight.insert(uid.clone()) {
                queued.push((uid.clone(), pod.clone()));
            }
        }
        for _ in 0..self.periodic.push(queued) {
            let (periodic, syncer, done) = (
                Arc::clone(&self.periodic),
                Arc::clone(&self.syncer),
                self.done.clone(),
            );
            tokio::task::spawn_blocking(move || {
                while let Some((uid, pod)) = periodic.next() {
                    let _ = done.send((uid, sync_now(&syncer, &pod)));
                }
            });
        }
    }

    async fn on_done(&mut self, uid: String, outcome: Result<SyncOutcome, String>) {
        self.in_flight.remove(&uid);
        match outcome {
            Err(e) => tracing::warn!(%uid, "sync: {e}"),
            Ok(SyncOutcome::Deleted) => {
                self.post_events(&uid, None);
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
                self.probes.remove_pod(&uid);
                self.again.remove(&uid);
                return;
            }
            Ok(SyncOutcome::Status(status)) => {
                self.post_events(&uid, Some(&status));
                if let Some(pod) = self.pods.get(&uid) {
                    self.probes.update(pod, &status);
                }
                self.report(&uid, status).await
            }
        }
        if self.again.remove(&uid) {
            self.start_sync(&uid);
        }
    }

    /// Sends the events the sync noted, and the back-offs its new status entered, in the
    /// background (events are best effort: a lost one never holds a pod back).
    fn post_events(&self, uid: &str, status: Option<&Value>) {
        let Some(pod) = self.pods.get(uid) else {
            self.syncer.take_events(uid);
            return;
        };
        let (_, name) = namespace_and_name(pod);
        let mut notes = self.syncer.take_events(uid);
        if let Some(status) = status {
            notes.extend(status_events(&name, self.reported.get(uid), status));
        }
        self.post_notes(uid, notes);
    }

    /// Posts `notes` about pod `uid` in the background.
    fn post_notes(&self, uid: &str, notes: Vec<super::events::PodNote>) {
        let Some(pod) = self.pods.get(uid) else {
            return;
        };
        if notes.is_empty() {
            return;
        }
        let (ns, name) = namespace_and_name(pod);
        let events: Vec<Value> = notes
            .iter()
            .map(|n| event_object(pod, &self.node, n))
            .collect();
        let client = self.client.clone();
        tokio::spawn(async move {
            for event in events {
                if let Err(e) = client.post_event(&ns, &event).await {
                    tracing::debug!(pod = %name, "posting an event: {e}");
                }
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_echo_is_not_a_change() {
        let a = json!({"metadata": {"name": "p", "resourceVersion": "5"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Pending"}});
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = json!("6");
        b["status"]["phase"] = json!("Running");
        assert!(same_but_status(&a, &b));
        b["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(!same_but_status(&a, &b));
    }

    #[test]
    fn cgroup_mounts_are_found_in_mountinfo() {
        let host = "35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert!(cgroups_mounted(host));
        let v1 = "40 35 0:35 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert!(cgroups_mounted(v1));
        // What `ip netns exec` leaves: a fresh sysfs and nothing under it.
        let netns_exec = "22 1 0:5 / /sys rw - sysfs sysfs rw\n\
                          23 1 0:6 / /proc rw - proc proc rw\n";
        assert!(!cgroups_mounted(netns_exec));
        assert!(
            PreflightError::NoCgroups
                .to_string()
                .contains("nsenter --net=/var/run/netns/NAME")
        );
    }
}
