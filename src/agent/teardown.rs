//! What `tend up` removes when it stops (unless `--keep-workloads`): every pod through the
//! pod sync's own deletion path (preStop hooks, grace period, `runc delete`, rootfs mounts,
//! veth and namespace), then containers and pod networks no pod accounts for, the
//! `ip tend-lb` table and the Service CIDR's route, the node's pod network (routes, `tend-nat`,
//! bridge), `route_localnet` as it was, and the node's reaper. `tend agent` never does this:
//! its containers outlive it and the next agent adopts them.
//!
//! The order and the "keep going after a failure" rule are [`remove_everything`], tested
//! with a recording fake; the side effects are behind [`NodeCleanup`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::network::ip::IpCommands;
use super::network::ipam::Cidr;
use super::network::{NetError, PodNetwork};
use super::pods::{PodSyncer, SyncOutcome, grace_period};

/// The longest a container is given to stop when `tend up` stops: a pod's own
/// `terminationGracePeriodSeconds` (30 s by default) is cut to this, as `docker stop` gives
/// 10 s, so that Ctrl-C on a laptop does not hang for half a minute on a PID 1 that ignores
/// SIGTERM (busybox httpd does).
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(10);

/// The sysctl that lets 127.0.0.0/8 be routed (DNAT of a NodePort on 127.0.0.1 to a pod).
pub const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// The side effects of removing a node's workloads. Every method is idempotent: what is
/// already gone is fine.
pub trait NodeCleanup: Sync {
    /// Stops and removes a pod's containers and network, as when its object is deleted.
    fn delete_pod(&self, pod: &Value) -> Result<(), String>;
    /// Ids of the containers the runtime still holds.
    fn containers(&self) -> Result<Vec<String>, String>;
    /// Stops and removes a container no pod accounts for.
    fn remove_container(&self, id: &str) -> Result<(), String>;
    /// Uids of the pods that still hold an IP (their veth and namespace may remain).
    fn pod_networks(&self) -> Vec<String>;
    fn teardown_pod_network(&self, uid: &str) -> Result<(), String>;
    /// The `ip tend-lb` table and the route of the Service CIDR to `lo`.
    fn remove_load_balancer(&self) -> Result<(), String>;
    /// Routes to other nodes, the `tend-nat` table, the bridge.
    fn teardown_node_network(&self) -> Result<(), String>;
    /// `route_localnet` back to what it was before the agent set it (nothing when it did not).
    fn restore_route_localnet(&self) -> Result<(), String>;
    /// Stops the node's reaper (it has nothing left to watch).
    fn stop_reaper(&self) -> Result<(), String>;
}

/// What [`remove_everything`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub pods: usize,
    /// Containers removed that no pod accounted for.
    pub leftovers: usize,
    /// One line per step that failed; the other steps still ran.
    pub failures: Vec<String>,
}

/// Removes the node's workloads in order: pods (all at once, each on its own thread, so
/// that their grace periods overlap), leftover containers, leftover pod networks, the load
/// balancer, the node network, `route_localnet`, the reaper. A failed step is reported and
/// the rest still run; the reaper is stopped only when no container is left to watch.
pub fn remove_everything(ops: &dyn NodeCleanup, pods: &[Value]) -> CleanupReport {
    let mut report = CleanupReport {
        pods: pods.len(),
        ..Default::default()
    };
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| scope.spawn(move || ops.delete_pod(pod)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a pod's removal panicked".to_string()))
            })
            .collect()
    });
    report
        .failures
        .extend(results.into_iter().filter_map(Result::err));
    match ops.containers() {
        Ok(ids) => {
            for id in ids {
                match ops.remove_container(&id) {
                    Ok(()) => report.leftovers += 1,
                    Err(e) => report.failures.push(e),
                }
            }
        }
        Err(e) => report.failures.push(e),
    }
    for uid in ops.pod_networks() {
        if let Err(e) = ops.teardown_pod_network(&uid) {
            report.failures.push(e);
        }
    }
    for step in [
        NodeCleanup::remove_load_balancer,
        NodeCleanup::teardown_node_network,
        NodeCleanup::restore_route_localnet,
    ] {
        if let Err(e) = step(ops) {
            report.failures.push(e);
        }
    }
    match ops.containers() {
        Ok(ids) if ids.is_empty() => {
            if let Err(e) = ops.stop_reaper() {
                report.failures.push(e);
            }
        }
        Ok(ids) => report.failures.push(format!(
            "the reaper is left running: {} container(s) could not be removed",
            ids.len()
        )),
        Err(e) => report.failures.push(e),
    }
    report
}

