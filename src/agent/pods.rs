//! One pod on a node: what to do next ([`plan_pod`], pure) and doing it ([`PodSyncer`]).
//!
//! A sync is a few rounds of observe -> plan -> act: a new pod gets its images and its
//! network in the first round, its containers in the second, and the third round has nothing
//! left to do and reports the status. Restarts and CrashLoopBackOff come from
//! [`restart::step`]; image pulls back off the same way (10 s doubling to 5 min), reported
//! as `ErrImagePull` in the round that failed and `ImagePullBackOff` while waiting.
//!
//! The side effects sit behind narrow traits: [`ContainerRuntime`] (runc or a recording
//! fake), [`PodNet`] (the node's [`PodNetwork`]) and [`Images`] (the [`ImageStore`] with a
//! registry, or [`FakeImages`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use serde_json::{Value, json};

use super::events::PodNote;
use super::hooks::{self, HookRunner, RuntimeHooks};
use super::image::{
    ImageError, ImageRef, ImageStore, OciRegistry, PreparedRootfs, PullPolicy, RegistryAuth,
    RootfsMethod,
};
use super::network::{NetError, NetOps, PodNetwork};
use super::probe::{self, ProbeObserved};
use super::prober::ProbeResults;
use super::runtime::bundle::{self, BundleError, PodContext};
use super::runtime::restart::{self, Exit, RestartPolicy, Tracked};
use super::runtime::runc::{self, ContainerRuntime, RuntimeError, Status};
use super::services::{ServiceSource, StaticServices};

/// Image pull back-off: 10 s, doubling, at most 5 min (as the kubelet).
pub const IMAGE_BACKOFF: Duration = Duration::from_secs(10);
pub const IMAGE_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What the agent knows of one container's image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ImageObserved {
    #[default]
    NotTried,
    Ready {
        image_id: String,
    },
    Failed {
        message: String,
        /// `ErrImageNeverPull`: policy Never and the image is absent.
        never_pull: bool,
        failures: u32,
        retry_at: Timestamp,
        /// The failure happened in this sync (reported as ErrImagePull, not yet back-off).
        fresh: bool,
    },
}

/// What the agent knows of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerObserved {
    pub image: ImageObserved,
    /// What the runtime shows now.
    pub runtime: Option<restart::Observed>,
    /// Restart bookkeeping between rounds.
    pub tracked: Tracked,
    /// What its probes said about the running instance (see [`super::probe`]).
    pub probes: ProbeObserved,
}

/// What the agent knows of one pod: observation plus memory, everything [`plan_pod`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodObserved {
    /// The pod's IP once its network is set up.
    pub ip: Option<Ipv4Addr>,
    pub host_ip: Option<Ipv4Addr>,
    /// When the agent first acted on the pod.
    pub start_time: Option<Timestamp>,
    pub containers: BTreeMap<String, ContainerObserved>,
}

/// One thing to do for a pod, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum PodAction {
    EnsureImage {
        container: String,
    },
    SetupNetwork,
    /// (Re)start a container; an exited one of the same name is removed first.
    RunContainer {
        name: String,
        restart_count: u32,
    },
    StopContainer {
        name: String,
        grace: Duration,
    },
    TeardownNetwork,
    DeletePodObject,
    ReportStatus(Value),
}

/// [`plan_pod`]'s full answer: the actions and the restart bookkeeping to remember.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub actions: Vec<PodAction>,
    pub tracked: BTreeMap<String, Tracked>,
}

/// The next actions for `pod` given what is `observed` at `now`.
pub fn plan_pod(pod: &Value, observed: &PodObserved, now: Timestamp) -> Vec<PodAction> {
    plan(pod, observed, now).actions
}

/// `terminationGracePeriodSeconds` (deletion's own grace period first), default 30 s.
pub fn grace_period(pod: &Value) -> Duration {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_GRACE)
}

