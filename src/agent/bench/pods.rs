//! Figure 1: a cached-image pod from `sync` to Running, through the real [`PodSyncer`].
//!
//! The outer bench makes a node namespace and the image archive, then runs itself again
//! inside the namespace (`tend bench agent --inner WORK`, joined to the namespace between
//! fork and exec), as a node's `tend agent` runs: [`IpCommands::new`] then acts on the node
//! it runs in, exactly the agent's code path. The inner bench imports the image, sets the node network up, starts
//! one warm-up pod (which unpacks the image), then `N` pods one after the other, each timed
//! from `sync` until its status says Running, then deletes them all; it prints its figures
//! as one JSON line. Timing wrappers around the runtime, the network ops and the images add
//! up where the time goes.

use super::image::{BUSYBOX_REF, busybox_image};
use super::{Lab, Report, summary};
use crate::agent::image::{ImageError, ImageStore, OciRegistry};
use crate::agent::network::ip::IpCommands;
use crate::agent::network::ipam::IpamStore;
use crate::agent::network::{NetError, NetOps, NodeNetwork, Observed, PodNetwork, Step};
use crate::agent::pods::{Images, PodSyncer, ReadyImage, StoreImages, SyncOutcome, container_id};
use crate::agent::runtime::runc::{
    ContainerRuntime, ContainerState, ExecOutput, Runc, RuntimeError, Signal, Status,
};
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time spent per named side effect, and how many times.
#[derive(Default)]
pub struct Clock(Mutex<BTreeMap<String, (Duration, u32)>>);

impl Clock {
    fn time<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        let spent = started.elapsed();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(what.to_string()).or_default();
        e.0 += spent;
        e.1 += 1;
        out
    }

    /// What was recorded since the last take, in milliseconds, and forgets it.
    fn take(&self) -> BTreeMap<String, (f64, u32)> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *map)
            .into_iter()
            .map(|(k, (d, n))| (k, (d.as_secs_f64() * 1000.0, n)))
            .collect()
    }
}

struct TimedRuntime {
    inner: Arc<dyn ContainerRuntime>,
    clock: Arc<Clock>,
}

impl ContainerRuntime for TimedRuntime {
    fn run(&self, id: &str, bundle: &Path) -> Result<u32, RuntimeError> {
        self.clock.time("runc run", || self.inner.run(id, bundle))
    }
    fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        self.clock.time("runc state", || self.inner.state(id))
    }
    fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.clock.time("runc kill", || self.inner.kill(id, signal))
    }
    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.clock.time("runc delete", || self.inner.delete(id))
    }
    fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        self.clock.time("runc list", || self.inner.list())
    }
    fn log_path(&self, id: &str) -> PathBuf {
        self.inner.log_path(id)
    }
    fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.clock
            .time("runc exec", || self.inner.exec(id, argv, timeout))
    }
}

struct TimedOps {
    inner: IpCommands,
    clock: Arc<Clock>,
}

/// A step's kind, for the breakdown.
fn step_name(step: &Step) -> String {
    let debug = format!("{step:?}");
    let kind = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    format!("net {kind}")
}

impl NetOps for TimedOps {
    fn observe(&mut self) -> Result<Observed, NetError> {
        let inner = &mut self.inner;
        self.clock.time("net observe", || inner.observe())
    }
    fn apply(&mut self, step: &Step) -> Result<(), NetError> {
        let inner = &mut self.inner;
        self.clock.time(&step_name(step), || inner.apply(step))
    }
    fn apply_all(&mut self, steps: &[Step]) -> Result<(), NetError> {
        // As the agent does it (batched), timed as a whole.
        let inner = &mut self.inner;
        let name = match steps {
            [one] => step_name(one),
            _ => format!("net apply {} steps", steps.len()),
        };
        self.clock.time(&name, || inner.apply_all(steps))
    }
}

struct TimedImages {
    inner: StoreImages,
    clock: Arc<Clock>,
}

impl Images for TimedImages {
    fn ensure(&self, image: &str, policy: Option<&str>) -> Result<ReadyImage, ImageError> {
        self.clock
            .time("image ensure", || self.inner.ensure(image, policy))
    }
    fn prepare(&self, image: &str, container_dir: &Path) -> Result<PathBuf, ImageError> {
        self.clock.time("rootfs prepare", || {
            self.inner.prepare(image, container_dir)
        })
    }
    fn release(&self, container_dir: &Path) -> Result<(), ImageError> {
        self.clock
            .time("rootfs release", || self.inner.release(container_dir))
    }
}

/// What the inner bench measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct PodsResult {
    /// The warm-up pod, which unpacks the image into its rootfs.
    pub first_ms: f64,
    pub start_ms: Vec<f64>,
    pub delete_ms: Vec<f64>,
    /// Side effects of the starts (all pods), by name: total ms and count.
    pub start_parts: BTreeMap<String, (f64, u32)>,
    pub delete_parts: BTreeMap<String, (f64, u32)>,
}