/// Runs [`remove_everything`] off the async threads and logs what it did; an error (the
/// first failure, and how many there were) when a step failed.
pub async fn remove_and_report(
    cleanup: AgentCleanup,
    pods: Vec<Value>,
    node: &str,
) -> anyhow::Result<()> {
    let report = tokio::task::spawn_blocking(move || remove_everything(&cleanup, &pods))
        .await
        .map_err(|e| anyhow::anyhow!("removing the workloads: {e}"))?;
    for failure in &report.failures {
        tracing::warn!("removing the workloads: {failure}");
    }
    tracing::info!(
        node,
        pods = report.pods,
        leftovers = report.leftovers,
        "stopped; containers, pod network and load balancer removed"
    );
    match report.failures.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!(
            "{} step(s) of the clean-up failed; the first: {first}",
            report.failures.len()
        ),
    }
}

/// A pod as the pod sync sees it once its object is deleted: deletionTimestamp now, the
/// grace period cut to `max`.
pub fn deleted_now(pod: &Value, now: &str, max: Duration) -> Value {
    let mut pod = pod.clone();
    let grace = grace_period(&pod).min(max).as_secs();
    pod["metadata"]["deletionTimestamp"] = json!(now);
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    pod
}

/// Sets `route_localnet` to 1; the value it had (to restore), `None` when it already was 1.
pub fn enable_route_localnet(path: &Path) -> std::io::Result<Option<String>> {
    let old = std::fs::read_to_string(path)?.trim().to_string();
    if old == "1" {
        return Ok(None);
    }
    std::fs::write(path, "1\n")?;
    Ok(Some(old))
}

/// The real [`NodeCleanup`] of `tend agent`'s pieces.
pub struct AgentCleanup {
    pub syncer: Arc<PodSyncer<PodNetwork<IpCommands>>>,
    pub state: PathBuf,
    pub service_cidr: Cidr,
    /// `route_localnet`'s value before the agent set it (`None`: it did not change it).
    pub route_localnet: Option<String>,
    pub route_localnet_path: PathBuf,
}

fn net(e: NetError) -> String {
    e.to_string()
}