/// Like [`plan_pod`], with the restart bookkeeping for the executor to keep.
pub fn plan(pod: &Value, observed: &PodObserved, now: Timestamp) -> PodPlan {
    let containers = super::init::containers_of(pod);
    let inits = super::init::init_containers_of(pod);
    let mut tracked: BTreeMap<String, Tracked> = observed
        .containers
        .iter()
        .map(|(n, c)| (n.clone(), c.tracked))
        .collect();
    let mut actions = Vec::new();

    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        let grace = grace_period(pod);
        for c in containers.iter().chain(&inits) {
            let exists = observed
                .containers
                .get(&c.name)
                .and_then(|o| o.runtime)
                .is_some_and(|r| r != restart::Observed::Absent);
            if exists {
                actions.push(PodAction::StopContainer {
                    name: c.name.clone(),
                    grace,
                });
            }
        }
        // Idempotent, and an adopted pod's network is not in memory: always tear down.
        actions.push(PodAction::TeardownNetwork);
        actions.push(PodAction::DeletePodObject);
        return PodPlan { actions, tracked };
    }
    if let Some(initializing) = super::init::plan_initializing(pod, observed, now) {
        return initializing;
    }

    let policy =
        RestartPolicy::from_spec(pod.pointer("/spec/restartPolicy").and_then(Value::as_str));
    let default = ContainerObserved::default();
    let mut statuses = Vec::new();
    let mut runs = Vec::new();
    let mut all_images_ready = true;
    for c in &containers {
        let o = observed.containers.get(&c.name).unwrap_or(&default);
        let image = c.image.clone().unwrap_or_default();
        let base = json!({
            "name": c.name,
            "image": image,
            "imageID": match &o.image { ImageObserved::Ready { image_id } => image_id.clone(), _ => String::new() },
            "restartCount": o.tracked.restart_count,
        });
        let waiting = |reason: &str, message: Option<&str>| {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        };
        // A container that runs (or ran) already is judged by the runtime even while an
        // image is retried: an image problem only holds back a container not yet started.
        let started_before = o.runtime.is_some_and(|r| r != restart::Observed::Absent)
            || o.tracked.last_exit.is_some();
        if !started_before {
            match &o.image {
                ImageObserved::NotTried => {
                    all_images_ready = false;
                    actions.push(PodAction::EnsureImage {
                        container: c.name.clone(),
                    });
                    statuses.push(status_entry(
                        base,
                        waiting("ContainerCreating", None),
                        None,
                        false,
                    ));
                    continue;
                }
                ImageObserved::Failed {
                    message,
                    never_pull,
                    retry_at,
                    fresh,
                    ..
                } => {
                    all_images_ready = false;
                    let reason = if *never_pull {
                        "ErrImageNeverPull"
                    } else if *fresh {
                        "ErrImagePull"
                    } else if now >= *retry_at {
                        actions.push(PodAction::EnsureImage {
                            container: c.name.clone(),
                        });
                        "ErrImagePull"
                    } else {
                        "ImagePullBackOff"
                    };
                    if *never_pull && now >= *retry_at {
                        actions.push(PodAction::EnsureImage {
                            container: c.name.clone(),
                        });
                    }
                    statuses.push(status_entry(
                        base,
                        waiting(reason, Some(message)),
                        None,
                        false,
                    ));
                    continue;
                }
                ImageObserved::Ready { .. } => {}
            }
        }
        let (mut runtime, mut tracked_now) =
            (o.runtime.unwrap_or(restart::Observed::Absent), o.tracked);
        // A failed liveness or startup probe: kill it, then restart as after an exit.
        if let (restart::Observed::Running { started_at }, Some(_)) = (runtime, &o.probes.unhealthy)
        {
            let grace = o.probes.kill_grace.unwrap_or_else(|| grace_period(pod));
            actions.push(PodAction::StopContainer {
                name: c.name.clone(),
                grace,
            });
            tracked_now = probe::after_kill(policy, tracked_now, started_at, now);
            runtime = restart::Observed::Absent;
        }
        let step = restart::step(policy, tracked_now, runtime, now);
        tracked.insert(c.name.clone(), step.tracked);
        if step.start {
            runs.push(PodAction::RunContainer {
                name: c.name.clone(),
                restart_count: step.tracked.restart_count,
            });
        }
        let (state, running) = match step.state {
            restart::State::Waiting { reason } => (waiting(reason, None), false),
            restart::State::Running { started_at } => (
                json!({"running": {"startedAt": started_at.to_string()}}),
                true,
            ),
            restart::State::Terminated { exit, reason } => (terminated(&exit, reason), false),
        };
        let mut entry = base;
        entry["restartCount"] = json!(step.tracked.restart_count);
        let mut entry = status_entry(entry, state, step.last_state.as_ref(), running);
        let (started, ready) = probe::container_status(c, &o.probes, running);
        entry["started"] = json!(started);
        entry["ready"] = json!(ready);
        statuses.push(entry);
    }
    if observed.ip.is_none() && !containers.is_empty() {
        actions.push(PodAction::SetupNetwork);
    } else if all_images_ready {
        actions.extend(runs);
    }
    let mut status = pod_status(pod, observed, &statuses, now);
    super::init::report_initialized(pod, observed, &mut status);
    actions.push(PodAction::ReportStatus(status));
    PodPlan { actions, tracked }
}

fn terminated(exit: &Exit, reason: &str) -> Value {
    json!({"terminated": {
        "exitCode": exit.exit_code,
        "reason": reason,
        "startedAt": exit.started_at.to_string(),
        "finishedAt": exit.finished_at.to_string(),
    }})
}

fn status_entry(mut base: Value, state: Value, last: Option<&Exit>, running: bool) -> Value {
    base["state"] = state;
    base["ready"] = json!(running);
    base["started"] = json!(running);
    base["lastState"] = match last {
        Some(exit) => terminated(exit, exit.reason()),
        None => json!({}),
    };
    base
}