/// The uid of bench pod `i`: unique in its first 12 letters (the pod namespace's name).
pub fn pod_uid(i: usize) -> String {
    let pid = std::process::id() & 0xff_ffff;
    format!("{pid:06x}{:04x}b0-0000-4000-8000-{i:012x}", i & 0xffff)
}

/// Bench pod `i`: one container of the busybox image, `Never` pulled, which exits at once
/// on SIGTERM (a shell waiting on `sleep`, with a trap), so that deletion does not wait out
/// a grace period.
pub fn pod(i: usize, uid: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i}"), "namespace": "default", "uid": uid},
        "spec": {
            "nodeName": "bench",
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": BUSYBOX_REF,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
            }],
        },
    })
}

/// The outer part: namespace, image archive, the inner bench, the report.
pub fn run(lab: &mut Lab, n: usize) -> anyhow::Result<Report> {
    let node = format!("tend-bench-{}", std::process::id());
    lab.node_namespace(&node)?;
    let work = lab.work.clone();
    busybox_image()?.write_oci_archive(&work.join("busybox.tar"), BUSYBOX_REF)?;
    let state = work.join("state");
    lab.runc_roots.push(state.join("runc"));
    lab.agent_states.push(state.clone());
    lab.pod_netns
        .extend((0..=n).map(|i| crate::agent::network::plan::pod_names(&pod_uid(i)).netns));
    let exe = std::env::current_exe().context("locating the tend binary")?;
    let child = super::command_in_netns(&node, &exe)?
        .args(["bench", "agent", "--pods", &n.to_string(), "--inner"])
        .arg(&work)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running the bench inside the node namespace")?;
    lab.children.push(child);
    let out = match lab.children.last_mut().and_then(|c| c.stdout.take()) {
        Some(mut stdout) => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text)?;
            text
        }
        None => String::new(),
    };
    let status = lab
        .children
        .last_mut()
        .map(|c| c.wait())
        .transpose()?
        .context("the inner bench")?;
    if !status.success() {
        bail!("the pod bench inside {node} failed ({status})");
    }
    let result: PodsResult = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the inner bench printed no figures: {out:?}"))?;
    Ok(report(&result, n))
}

fn report(r: &PodsResult, n: usize) -> Report {
    let mut report = Report::default();
    let (min, median, p90) = summary(&r.start_ms);
    report.goal(
        "cached-image pod start -> Running (median)",
        median,
        "ms",
        150.0,
        &format!("min {min:.1}, p90 {p90:.1}, of {n} pods one after the other"),
    );
    report.info(
        "  first pod, which unpacks the image",
        r.first_ms,
        "ms",
        "not counted above",
    );
    let total: f64 = r.start_ms.iter().sum();
    report.text(format!(
        "    where a start's time goes (mean per pod): {}",
        breakdown(&r.start_parts, total, r.start_ms.len())
    ));
    let (min, median, p90) = summary(&r.delete_ms);
    report.info(
        "pod deletion -> gone (median)",
        median,
        "ms",
        &format!("min {min:.1}, p90 {p90:.1}; SIGTERM honoured at once"),
    );
    let total: f64 = r.delete_ms.iter().sum();
    report.text(format!(
        "    where a deletion's time goes (mean per pod): {}",
        breakdown(&r.delete_parts, total, r.delete_ms.len())
    ));
    report
}

/// `runc run 55.1 (1), net observe 12.0 (2), ..., other 3.0` per pod, largest first.
fn breakdown(parts: &BTreeMap<String, (f64, u32)>, total_ms: f64, pods: usize) -> String {
    let pods = pods.max(1) as f64;
    let mut v: Vec<(&String, &(f64, u32))> = parts.iter().collect();
    v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let accounted: f64 = v.iter().map(|(_, (ms, _))| ms).sum();
    let mut s: Vec<String> = v
        .iter()
        .map(|(k, (ms, count))| format!("{k} {:.1} (x{:.0})", ms / pods, f64::from(*count) / pods))
        .collect();
    s.push(format!(
        "other {:.1}",
        ((total_ms - accounted) / pods).max(0.0)
    ));
    s.join(", ")
}

/// Containers and pod networks the inner bench made, removed in Drop when it fails midway.
struct InnerGuard<'a> {
    syncer: &'a PodSyncer<PodNetwork<TimedOps>>,
    pods: Vec<Value>,
}

impl Drop for InnerGuard<'_> {
    fn drop(&mut self) {
        for p in &self.pods {
            let mut p = p.clone();
            p["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().to_string());
            p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let _ = self.syncer.sync(&p, jiff::Timestamp::now());
        }
    }
}

