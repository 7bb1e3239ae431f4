//! `tend serve`: the control plane.

use std::path::PathBuf;

/// Flags of `tend serve` (CLI.md).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A local git repository (bare or with a work tree) or a remote URL.
    #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
    pub repo: Option<String>,
    /// A directory of YAML files.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Branch to follow (default: the repository's HEAD branch).
    #[arg(long, requires = "repo")]
    pub branch: Option<String>,
    /// Subdirectory of the repository holding the manifests.
    #[arg(long, requires = "repo")]
    pub path: Option<String>,
    /// Where tend keeps its store, tokens and clones.
    #[arg(long, default_value = "/var/lib/tend", env = "TEND_STATE")]
    pub state: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: std::net::SocketAddr,
    /// Object store: `redb` (embedded, under --state) or `etcd://HOST:PORT[,..]`.
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Range node pod CIDRs (/24 each) are allocated from.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pod_cidr: String,
    /// Seconds without a heartbeat before a node is NotReady.
    #[arg(long, default_value_t = 40)]
    pub node_grace: u64,
    /// How often a remote repository is fetched (e.g. 30s, 5m).
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// File holding the secret that signs `POST /api/v1/hooks/git` (X-Hub-Signature-256).
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Serve the API over TLS with this PEM certificate chain (needs --tls-key); agents and
    /// the CLI then pin the CA with --ca.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where every mutation is recorded, one JSON line each (default: audit.log under --state).
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// How long an Event is kept after it last happened (e.g. 30m, 1h), as kube-apiserver's
    /// --event-ttl.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub event_ttl: Duration,
    /// Size in MiB at which the audit log is rotated (0: never).
    #[arg(long = "audit-log-maxsize", default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs kept (`audit.log.1` the newest); 0: none.
    #[arg(long = "audit-log-maxbackup", default_value_t = 5)]
    pub audit_log_maxbackup: u32,
}