/// Phase, conditions, IPs and container statuses. Conditions keep their
/// `lastTransitionTime` while their status holds; conditions the agent does not own are kept.
pub(super) fn pod_status(
    pod: &Value,
    observed: &PodObserved,
    statuses: &[Value],
    now: Timestamp,
) -> Value {
    let is = |s: &Value, key: &str| s.pointer(&format!("/state/{key}")).is_some();
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s["ready"] == true);
    let all_terminated = !statuses.is_empty() && statuses.iter().all(|s| is(s, "terminated"));
    let ever_started = |s: &Value| {
        is(s, "running") || is(s, "terminated") || s.pointer("/lastState/terminated").is_some()
    };
    let phase = if all_terminated {
        let failed = statuses.iter().any(|s| {
            s.pointer("/state/terminated/exitCode")
                .and_then(Value::as_i64)
                != Some(0)
        });
        if failed { "Failed" } else { "Succeeded" }
    } else if !statuses.is_empty() && statuses.iter().all(ever_started) {
        "Running"
    } else {
        "Pending"
    };
    let now_text = now.to_string();
    let previous = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    let ready_reason = if all_terminated {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let conditions = super::pod_conditions(&previous, all_ready, ready_reason, &now_text);
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
        "qosClass": previous.get("qosClass").cloned().unwrap_or_else(|| json!("BestEffort")),
    });
    if let Some(host) = observed.host_ip {
        status["hostIP"] = json!(host.to_string());
        status["hostIPs"] = json!([{"ip": host.to_string()}]);
    }
    if let Some(ip) = observed.ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    let start = previous
        .get("startTime")
        .cloned()
        .or_else(|| observed.start_time.map(|t| json!(t.to_string())));
    if let Some(start) = start {
        status["startTime"] = start;
    }
    status
}

/// The status without the parts that change on every round by themselves, to decide
/// whether it is worth writing: equal statuses differ at most in these.
pub fn status_changed(previous: Option<&Value>, next: &Value) -> bool {
    previous != Some(next)
}

// ---------------------------------------------------------------------------------------
// Side effects.

/// A pulled image, as a container needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyImage {
    /// `imageID`: the reference with its manifest digest.
    pub image_id: String,
    /// Whether the registry was asked (false: the node had it and the policy allowed that).
    pub pulled: bool,
    pub config: bundle::ImageConfig,
}

/// The node's images, as the pod sync needs them.
pub trait Images: Send + Sync {
    /// Makes `image` present as `policy` says (absent: the Kubernetes default).
    fn ensure(&self, image: &str, policy: Option<&str>) -> Result<ReadyImage, ImageError>;
    /// A writable rootfs for one container under `container_dir`.
    fn prepare(&self, image: &str, container_dir: &Path) -> Result<PathBuf, ImageError>;
    /// Removes what [`Images::prepare`] made (unmounting first when it is a mount).
    fn release(&self, container_dir: &Path) -> Result<(), ImageError>;
}

/// The real images: the store, a registry, and a Tokio handle to run pulls on.
pub struct StoreImages {
    pub store: ImageStore,
    pub registry: OciRegistry,
    /// A Docker `config.json` with registry credentials (read at every pull, so new
    /// credentials need no restart); `None` or no entry for a registry: anonymous.
    pub docker_config: Option<PathBuf>,
    pub handle: tokio::runtime::Handle,
}

impl StoreImages {
    fn auth_for(&self, reference: &ImageRef) -> Result<RegistryAuth, ImageError> {
        match &self.docker_config {
            Some(path) if path.exists() => {
                super::image::registry::auth_from_docker_config(path, &reference.registry)
            }
            _ => Ok(RegistryAuth::Anonymous),
        }
    }
}

impl Images for StoreImages {
    fn ensure(&self, image: &str, policy: Option<&str>) -> Result<ReadyImage, ImageError> {
        let reference = ImageRef::parse(image)?;
        let policy = policy
            .and_then(PullPolicy::parse)
            .unwrap_or_else(|| PullPolicy::default_for(&reference));
        let auth = self.auth_for(&reference)?;
        let outcome =
            self.handle
                .block_on(self.store.ensure(&self.registry, &reference, policy, &auth))?;
        let c = &outcome.image.config;
        Ok(ReadyImage {
            image_id: format!("{}@{}", reference.name(), outcome.image.manifest_digest),
            pulled: outcome.pulled,
            config: bundle::ImageConfig {
                entrypoint: Some(c.entrypoint.clone()).filter(|v| !v.is_empty()),
                cmd: Some(c.cmd.clone()).filter(|v| !v.is_empty()),
                env: Some(c.env.clone()).filter(|v| !v.is_empty()),
                working_dir: c.working_dir.clone(),
            },
        })
    }

    fn prepare(&self, image: &str, container_dir: &Path) -> Result<PathBuf, ImageError> {
        let reference = ImageRef::parse(image)?;
        let stored = self.store.image(&reference)?;
        let rootfs = self.store.rootfs(&stored)?;
        Ok(super::image::prepare_rootfs(&rootfs, container_dir)?.path)
    }

    fn release(&self, container_dir: &Path) -> Result<(), ImageError> {
        let mounted = PreparedRootfs {
            path: container_dir.join("rootfs"),
            method: RootfsMethod::Overlay,
        };
        if super::image::release_rootfs(&mounted, container_dir).is_ok() {
            return Ok(());
        }
        let copied = PreparedRootfs {
            path: container_dir.join("rootfs"),
            method: RootfsMethod::Copy {
                overlay_error: String::new(),
            },
        };
        super::image::release_rootfs(&copied, container_dir)
    }
}