/// Syncs `pod` until its status says Running (a new pod takes one sync of three rounds).
fn start(syncer: &PodSyncer<PodNetwork<TimedOps>>, pod: &Value) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..5 {
        let outcome = syncer
            .sync(pod, jiff::Timestamp::now())
            .context("starting a bench pod")?;
        if let SyncOutcome::Status(s) = &outcome
            && s.get("phase").and_then(Value::as_str) == Some("Running")
        {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    bail!("pod {} did not reach Running", pod["metadata"]["name"])
}

fn delete(syncer: &PodSyncer<PodNetwork<TimedOps>>, pod: &Value) -> anyhow::Result<f64> {
    let mut p = pod.clone();
    p["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().to_string());
    let started = Instant::now();
    let outcome = syncer
        .sync(&p, jiff::Timestamp::now())
        .context("deleting a bench pod")?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if outcome != SyncOutcome::Deleted {
        bail!(
            "pod {} was not deleted: {outcome:?}",
            pod["metadata"]["name"]
        );
    }
    Ok(ms)
}

/// The inner part, inside the node namespace: prints a [`PodsResult`] as one JSON line.
pub fn inner(work: &Path, n: usize) -> anyhow::Result<ExitCode> {
    crate::agent::runtime::runc::become_subreaper()?;
    let state = work.join("state");
    let store = ImageStore::open(&state)?;
    store.import_archive(&work.join("busybox.tar"))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let clock = Arc::new(Clock::default());
    let images = Arc::new(TimedImages {
        inner: StoreImages {
            store,
            registry: OciRegistry::new(Vec::new()),
            docker_config: None,
            handle: tokio.handle().clone(),
        },
        clock: clock.clone(),
    });
    let runc: Arc<dyn ContainerRuntime> = Arc::new(Runc::new("runc", &state)?);
    let runtime = Arc::new(TimedRuntime {
        inner: runc.clone(),
        clock: clock.clone(),
    });
    let node = NodeNetwork {
        pod_cidr: "10.244.0.0/24".parse()?,
        cluster_cidr: "10.244.0.0/16".parse()?,
        peers: Vec::new(),
    };
    let ops = TimedOps {
        inner: IpCommands::new(),
        clock: clock.clone(),
    };
    let mut network = PodNetwork::open(ops, node, IpamStore::new(state.join("network/ipam.json")))?;
    network
        .setup_node()
        .context("setting up the node network")?;
    let links_before = link_count()?;
    let syncer = PodSyncer::new(
        runtime,
        network,
        images,
        &state,
        Ipv4Addr::new(172, 31, 0, 1),
    );
    let mut guard = InnerGuard {
        syncer: &syncer,
        pods: Vec::new(),
    };

    // Warm-up: the first container unpacks the image.
    let warm = pod(n, &pod_uid(n));
    guard.pods.push(warm.clone());
    let first_ms = start(&syncer, &warm)?;
    delete(&syncer, &warm)?;
    guard.pods.clear();
    clock.take();

    let mut start_ms = Vec::new();
    for i in 0..n {
        let p = pod(i, &pod_uid(i));
        guard.pods.push(p.clone());
        start_ms.push(start(&syncer, &p)?);
        let id = container_id(&pod_uid(i), "main");
        match runc.state(&id)? {
            Some(s) if s.status == Status::Running => {}
            other => bail!("runc says {id} is {other:?} after the pod was Running"),
        }
    }
    let start_parts = clock.take();
    let mut delete_ms = Vec::new();
    for p in std::mem::take(&mut guard.pods) {
        delete_ms.push(delete(&syncer, &p)?);
    }
    let delete_parts = clock.take();
    drop(guard);

    // Nothing left: containers, pod namespaces, veths, IPs.
    let left = runc.list()?;
    if !left.is_empty() {
        bail!("{} containers left after deleting every pod", left.len());
    }
    let namespaces = super::must("ip", &["netns", "list"])?;
    for i in 0..=n {
        let ns = crate::agent::network::plan::pod_names(&pod_uid(i)).netns;
        if namespaces
            .lines()
            .any(|l| l.split(' ').next() == Some(ns.as_str()))
        {
            bail!("pod namespace {ns} left after deletion");
        }
    }
    let links_after = link_count()?;
    if links_after != links_before {
        bail!("{links_before} links before the pods, {links_after} after deleting them");
    }
    if !syncer.network().allocations().pods.is_empty() {
        bail!("pod IPs still allocated after deleting every pod");
    }
    let result = PodsResult {
        first_ms,
        start_ms,
        delete_ms,
        start_parts,
        delete_parts,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(ExitCode::SUCCESS)
}

fn link_count() -> anyhow::Result<usize> {
    let out = super::must("ip", &["-o", "link", "show"])?;
    Ok(out.lines().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_give_distinct_namespaces() {
        let names: std::collections::BTreeSet<String> = (0..300)
            .map(|i| crate::agent::network::plan::pod_names(&pod_uid(i)).netns)
            .collect();
        assert_eq!(names.len(), 300);
    }

    #[test]
    fn breakdowns_are_per_pod_and_largest_first() {
        let parts = BTreeMap::from([
            ("runc run".to_string(), (100.0, 2)),
            ("net observe".to_string(), (40.0, 4)),
        ]);
        assert_eq!(
            breakdown(&parts, 150.0, 2),
            "runc run 50.0 (x1), net observe 20.0 (x2), other 5.0"
        );
        assert_eq!(
            step_name(&Step::CreateNetns { name: "x".into() }),
            "net CreateNetns"
        );
    }
}