use crate::api::ObjectKey;
use crate::controller::deployment::DeploymentController;
use crate::controller::endpoints::EndpointsController;
use crate::controller::gc::GarbageCollector;
use crate::controller::node::NodeController;
use crate::controller::replicaset::ReplicaSetController;
use crate::controller::runtime::{self, Context, Reconciler, SystemClock};
use crate::controller::source::SourceController;
use crate::manifest::Limits;
use crate::scheduler::Scheduler;
use crate::server::audit::{AuditSink, FileAudit};
use crate::server::{ApiState, Tokens};
use crate::server::{leader, shared_credentials};
use crate::source::dir::DirSource;
use crate::source::git::GitSource;
use crate::source::write::{Edit, SourceWriter, Written};
use crate::source::{Source, SourceError};
use crate::store::Store;
use crate::store::owners::OwnerIndex;
use anyhow::{Context as _, bail};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Parses durations such as `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Opens the source the flags name.
pub fn open_source(args: &ServeArgs) -> anyhow::Result<Box<dyn Source>> {
    let max = Limits::default().max_file_bytes;
    Ok(match (&args.repo, &args.dir) {
        (Some(repo), _) => {
            let mut git = GitSource::open(
                repo,
                args.branch.as_deref(),
                args.path.as_deref(),
                &args.state,
                max,
            )?;
            git.set_interval(
                parse_duration(&args.interval).map_err(|e| anyhow::anyhow!("--interval {e}"))?,
            );
            Box::new(git)
        }
        (None, Some(dir)) => Box::new(DirSource::open(dir, max)?),
        (None, None) => bail!("give --repo PATH_OR_URL or --dir PATH"),
    })
}

/// The writer of the same source, for rollout commands (`scale`, `rollout undo|pause|resume`).
pub fn open_writer(args: &ServeArgs) -> anyhow::Result<Arc<dyn SourceWriter>> {
    use crate::source::write::{DirWriter, GitWriter};
    Ok(match (&args.repo, &args.dir) {
        (Some(repo), _) => Arc::new(GitWriter::open(
            repo,
            args.branch.as_deref(),
            args.path.as_deref(),
            &args.state,
        )?),
        (None, Some(dir)) => Arc::new(DirWriter::open(dir)),
        (None, None) => bail!("give --repo PATH_OR_URL or --dir PATH"),
    })
}

/// Threads for blocking work: store reads, one reconcile per controller, the source loop.
/// Store writes do not hold one while they wait for their fsync (`Store::submit`), so what
/// runs here is short and CPU-bound; tokio's default (512) let serve grow to 120+ threads in
/// stalls under load, each keeping its own allocator cache (~15 MiB more, never given back).
/// The headroom above the cores covers the long holders (controllers, the source loop).
pub const MAX_BLOCKING_THREADS: usize = 32;

/// Runs the control plane until SIGINT or SIGTERM.
pub fn run(args: ServeArgs, _log: crate::telemetry::LogFormat) -> anyhow::Result<ExitCode> {
    bound_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
    serve_until(args, stop_rx, |_| {}).await
}

/// The control plane until `stop` turns true (or its sender is dropped): what `tend serve`
/// runs after catching signals, and what `tend up` runs beside its agent. `listening` is
/// called once with the API's address, after the tokens are written and the port is bound.
pub async fn serve_until(
    args: ServeArgs,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<ExitCode> {
    create_state_dir(&args.state)?;
    let store = super::serve_store::open_store(&args)?;
    let tokens = Tokens::load_or_create(&args.state)
        .with_context(|| format!("writing tokens in {}", args.state.display()))?;
    let webhook_secret = match &args.webhook_secret_file {
        Some(path) => Some(crate::source::webhook::read_secret(path)?),
        None => None,
    };
    // Checked before the API starts, although only the leader allocates from it.
    crate::controller::alloc::Allocator::new(&args.service_cidr)
        .map_err(|e| anyhow::anyhow!("--service-cidr {}: {e}", args.service_cidr))?;
    let source = open_source(&args)?;
    let (notify_tx, notify_rx) = tokio::sync::mpsc::channel::<()>(1);
    let _watch = source.watch(notify_tx.clone())?;

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::tls::server_config(cert, key)?),
        _ => None,
    };
    let audit_path = args
        .audit_log
        .clone()
        .unwrap_or_else(|| args.state.join(crate::server::audit::AUDIT_LOG_FILE));
    let rotation = crate::server::audit::Rotation {
        max_bytes: args.audit_log_maxsize.saturating_mul(1 << 20),
        backups: args.audit_log_maxbackup,
    };
    let audit: Arc<dyn AuditSink> = Arc::new(FileAudit::open(&audit_path, rotation)?);
    // With etcd, replicas elect a leader and share the node credentials through it.
    let elected = leader::etcd_endpoints(&args.store);
    let etcd = match &elected {
        Some(endpoints) => {
            let backend = leader::EtcdLease::connect(endpoints).await?;
            let followed =
                shared_credentials::share(backend.client(), tokens.nodes.clone(), stop_rx.clone())
                    .await?;
            Some((backend, followed))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    say(&format!("tend serve: listening on {scheme}://{addr}"));
    say(&format!(
        "tend serve: source {}; state in {} (admin.token, join.token)",
        source.describe(),
        args.state.display()
    ));
    let writer: Arc<dyn SourceWriter> = Arc::new(RefreshingWriter {
        inner: open_writer(&args)?,
        refresh: notify_tx.clone(),
    });
    let audited_tokens = tokens.clone();
    // Who leads: with redb, always this replica; with etcd, the election says.
    let identity = leader::identity(addr);
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(leader::LeaderStatus {
        identity: identity.clone(),
        leading: elected.is_none(),
        leader: elected.is_none().then(|| identity.clone()),
    });
    let state = Arc::new(ApiState {
        store: store.clone(),
        tokens,
        webhook_secret,
        source_refresh: notify_tx,
        source_writer: Some(writer.clone()),
    });
    let mut api_stop = stop_rx.clone();
    let router = leader::route(
        crate::server::router(state),
        audited_tokens.clone(),
        leader_rx.clone(),
    );
    let router = crate::server::audit::layer(router, audited_tokens, audit.clone());
    let stopped = async move {
        let _ = api_stop.wait_for(|s| *s).await;
    };
    let api = match tls {
        Some(config) => tokio::spawn(crate::server::tls::serve_tls(
            listener, router, config, stopped,
        )),
        None => tokio::spawn(crate::server::serve(listener, router, stopped)),
    };
    listening(addr);
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_PERIOD);
        loop {
            every.tick().await;
            release_freed_memory();
        }
    });

    let mut election = None;
    let mut leader_store = store.clone();
    if let (Some(endpoints), Some((backend, followed))) = (elected, etcd) {
        let fence = Arc::new(leader::Fence::default());
        leader_store = Arc::new(leader::FencedStore::new(store.clone(), fence.clone()));
        let stop = stop_rx.clone();
        election = Some(tokio::spawn(async move {
            let ended = leader::run(
                &backend,
                leader::Timing::default(),
                &leader_tx,
                &fence,
                stop,
            )
            .await;
            if ended == leader::Ended::LostLeadership {
                exit_on_lost_leadership();
            }
            let _ = followed.await;
        }));
        say(&format!(
            "tend serve: leader election on etcd {} as {identity}",
            endpoints.join(",")
        ));
        let mut status = leader_rx.clone();
        let mut stop = stop_rx.clone();
        let mut shown = None;
        loop {
            let now = status.borrow_and_update().clone();
            if now.leading {
                break;
            }
            if now.leader.is_some() && now.leader != shown {
                say(&format!(
                    "tend serve: following {} (API only; the leader runs the source loop and \
                     the controllers)",
                    now.leader.as_deref().unwrap_or_default()
                ));
                shown = now.leader;
            }
            tokio::select! {
                changed = status.changed() => if changed.is_err() {
                    bail!("the leader election ended before this replica led or stopped");
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }
    if *stop_rx.borrow() {
        tracing::info!("shutting down");
    } else {
        if election.is_some() {
            say(&format!("tend serve: leading as {identity}"));
        }
        lead(
            &args,
            leader_store,
            writer,
            notify_rx,
            source,
            audit,
            stop_rx,
        )
        .await?;
    }
    if let Some(election) = election {
        let _ = election.await;
    }
    api.await.context("API task")?.context("API server")?;
    Ok(ExitCode::SUCCESS)
}

/// A replica that lost leadership exits at once, as kube-controller-manager does: reconciles
/// and the source sync run on blocking threads that cannot be cancelled, and the controllers'
/// memory (owner index, the source controller's view) would be stale when leadership came
/// back; a restart (systemd `Restart=always`) rebuilds everything from the store as a
/// follower. The fence already refuses its writes from the renew deadline on.
fn exit_on_lost_leadership() -> ! {
    say(
        "tend serve: lost leadership (the lease could not be renewed in time); exiting so that another replica leads",
    );
    std::process::exit(1)
}

/// What only the leader runs, until `stop`: the controllers and the source loop. Everything
/// is rebuilt from the store (the source controller's revision sequence and applied files,
/// the owner index), so a new leader resumes where the last one stopped: a commit already
/// recorded as a Revision is not recorded again, and the controllers are level-triggered.
async fn lead(
    args: &ServeArgs,
    store: Arc<dyn Store>,
    writer: Arc<dyn SourceWriter>,
    mut notify_rx: tokio::sync::mpsc::Receiver<()>,
    mut source: Box<dyn Source>,
    audit: Arc<dyn AuditSink>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut controller =
        SourceController::new(store.clone(), &args.service_cidr, Limits::default())?;
    // Controllers look objects up by owner through an index, as Kubernetes' informers do.
    let indexed: Arc<dyn Store> = Arc::new(OwnerIndex::new(store.clone())?);
    let mut ctx = Context::new(indexed, Arc::new(SystemClock));
    ctx.source_writer = Some(writer);
    let mut controllers = start_controllers(args, ctx, &stop_rx)?;
    controllers.push(tokio::spawn(collect_expired_events(
        store.clone(),
        args.event_ttl,
        stop_rx.clone(),
    )));

    // The source loop: sync, then wait for a change notice, the poll period, or shutdown.
    let poll = Duration::from_secs(5)
        .min(parse_duration(&args.interval).unwrap_or(Duration::from_secs(30)));
    let mut backoff = Duration::from_millis(500);
    let mut stop = stop_rx;
    loop {
        let (c, s, result) = tokio::task::spawn_blocking(move || {
            let result = controller.sync(source.as_mut());
            (controller, source, result)
        })
        .await
        .context("source loop")?;
        controller = c;
        source = s;
        let wait = match result {
            Ok(Some(outcome)) => {
                audit.record(&crate::server::audit::applied_revision(
                    &outcome.revision,
                    crate::server::audit::now(),
                ));
                release_freed_memory();
                backoff = Duration::from_millis(500);
                poll
            }
            Ok(None) => {
                backoff = Duration::from_millis(500);
                poll
            }
            Err(e) => {
                tracing::warn!("source sync failed, retrying in {backoff:?}: {e}");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::select! {
            _ = notify_rx.recv() => while notify_rx.try_recv().is_ok() {},
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tracing::info!("shutting down");
    for c in controllers {
        let _ = c.await;
    }
    Ok(())
}

/// How often expired Events are collected.
const EVENT_GC_PERIOD: Duration = Duration::from_secs(60);

/// Deletes Events `ttl` after they last happened, as kube-apiserver's `--event-ttl` does,
/// until `stop`. Failures are logged and retried at the next period.
async fn collect_expired_events(
    store: Arc<dyn Store>,
    ttl: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use crate::controller::events::collect_expired;
    let mut every = tokio::time::interval(EVENT_GC_PERIOD.min(ttl));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let store = store.clone();
        let collected = tokio::task::spawn_blocking(move || {
            collect_expired(store.as_ref(), jiff::Timestamp::now(), ttl)
        })
        .await;
        match collected {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!("deleted {n} expired events"),
            Ok(Err(e)) => tracing::warn!("collecting expired events: {e}"),
            Err(e) => tracing::warn!("collecting expired events: {e}"),
        }
    }
}

/// glibc gives each thread that allocates its own arena, up to 8 per core; reconciles run
/// on the blocking thread pool, so a burst of controller work spreads freed memory over many
/// arenas that are never handed back. Measured with 2,000 Deployments: 444 MiB resident at
/// rest, 165 MiB after a trim. Fewer arenas and a periodic trim keep serve near what it uses.
/// `tend agent` too syncs each pod on a blocking thread: 50 pods, 16 arenas.
pub fn bound_allocator_arenas() {
    // SAFETY: mallopt only sets glibc's allocator parameters; called at start, before the
    // runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// How often freed memory is handed back (see `release_freed_memory`).
const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Hands memory freed after an apply back to the system. A large revision builds several
/// transient copies of its objects; glibc keeps freed pages in its arenas, so without this
/// serve's resident memory would stay at the peak of the largest apply ever made.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A source writer that wakes the source loop after each write, so that a commit made by a
/// command or by auto-revert is applied at once, also for remotes fetched on an interval.
struct RefreshingWriter {
    inner: Arc<dyn SourceWriter>,
    refresh: tokio::sync::mpsc::Sender<()>,
}

impl SourceWriter for RefreshingWriter {
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Written, SourceError> {
        let written = self.inner.edit(key, file, edit, message)?;
        let _ = self.refresh.try_send(());
        Ok(written)
    }
}

/// Starts every workload controller on the shared loop; they stop with `stop`.
fn start_controllers(
    args: &ServeArgs,
    ctx: Context,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let reconcilers: Vec<Arc<dyn Reconciler>> = vec![
        Arc::new(DeploymentController),
        Arc::new(ReplicaSetController::new()),
        Arc::new(GarbageCollector::new()),
        Arc::new(EndpointsController::new()),
        Arc::new(Scheduler::new()),
        Arc::new(
            NodeController::new(Duration::from_secs(args.node_grace), &args.pod_cidr)
                .map_err(|e| anyhow::anyhow!("--pod-cidr {}: {e}", args.pod_cidr))?,
        ),
    ];
    Ok(reconcilers
        .into_iter()
        .map(|r| tokio::spawn(runtime::run(r, ctx.clone(), stop.clone())))
        .collect())
}

/// Prints a line for the person who started the daemon; a closed stdout is not an error.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn create_state_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
    }
    Ok(())
}