/// Images that are all present except the ones in `missing`; records what was asked.
#[derive(Default)]
pub struct FakeImages {
    pub missing: Mutex<BTreeSet<String>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeImages {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }
}

impl Images for FakeImages {
    fn ensure(&self, image: &str, _policy: Option<&str>) -> Result<ReadyImage, ImageError> {
        lock(&self.calls).push(format!("ensure {image}"));
        if lock(&self.missing).contains(image) {
            return Err(ImageError::Registry {
                reference: image.to_string(),
                registry: "fake".into(),
                message: "manifest unknown".into(),
            });
        }
        Ok(ReadyImage {
            image_id: format!("{image}@sha256:fake"),
            pulled: false,
            config: bundle::ImageConfig {
                entrypoint: Some(vec!["/bin/true".into()]),
                ..Default::default()
            },
        })
    }

    fn prepare(&self, image: &str, container_dir: &Path) -> Result<PathBuf, ImageError> {
        lock(&self.calls).push(format!("prepare {image}"));
        let rootfs = container_dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(ImageError::io(&rootfs))?;
        Ok(rootfs)
    }

    fn release(&self, container_dir: &Path) -> Result<(), ImageError> {
        lock(&self.calls).push("release".to_string());
        match std::fs::remove_dir_all(container_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::Io {
                path: container_dir.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// The node's pod network, as the pod sync needs it.
pub trait PodNet: Send {
    /// Sets the pod's network up (nothing when it is); its IP and network namespace name.
    fn setup_pod(&mut self, uid: &str) -> Result<(Ipv4Addr, String), NetError>;
    fn teardown_pod(&mut self, uid: &str) -> Result<(), NetError>;
    /// Uids of the pods holding an address.
    fn leased(&self) -> Vec<String>;
}

impl<O: NetOps + Send> PodNet for PodNetwork<O> {
    fn setup_pod(&mut self, uid: &str) -> Result<(Ipv4Addr, String), NetError> {
        let a = PodNetwork::setup_pod(self, uid)?;
        Ok((a.ip, a.netns))
    }

    fn teardown_pod(&mut self, uid: &str) -> Result<(), NetError> {
        PodNetwork::teardown_pod(self, uid).map(|_| ())
    }

    fn leased(&self) -> Vec<String> {
        self.allocations().pods.keys().cloned().collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pod {pod}: network: {source}")]
    Network { pod: String, source: Box<NetError> },
    #[error("pod {pod} container {container:?}: {source}")]
    Runtime {
        pod: String,
        container: String,
        source: Box<RuntimeError>,
    },
    #[error("pod {pod} container {container:?}: {source}")]
    Bundle {
        pod: String,
        container: String,
        source: Box<BundleError>,
    },
    #[error("pod {pod} container {container:?}: image: {source}")]
    Image {
        pod: String,
        container: String,
        source: Box<ImageError>,
    },
    #[error("pod {pod}: {path}: {source}")]
    Io {
        pod: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pod {pod}: no metadata.uid")]
    NoUid { pod: String },
    #[error(
        "pod {pod} container {container:?}: the Services are not read yet (needed for its Service variables); retried at the next sync"
    )]
    ServicesUnread { pod: String, container: String },
}

/// What a sync ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// The pod's status now (write it when it changed).
    Status(Value),
    /// The pod is stopped and cleaned up: delete the pod object.
    Deleted,
}

/// The runtime id of a pod's container: `<uid>-<name>` (a pod's containers share the prefix).
pub fn container_id(uid: &str, name: &str) -> String {
    format!("{uid}-{name}")
}

/// Memory of one pod between syncs.
#[derive(Debug, Clone, Default)]
struct PodMemory {
    observed: PodObserved,
    netns: Option<String>,
    images: BTreeMap<String, bundle::ImageConfig>,
    started: BTreeMap<String, Timestamp>,
    finished: BTreeMap<String, Timestamp>,
    /// Containers that could not be started (runc or the bundle refused): when and why.
    /// They count as exited with 128 (`StartError`), so restarts back off as for a crash.
    start_errors: BTreeMap<String, (Timestamp, String)>,
}

/// The status with the reasons containers could not start: `StartError` with the message on
/// their terminated state, and the message on the waiting state (`RunContainerError` while
/// no back-off applies), as the kubelet reports them.
pub fn with_start_errors(
    mut status: Value,
    errors: &BTreeMap<String, (Timestamp, String)>,
) -> Value {
    let Some(list) = status
        .get_mut("containerStatuses")
        .and_then(Value::as_array_mut)
    else {
        return status;
    };
    for entry in list {
        let Some((_, message)) = entry
            .get("name")
            .and_then(Value::as_str)
            .and_then(|n| errors.get(n))
        else {
            continue;
        };
        for key in ["/state/terminated", "/lastState/terminated"] {
            if let Some(t) = entry.pointer_mut(key).and_then(Value::as_object_mut) {
                t.insert("reason".into(), json!("StartError"));
                t.insert("message".into(), json!(message));
            }
        }
        if let Some(w) = entry
            .pointer_mut("/state/waiting")
            .and_then(Value::as_object_mut)
        {
            if w.get("reason").and_then(Value::as_str) == Some("ContainerCreating") {
                w.insert("reason".into(), json!("RunContainerError"));
            }
            w.insert("message".into(), json!(message));
        }
    }
    status
}

/// Runs the actions of [`plan_pod`] for one pod at a time. Syncs of different pods may run
/// at once; the caller never runs two syncs of one pod at once.
pub struct PodSyncer<N: PodNet> {
    runtime: Arc<dyn ContainerRuntime>,
    network: Mutex<N>,
    images: Arc<dyn Images>,
    /// `<state>/pods`: per pod `<uid>/hosts`, `resolv.conf`, per container `<name>/`.
    pods_dir: PathBuf,
    host_ip: Ipv4Addr,
    /// How often a stopping container is polled.
    pub poll: Duration,
    memory: Mutex<BTreeMap<String, PodMemory>>,
    /// Events noted while acting, by pod uid, until [`PodSyncer::take_events`].
    notes: Mutex<BTreeMap<String, Vec<PodNote>>>,
    /// postStart and preStop hooks.
    hooks: Arc<dyn HookRunner>,
    /// The Services containers learn through their environment.
    services: Arc<dyn ServiceSource>,
    /// Their variables, shared by the containers started from the same Services.
    service_env: super::service_vars::ServiceEnvCache,
    /// The probes' results, when the agent runs probes.
    probes: Option<Arc<dyn ProbeResults>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pod_name(pod: &Value) -> String {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{ns}/{name}")
}

impl<N: PodNet> PodSyncer<N> {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        network: N,
        images: Arc<dyn Images>,
        state: &Path,
        host_ip: Ipv4Addr,
    ) -> Self {
        PodSyncer {
            network: Mutex::new(network),
            images,
            pods_dir: state.join("pods"),
            host_ip,
            poll: Duration::from_millis(100),
            memory: Mutex::new(BTreeMap::new()),
            notes: Mutex::new(BTreeMap::new()),
            hooks: Arc::new(RuntimeHooks::new(runtime.clone())),
            runtime,
            services: Arc::new(StaticServices(Vec::new())),
            service_env: Default::default(),
            probes: None,
        }
    }

    fn note(&self, uid: &str, note: PodNote) {
        lock(&self.notes)
            .entry(uid.to_string())
            .or_default()
            .push(note);
    }

    /// The events noted for pod `uid` since the last call, oldest first.
    pub fn take_events(&self, uid: &str) -> Vec<PodNote> {
        lock(&self.notes).remove(uid).unwrap_or_default()
    }

    /// Runs hooks with `hooks` instead of through the runtime (tests).
    pub fn with_hooks(mut self, hooks: Arc<dyn HookRunner>) -> Self {
        self.hooks = hooks;
        self
    }

    /// Reads Services from `services` (the agent's cache) instead of knowing none.
    pub fn with_services(mut self, services: Arc<dyn ServiceSource>) -> Self {
        self.services = services;
        self
    }

    /// Reads the containers' probe results from `probes` in every round.
    pub fn with_probes(mut self, probes: Arc<dyn ProbeResults>) -> Self {
        self.probes = Some(probes);
        self
    }

    pub fn network(&self) -> MutexGuard<'_, N> {
        lock(&self.network)
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// Uids of the pods this syncer remembers.
    pub fn known(&self) -> Vec<String> {
        lock(&self.memory).keys().cloned().collect()
    }

    /// Forgets a pod (after its object is deleted).
    pub fn forget(&self, uid: &str) {
        lock(&self.memory).remove(uid);
    }

    /// One sync of `pod` at `now`: acts until nothing is left to do, then reports.
    pub fn sync(&self, pod: &Value, now: Timestamp) -> Result<SyncOutcome, SyncError> {
        let name = pod_name(pod);
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .ok_or_else(|| SyncError::NoUid { pod: name.clone() })?
            .to_string();
        let mut memory = lock(&self.memory).get(&uid).cloned().unwrap_or_else(|| {
            // New to this agent (or the agent restarted): keep the restart counts reported.
            let mut m = PodMemory::default();
            for s in ["containerStatuses", "initContainerStatuses"]
                .iter()
                .filter_map(|list| pod.pointer(&format!("/status/{list}")))
                .filter_map(Value::as_array)
                .flatten()
            {
                if let (Some(n), Some(count)) = (
                    s.get("name").and_then(Value::as_str),
                    s.get("restartCount").and_then(Value::as_u64),
                ) {
                    let c = m.observed.containers.entry(n.to_string()).or_default();
                    c.tracked.restart_count = u32::try_from(count).unwrap_or(u32::MAX);
                }
            }
            m
        });
        memory.observed.host_ip = Some(self.host_ip);
        memory.observed.start_time.get_or_insert(now);
        for c in memory.observed.containers.values_mut() {
            if let ImageObserved::Failed { fresh, .. } = &mut c.image {
                *fresh = false;
            }
        }
        let result = self.rounds(pod, &name, &uid, &mut memory, now);
        match &result {
            Ok(SyncOutcome::Deleted) => {
                lock(&self.memory).remove(&uid);
            }
            _ => {
                lock(&self.memory).insert(uid, memory);
            }
        }
        result
    }

    fn rounds(
        &self,
        pod: &Value,
        name: &str,
        uid: &str,
        memory: &mut PodMemory,
        now: Timestamp,
    ) -> Result<SyncOutcome, SyncError> {
        let containers = super::init::all_containers_of(pod);
        let mut last_status = json!({});
        for _ in 0..5 {
            self.observe(uid, &containers, memory, now)?;
            let planned = plan(pod, &memory.observed, now);
            for (n, t) in planned.tracked {
                memory.observed.containers.entry(n).or_default().tracked = t;
            }
            let mut acted = false;
            for action in planned.actions {
                match action {
                    PodAction::ReportStatus(status) => {
                        last_status = with_start_errors(status, &memory.start_errors)
                    }
                    PodAction::DeletePodObject => {
                        for c in &containers {
                            self.remove_logs(&container_id(uid, &c.name));
                            // An agent killed between removing a container and releasing its
                            // rootfs left the overlay mounted: the directory would stay busy
                            // and the pod undeleted for ever. Releasing is idempotent.
                            let dir = self.pods_dir.join(uid).join(&c.name);
                            self.images
                                .release(&dir)
                                .map_err(|source| self.image_err(name, &c.name, source))?;
                        }
                        let dir = self.pods_dir.join(uid);
                        remove_dir(&dir).map_err(|source| SyncError::Io {
                            pod: name.to_string(),
                            path: dir.clone(),
                            source,
                        })?;
                        return Ok(SyncOutcome::Deleted);
                    }
                    action => {
                        acted = true;
                        let starting = match &action {
                            PodAction::RunContainer { name, .. } => Some(name.clone()),
                            _ => None,
                        };
                        match (
                            self.act(pod, name, uid, &containers, memory, action, now),
                            starting,
                        ) {
                            (Ok(()), Some(container)) => {
                                memory.start_errors.remove(&container);
                            }
                            (Ok(()), None) => {}
                            (
                                Err(e @ (SyncError::Runtime { .. } | SyncError::Bundle { .. })),
                                Some(container),
                            ) => {
                                // The pod's spec or image cannot run: say so in its status and
                                // back off, rather than failing every sync without a word.
                                tracing::warn!(pod = %name, %container, "cannot start: {e}");
                                let _ = self.runtime.delete(&container_id(uid, &container));
                                self.note(uid, PodNote::warning("Failed", format!("Error: {e}")));
                                memory.start_errors.insert(container, (now, e.to_string()));
                            }
                            (Err(e), _) => return Err(e),
                        }
                    }
                }
            }
            if !acted {
                break;
            }
        }
        Ok(SyncOutcome::Status(last_status))
    }

    /// Reads the runtime's state of every container into `memory`.
    fn observe(
        &self,
        uid: &str,
        containers: &[Container],
        memory: &mut PodMemory,
        now: Timestamp,
    ) -> Result<(), SyncError> {
        for c in containers {
            let id = container_id(uid, &c.name);
            let state = self
                .runtime
                .state(&id)
                .map_err(|source| SyncError::Runtime {
                    pod: uid.to_string(),
                    container: c.name.clone(),
                    source: Box::new(source),
                })?;
            // When runc created the container, as runc says: the same start time whichever
            // agent process asks, so an agent that restarts and adopts the container reports
            // the start it had, not the adoption. Without it, when this agent started it.
            let started = match state.as_ref().and_then(|s| s.created) {
                Some(created) => {
                    memory.started.insert(c.name.clone(), created);
                    created
                }
                None => *memory.started.entry(c.name.clone()).or_insert(now),
            };
            let observed = match state {
                None => match memory.start_errors.get(&c.name) {
                    Some((at, _)) => restart::Observed::Exited(Exit {
                        exit_code: 128,
                        started_at: *at,
                        finished_at: *at,
                    }),
                    None => restart::Observed::Absent,
                },
                Some(s) if s.status == Status::Stopped => {
                    let finished = *memory.finished.entry(c.name.clone()).or_insert(now);
                    restart::Observed::Exited(Exit {
                        // runc forgets exit codes of containers it did not reap (adopted).
                        exit_code: s.exit_code.unwrap_or(255),
                        started_at: started,
                        finished_at: finished,
                    })
                }
                Some(_) => restart::Observed::Running {
                    started_at: started,
                },
            };
            if observed == restart::Observed::Absent {
                memory.started.remove(&c.name);
            }
            let probes = match (&self.probes, observed) {
                (Some(p), restart::Observed::Running { started_at }) => {
                    p.observe(uid, &c.name, &started_at.to_string())
                }
                _ => ProbeObserved::default(),
            };
            let entry = memory
                .observed
                .containers
                .entry(c.name.clone())
                .or_default();
            entry.runtime = Some(observed);
            entry.probes = probes;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn act(
        &self,
        pod: &Value,
        name: &str,
        uid: &str,
        containers: &[Container],
        memory: &mut PodMemory,
        action: PodAction,
        now: Timestamp,
    ) -> Result<(), SyncError> {
        let runtime_err = |container: &str| {
            let pod = name.to_string();
            let container = container.to_string();
            move |source| SyncError::Runtime {
                pod,
                container,
                source: Box::new(source),
            }
        };
        match action {
            PodAction::EnsureImage { container } => {
                let Some(spec) = containers.iter().find(|c| c.name == container) else {
                    return Ok(());
                };
                let image = spec.image.clone().unwrap_or_default();
                let entry = memory
                    .observed
                    .containers
                    .entry(container.clone())
                    .or_default();
                match self
                    .images
                    .ensure(&image, spec.image_pull_policy.as_deref())
                {
                    Ok(ready) => {
                        if ready.pulled {
                            self.note(
                                uid,
                                PodNote::normal("Pulling", format!("Pulling image \"{image}\"")),
                            );
                            self.note(
                                uid,
                                PodNote::normal(
                                    "Pulled",
                                    format!("Successfully pulled image \"{image}\""),
                                ),
                            );
                        } else {
                            self.note(
                                uid,
                                PodNote::normal(
                                    "Pulled",
                                    format!(
                                        "Container image \"{image}\" already present on machine"
                                    ),
                                ),
                            );
                        }
                        entry.image = ImageObserved::Ready {
                            image_id: ready.image_id,
                        };
                        memory.images.insert(container, ready.config);
                    }
                    Err(e) => {
                        let failures = match &entry.image {
                            ImageObserved::Failed { failures, .. } => failures + 1,
                            _ => 1,
                        };
                        let wait = IMAGE_BACKOFF
                            .saturating_mul(1 << (failures - 1).min(5))
                            .min(IMAGE_MAX_BACKOFF);
                        tracing::warn!(pod = %name, container = %container, "image {image}: {e}");
                        let never = matches!(e, ImageError::NeverPull(_));
                        self.note(
                            uid,
                            PodNote::warning(
                                "Failed",
                                format!("Failed to pull image \"{image}\": {e}"),
                            ),
                        );
                        let error = if never {
                            "ErrImageNeverPull"
                        } else {
                            "ErrImagePull"
                        };
                        self.note(uid, PodNote::warning("Failed", format!("Error: {error}")));
                        entry.image = ImageObserved::Failed {
                            message: e.to_string(),
                            never_pull: matches!(e, ImageError::NeverPull(_)),
                            failures,
                            retry_at: now.checked_add(wait).unwrap_or(now),
                            fresh: true,
                        };
                    }
                }
            }
            PodAction::SetupNetwork => {
                let (ip, netns) =
                    lock(&self.network)
                        .setup_pod(uid)
                        .map_err(|source| SyncError::Network {
                            pod: name.to_string(),
                            source: Box::new(source),
                        })?;
                memory.observed.ip = Some(ip);
                memory.netns = Some(netns);
                let dir = self.pods_dir.join(uid);
                let hostname = pod
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let write = |file: &str, text: &str| {
                    let path = dir.join(file);
                    std::fs::create_dir_all(&dir)
                        .and_then(|()| std::fs::write(&path, text))
                        .map_err(|source| SyncError::Io {
                            pod: name.to_string(),
                            path,
                            source,
                        })
                };
                write(
                    "hosts",
                    &format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{hostname}\n"),
                )?;
                write("resolv.conf", &resolv)?;
            }
            PodAction::RunContainer {
                name: container, ..
            } => {
                let Some(spec) = containers.iter().find(|c| c.name == container) else {
                    return Ok(());
                };
                let id = container_id(uid, &container);
                let dir = self.pods_dir.join(uid).join(&container);
                self.runtime.delete(&id).map_err(runtime_err(&container))?;
                self.images
                    .release(&dir)
                    .map_err(|source| self.image_err(name, &container, source))?;
                let image_config = match memory.images.get(&container) {
                    Some(c) => c.clone(),
                    None => {
                        // Adopted pod restarting a container: ask the store again.
                        let image = spec.image.clone().unwrap_or_default();
                        let ready = self
                            .images
                            .ensure(&image, Some("IfNotPresent"))
                            .map_err(|source| self.image_err(name, &container, source))?;
                        memory
                            .images
                            .insert(container.clone(), ready.config.clone());
                        ready.config
                    }
                };
                let rootfs = self
                    .images
                    .prepare(spec.image.as_deref().unwrap_or_default(), &dir)
                    .map_err(|source| self.image_err(name, &container, source))?;
                let pod_dir = self.pods_dir.join(uid);
                let context = PodContext {
                    pod_name: pod
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    netns: format!(
                        "/var/run/netns/{}",
                        memory.netns.clone().unwrap_or_default()
                    ),
                    hosts_file: pod_dir.join("hosts"),
                    resolv_conf: pod_dir.join("resolv.conf"),
                    rootfs,
                    service_env: self
                        .service_env
                        .for_pod(self.services.as_ref(), pod)
                        .ok_or_else(|| SyncError::ServicesUnread {
                            pod: name.to_string(),
                            container: container.clone(),
                        })?,
                };
                let spec_json =
                    bundle::runtime_spec(&image_config, spec, &context).map_err(|source| {
                        SyncError::Bundle {
                            pod: name.to_string(),
                            container: container.clone(),
                            source: Box::new(source),
                        }
                    })?;
                let config = dir.join("config.json");
                std::fs::File::create(&config)
                    .and_then(|file| spec_json.write_to(file))
                    .map_err(|source| SyncError::Io {
                        pod: name.to_string(),
                        path: config.clone(),
                        source,
                    })?;
                self.note(
                    uid,
                    PodNote::normal("Created", format!("Created container {container}")),
                );
                // `tend logs --previous` reads the instance before this one.
                if let Err(e) = super::logs::files::rotate(&self.runtime.log_path(&id)) {
                    tracing::warn!(pod = %name, %container, "keeping the previous log: {e}");
                }
                self.runtime
                    .run(&id, &dir)
                    .map_err(runtime_err(&container))?;
                self.note(
                    uid,
                    PodNote::normal("Started", format!("Started container {container}")),
                );
                memory.started.insert(container.clone(), now);
                memory.finished.remove(&container);
                let target = hooks::HookTarget {
                    pod: name,
                    container: Some(spec),
                    id: &id,
                    pod_ip: memory.observed.ip,
                };
                hooks::post_start(
                    self.hooks.as_ref(),
                    self.runtime.as_ref(),
                    &target,
                    grace_period(pod),
                    self.poll,
                )
                .map_err(runtime_err(&container))?;
            }
            PodAction::StopContainer {
                name: container,
                grace,
            } => {
                let id = container_id(uid, &container);
                self.note(
                    uid,
                    PodNote::normal("Killing", format!("Stopping container {container}")),
                );
                let target = hooks::HookTarget {
                    pod: name,
                    container: containers.iter().find(|c| c.name == container),
                    id: &id,
                    pod_ip: memory.observed.ip,
                };
                hooks::stop(
                    self.hooks.as_ref(),
                    self.runtime.as_ref(),
                    &target,
                    grace,
                    self.poll,
                )
                .map_err(runtime_err(&container))?;
                self.runtime.delete(&id).map_err(runtime_err(&container))?;
                let dir = self.pods_dir.join(uid).join(&container);
                self.images
                    .release(&dir)
                    .map_err(|source| self.image_err(name, &container, source))?;
                if let Some(c) = memory.observed.containers.get_mut(&container) {
                    c.runtime = Some(restart::Observed::Absent);
                }
            }
            PodAction::TeardownNetwork => {
                lock(&self.network)
                    .teardown_pod(uid)
                    .map_err(|source| SyncError::Network {
                        pod: name.to_string(),
                        source: Box::new(source),
                    })?;
                memory.observed.ip = None;
            }
            PodAction::DeletePodObject | PodAction::ReportStatus(_) => {}
        }
        Ok(())
    }

    fn image_err(&self, pod: &str, container: &str, source: ImageError) -> SyncError {
        SyncError::Image {
            pod: pod.to_string(),
            container: container.to_string(),
            source: Box::new(source),
        }
    }

    /// Removes what pods no longer bound here left on the node besides containers (those go
    /// through `remove_orphan`): their directories with any rootfs still mounted, their
    /// network namespace and address. A pod deleted while the agent was down (evicted from a
    /// node that stayed NotReady), or an agent killed while it set a pod up, leaves them. Run
    /// at adoption, before any pod sync starts. Returns the uids cleaned, or the first error.
    pub fn remove_unbound_pods(&self, bound: &BTreeSet<String>) -> Result<Vec<String>, SyncError> {
        let mut uids: BTreeSet<String> = lock(&self.network)
            .leased()
            .into_iter()
            .filter(|uid| !bound.contains(uid))
            .collect();
        let entries = match std::fs::read_dir(&self.pods_dir) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(SyncError::Io {
                    pod: String::new(),
                    path: self.pods_dir.clone(),
                    source,
                });
            }
        };
        for entry in entries {
            if let Some(uid) = entry.file_name().to_str()
                && !bound.contains(uid)
            {
                uids.insert(uid.to_string());
            }
        }
        for uid in &uids {
            let dir = self.pods_dir.join(uid);
            let containers = std::fs::read_dir(&dir)
                .map(|e| {
                    e.flatten()
                        .filter(|e| e.path().is_dir())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for container in containers {
                let name = container.file_name().to_string_lossy().into_owned();
                self.images
                    .release(&container.path())
                    .map_err(|source| self.image_err(uid, &name, source))?;
            }
            remove_dir(&dir).map_err(|source| SyncError::Io {
                pod: uid.clone(),
                path: dir.clone(),
                source,
            })?;
            lock(&self.network)
                .teardown_pod(uid)
                .map_err(|source| SyncError::Network {
                    pod: uid.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(uids.into_iter().collect())
    }

    /// Stops and removes a container of a pod this node no longer runs (adoption clean-up).
    pub fn remove_orphan(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        runc::stop(self.runtime.as_ref(), id, grace, self.poll)?;
        self.runtime.delete(id)?;
        self.remove_logs(id);
        Ok(())
    }

    /// Removes a container's current and previous logs (its pod is gone).
    fn remove_logs(&self, id: &str) {
        let log = self.runtime.log_path(id);
        if let Err(e) = super::logs::files::remove(&log) {
            tracing::warn!("removing {}: {e}", log.display());
        }
    }
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