/// Runs a command; its stderr as the error when it fails.
fn command(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NodeCleanup for AgentCleanup {
    fn delete_pod(&self, pod: &Value) -> Result<(), String> {
        let deleted = deleted_now(pod, &super::now_millis(), MAX_STOP_GRACE);
        // One sync acts until nothing is left; a second covers a step that failed once.
        let mut last = String::new();
        for _ in 0..2 {
            match self.syncer.sync(&deleted, jiff::Timestamp::now()) {
                Ok(SyncOutcome::Deleted) => return Ok(()),
                Ok(SyncOutcome::Status(_)) => last = "the pod was not stopped".into(),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    fn containers(&self) -> Result<Vec<String>, String> {
        let listed = self.syncer.runtime().list().map_err(|e| e.to_string())?;
        Ok(listed.into_iter().map(|c| c.id).collect())
    }

    fn remove_container(&self, id: &str) -> Result<(), String> {
        self.syncer
            .remove_orphan(id, Duration::from_secs(2))
            .map_err(|e| e.to_string())
    }

    fn pod_networks(&self) -> Vec<String> {
        self.syncer
            .network()
            .allocations()
            .pods
            .keys()
            .cloned()
            .collect()
    }

    fn teardown_pod_network(&self, uid: &str) -> Result<(), String> {
        self.syncer
            .network()
            .teardown_pod(uid)
            .map(|_| ())
            .map_err(net)
    }

    fn remove_load_balancer(&self) -> Result<(), String> {
        use super::lb::diff::Op;
        use super::lb::nft::NftApply as _;
        // `add` first makes the `delete` fine when the table is already gone; one netlink
        // batch, as the proxy sends its own.
        let lb = super::lb::netlink::NetlinkNft::new(None)
            .apply(&[Op::AddTable, Op::DeleteTable])
            .map_err(|e| e.to_string());
        let cidr = self.service_cidr.to_string();
        let route = command("ip", &["route", "del", &cidr, "dev", "lo"]).or_else(|e| {
            // Already gone.
            if e.contains("No such process") {
                Ok(())
            } else {
                Err(e)
            }
        });
        lb.and(route)
    }

    fn teardown_node_network(&self) -> Result<(), String> {
        self.syncer
            .network()
            .teardown_node()
            .map(|_| ())
            .map_err(net)
    }

    fn restore_route_localnet(&self) -> Result<(), String> {
        match &self.route_localnet {
            Some(old) => std::fs::write(&self.route_localnet_path, format!("{old}\n"))
                .map_err(|e| format!("{}: {e}", self.route_localnet_path.display())),
            None => Ok(()),
        }
    }

    fn stop_reaper(&self) -> Result<(), String> {
        let pid_file = self.state.join("reaper.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Ok(pid) = text.trim().parse::<libc::pid_t>() else {
            return Ok(());
        };
        // Only a process that is this state's reaper (a stale file may name a reused pid).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let state = self.state.as_os_str().as_encoded_bytes();
        if !args.contains(&&b"agent-reaper"[..]) || !args.contains(&state) {
            return Ok(());
        }
        // SAFETY: kill only sends a signal to the reaper checked above.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(format!(
                "stopping the reaper (pid {pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(super::runtime::reaper::socket_path(&self.state));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
        containers: Mutex<Vec<String>>,
        networks: Vec<String>,
        failing_pod: Option<String>,
        stuck_container: Option<String>,
    }

    impl Recording {
        fn note(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl NodeCleanup for Recording {
        fn delete_pod(&self, pod: &Value) -> Result<(), String> {
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            self.note(format!("delete_pod {name}"));
            if self.failing_pod.as_deref() == Some(name.as_str()) {
                return Err(format!("pod {name}: runc failed"));
            }
            self.containers
                .lock()
                .unwrap()
                .retain(|c| !c.starts_with(&name));
            Ok(())
        }
        fn containers(&self) -> Result<Vec<String>, String> {
            self.note("containers".into());
            Ok(self.containers.lock().unwrap().clone())
        }
        fn remove_container(&self, id: &str) -> Result<(), String> {
            self.note(format!("remove_container {id}"));
            if self.stuck_container.as_deref() == Some(id) {
                return Err(format!("container {id}: still running"));
            }
            self.containers.lock().unwrap().retain(|c| c != id);
            Ok(())
        }
        fn pod_networks(&self) -> Vec<String> {
            self.networks.clone()
        }
        fn teardown_pod_network(&self, uid: &str) -> Result<(), String> {
            self.note(format!("teardown_pod_network {uid}"));
            Ok(())
        }
        fn remove_load_balancer(&self) -> Result<(), String> {
            self.note("remove_load_balancer".into());
            Ok(())
        }
        fn teardown_node_network(&self) -> Result<(), String> {
            self.note("teardown_node_network".into());
            Ok(())
        }
        fn restore_route_localnet(&self) -> Result<(), String> {
            self.note("restore_route_localnet".into());
            Ok(())
        }
        fn stop_reaper(&self) -> Result<(), String> {
            self.note("stop_reaper".into());
            Ok(())
        }
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "uid": name}, "spec": {}})
    }

    #[test]
    fn pods_then_leftovers_then_the_node_then_the_reaper() {
        let ops = Recording {
            containers: Mutex::new(vec!["a-web".into(), "b-web".into(), "orphan-x".into()]),
            networks: vec!["orphan".into()],
            ..Default::default()
        };
        let report = remove_everything(&ops, &[pod("a"), pod("b")]);
        assert_eq!(report.pods, 2);
        assert_eq!(report.leftovers, 1);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let calls = ops.calls();
        // The two pods run at once: their order is free, but both come first.
        let mut first: Vec<&str> = calls[..2].iter().map(String::as_str).collect();
        first.sort();
        assert_eq!(first, ["delete_pod a", "delete_pod b"]);
        assert_eq!(
            &calls[2..],
            [
                "containers",
                "remove_container orphan-x",
                "teardown_pod_network orphan",
                "remove_load_balancer",
                "teardown_node_network",
                "restore_route_localnet",
                "containers",
                "stop_reaper",
            ]
        );
    }

    #[test]
    fn a_failure_is_reported_and_the_rest_still_runs_but_the_reaper_stays() {
        let ops = Recording {
            containers: Mutex::new(vec!["a-web".into(), "b-web".into()]),
            failing_pod: Some("a".into()),
            stuck_container: Some("a-web".into()),
            ..Default::default()
        };
        let report = remove_everything(&ops, &[pod("a"), pod("b")]);
        assert_eq!(report.failures.len(), 3, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("pod a"),
            "{:?}",
            report.failures
        );
        assert!(
            report.failures[1].contains("a-web"),
            "{:?}",
            report.failures
        );
        assert!(report.failures[2].contains("reaper is left running"));
        let calls = ops.calls();
        assert!(calls.contains(&"teardown_node_network".to_string()));
        assert!(calls.contains(&"restore_route_localnet".to_string()));
        assert!(!calls.contains(&"stop_reaper".to_string()));
    }

    #[test]
    fn deletion_cuts_the_grace_period_and_keeps_the_rest() {
        let long =
            json!({"metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 60}});
        let d = deleted_now(&long, "2026-01-01T00:00:00Z", MAX_STOP_GRACE);
        assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 10);
        assert_eq!(d["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(d["spec"]["terminationGracePeriodSeconds"], 60);
        let short =
            json!({"metadata": {"name": "p"}, "spec": {"terminationGracePeriodSeconds": 2}});
        let d = deleted_now(&short, "t", MAX_STOP_GRACE);
        assert_eq!(d["metadata"]["deletionGracePeriodSeconds"], 2);
    }

    #[test]
    fn route_localnet_is_set_and_its_old_value_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("route_localnet");
        std::fs::write(&path, "0\n").unwrap();
        assert_eq!(enable_route_localnet(&path).unwrap(), Some("0".to_string()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        // Already on: nothing to restore later.
        assert_eq!(enable_route_localnet(&path).unwrap(), None);
        assert!(enable_route_localnet(&dir.path().join("absent")).is_err());
    }
}
