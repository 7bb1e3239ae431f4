//! `tend bench agent`: the node agent's three figures (issue 4), measured for real.
//!
//! 1. [`pods`]: a cached-image pod from `sync` to Running, through the real [`PodSyncer`]
//!    with runc, the pod network (`ip`, `nft`) and the image store, inside a node network
//!    namespace the bench makes (the bench runs itself again in it, as `tend agent` runs in
//!    a node's namespace); each pod is then deleted and checked gone. Timing wrappers around
//!    the runtime, the network ops and the images say where the time goes.
//! 2. [`pull`]: a 1 MB image pulled from Debian's `docker-registry` on loopback into a fresh
//!    store, with the real [`ImageStore`] and [`OciRegistry`].
//! 3. [`memory`]: `tend serve` and `tend agent` in one namespace, a Deployment of 50 pods of
//!    an image imported with `--images`; the agent's resident memory once they run.
//!
//! Everything made (namespaces, containers, processes, the registry, files) is removed by a
//! [`Lab`] guard in Drop, also when a figure fails.
//!
//! [`PodSyncer`]: crate::agent::pods::PodSyncer
//! [`ImageStore`]: crate::agent::image::ImageStore
//! [`OciRegistry`]: crate::agent::image::OciRegistry

pub mod image;
pub mod memory;
mod pods;
mod pull;

use anyhow::{Context as _, anyhow, bail};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::bench::BenchArgs;

/// The figures `--only` may name.
pub const FIGURES: &[&str] = &["pods", "pull", "memory"];

/// What the bench needs and how to get it: `(what, how to check it, install hint)`.
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("runc", &["--version"], "apt-get install runc"),
    ("ip", &["-V"], "apt-get install iproute2"),
    ("nft", &["--version"], "apt-get install nftables"),
    (
        "docker-registry",
        &["--version"],
        "apt-get install docker-registry",
    ),
];

pub const BUSYBOX: &str = "/bin/busybox";

/// What is missing for the bench, each with how to get it; empty when it can run.
/// `runs(tool, args)` says whether a command runs; `busybox` whether [`BUSYBOX`] exists.
pub fn missing_prerequisites(
    is_root: bool,
    runs: impl Fn(&str, &[&str]) -> bool,
    busybox: bool,
) -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root {
        missing.push("root (it makes network namespaces and runs runc)".to_string());
    }
    for (tool, args, hint) in TOOLS {
        if !runs(tool, args) {
            missing.push(format!("{tool} ({hint})"));
        }
    }
    if !busybox {
        missing.push(format!("{BUSYBOX} (apt-get install busybox-static)"));
    }
    missing
}

/// The figures to run from `--only` (comma-separated), in their order.
pub fn parse_only(only: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut wanted = Vec::new();
    for term in only.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match FIGURES.iter().find(|f| **f == term) {
            Some(f) => wanted.push(*f),
            None => bail!(
                "--only {only:?}: unknown figure {term:?} (use {})",
                FIGURES.join(", ")
            ),
        }
    }
    if wanted.is_empty() {
        bail!("--only {only:?}: no figure (use {})", FIGURES.join(", "));
    }
    Ok(FIGURES
        .iter()
        .copied()
        .filter(|f| wanted.contains(f))
        .collect())
}

/// `tend bench agent`: checks the prerequisites (one line naming all that is missing, exit
/// 2), then measures and prints each figure with its goal.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(work) = &args.inner {
        return pods::inner(work, args.pods);
    }
    let figures = parse_only(&args.only)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing = missing_prerequisites(
        root,
        crate::agent::node::succeeds,
        Path::new(BUSYBOX).is_file(),
    );
    if !missing.is_empty() {
        bail!("tend bench agent needs {}", missing.join(", "));
    }
    // Containers whose agent (or inner bench) is gone come to this process, which reaps them.
    crate::agent::runtime::runc::become_subreaper()?;
    let mut failed = false;
    let runc = version_line("runc", &["--version"]);
    println!("tend bench agent: {runc}; busybox-static image built in Rust");
    for figure in figures {
        let mut lab = Lab::new(figure)?;
        let report = match figure {
            "pods" => pods::run(&mut lab, args.pods)?,
            "pull" => pull::run(&mut lab, args.pulls)?,
            _ => memory::run(&mut lab, args.replicas, args.memory_services)?,
        };
        drop(lab);
        failed |= report.failed;
        for line in &report.lines {
            println!("{line}");
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The first line a tool prints about its version.
fn version_line(tool: &str, args: &[&str]) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| tool.to_string())
}

/// What one figure printed, and whether a goal failed.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failed: bool,
}

impl Report {
    /// A measured figure against a goal `<= goal`.
    pub fn goal(&mut self, what: &str, value: f64, unit: &str, goal: f64, detail: &str) {
        let pass = value <= goal;
        self.failed |= !pass;
        let verdict = if pass { "pass" } else { "FAIL" };
        self.lines.push(format!(
            "  {what:<46} {value:>9.1} {unit:<4} (goal <= {goal} {unit}: {verdict}; {detail})"
        ));
    }

    /// A figure without a goal.
    pub fn info(&mut self, what: &str, value: f64, unit: &str, detail: &str) {
        self.lines
            .push(format!("  {what:<46} {value:>9.1} {unit:<4} ({detail})"));
    }

    pub fn text(&mut self, text: String) {
        self.lines.push(text);
    }
}

/// Min, median and 90th percentile (nearest rank) of `values`; zeros when empty.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    (v[0], rank(0.5), rank(0.9))
}

/// Everything one figure made, removed in Drop in reverse dependency order: processes
/// (SIGTERM, then SIGKILL), containers under each runc root (killed, reaped, deleted),
/// mounts under the work directory, pod namespaces, node namespaces, the work directory.
pub struct Lab {
    pub work: PathBuf,
    pub children: Vec<Child>,
    pub runc_roots: Vec<PathBuf>,
    /// Agent states whose `network/ipam.json` names pods whose namespaces may be left.
    pub agent_states: Vec<PathBuf>,
    pub pod_netns: Vec<String>,
    pub node_netns: Vec<String>,
    /// Links in this namespace (a lab's bridge), deleted last.
    pub links: Vec<String>,
}

impl Lab {
    pub fn new(figure: &str) -> anyhow::Result<Lab> {
        let work =
            std::env::temp_dir().join(format!("tend-bench-agent-{figure}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        Ok(Lab {
            work,
            children: Vec::new(),
            runc_roots: Vec::new(),
            agent_states: Vec::new(),
            pod_netns: Vec::new(),
            node_netns: Vec::new(),
            links: Vec::new(),
        })
    }

    /// Makes a node network namespace (with `lo` up), removed in Drop.
    pub fn node_namespace(&mut self, name: &str) -> anyhow::Result<()> {
        let _ = quiet("ip", &["netns", "del", name]);
        must("ip", &["netns", "add", name])?;
        self.node_netns.push(name.to_string());
        must("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }
}

/// `program` to run inside the network namespace `name`, and there only: unlike
/// `ip netns exec`, which also gives the process a mount namespace with a fresh /sys and so
/// no cgroup mounts (runc then fails with "no cgroup mount found in mountinfo"), the child
/// joins the network namespace alone, between fork and exec.
pub fn command_in_netns(name: &str, program: &Path) -> anyhow::Result<Command> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let path = Path::new("/var/run/netns").join(name);
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut command = Command::new(program);
    // SAFETY: the hook only makes the setns system call on a descriptor it owns, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(command)
}

/// Runs `f` on a thread that joined the network namespace `name` (sockets it opens, and
/// threads it starts, are in that namespace).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = Path::new("/var/run/netns").join(name);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!(
                "joining the node namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread inside the node namespace panicked"))?
}

/// Runs a command, its output discarded; whether it succeeded.
pub use crate::agent::node::succeeds as quiet;

/// Runs a command; its stdout, or an error with its stderr.
pub fn must(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends SIGTERM and waits up to `grace` for the process to exit, then SIGKILL.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (up to 2 s) for `pid` to exit when it is this process's child; returns at once
/// when it is not (another process reaps it).
fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    for _ in 0..200 {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills, reaps and deletes every container runc knows under `root`.
fn remove_containers(root: &Path) {
    let root_arg = root.to_string_lossy().into_owned();
    let Ok(out) = Command::new("runc")
        .args(["--root", &root_arg, "list", "--format", "json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for c in list {
        let (Some(id), pid) = (
            c.get("id").and_then(serde_json::Value::as_str),
            c.get("pid").and_then(serde_json::Value::as_u64),
        ) else {
            continue;
        };
        let _ = quiet("runc", &["--root", &root_arg, "kill", id, "KILL"]);
        if let Some(pid) = pid.and_then(|p| u32::try_from(p).ok())
            && pid > 0
        {
            reap(pid);
        }
        let _ = quiet("runc", &["--root", &root_arg, "delete", "--force", id]);
    }
}

/// Pod namespace names of the pods an agent state's IP record still holds.
fn ipam_namespaces(state: &Path) -> Vec<String> {
    let path = state.join("network/ipam.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v.get("pods")
        .and_then(serde_json::Value::as_object)
        .map(|pods| {
            pods.keys()
                .map(|uid| crate::agent::network::plan::pod_names(uid).netns)
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            stop_child(child, Duration::from_secs(5));
        }
        for root in &self.runc_roots {
            remove_containers(root);
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.work.to_string_lossy().into_owned();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|t| t.starts_with(&root))
                .collect();
            targets.reverse();
            for t in targets {
                let _ = quiet("umount", &["-l", t]);
            }
        }
        let mut pod_netns = self.pod_netns.clone();
        for state in &self.agent_states {
            pod_netns.extend(ipam_namespaces(state));
        }
        pod_netns.sort();
        pod_netns.dedup();
        for name in pod_netns.iter().chain(self.node_netns.iter().rev()) {
            if Path::new("/var/run/netns").join(name).exists() {
                let _ = quiet("ip", &["netns", "del", name]);
            }
        }
        for link in &self.links {
            let _ = quiet("ip", &["link", "del", link]);
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prerequisites_name_everything_missing() {
        assert!(missing_prerequisites(true, |_, _| true, true).is_empty());
        let m = missing_prerequisites(false, |tool, _| tool != "nft", false);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].starts_with("root"));
        assert_eq!(m[1], "nft (apt-get install nftables)");
        assert!(m[2].contains("busybox-static"));
        let m = missing_prerequisites(true, |tool, _| tool != "docker-registry", true);
        assert_eq!(m, ["docker-registry (apt-get install docker-registry)"]);
    }

    #[test]
    fn only_keeps_the_order_and_refuses_unknown_figures() {
        assert_eq!(parse_only("memory, pods").expect("ok"), ["pods", "memory"]);
        assert_eq!(parse_only("pods,pull,memory").expect("ok"), FIGURES);
        let e = parse_only("pods,speed").expect_err("unknown");
        assert!(e.to_string().contains("\"speed\""), "{e}");
        assert!(parse_only(" , ").is_err());
    }

    #[test]
    fn summaries() {
        assert_eq!(summary(&[]), (0.0, 0.0, 0.0));
        assert_eq!(summary(&[5.0]), (5.0, 5.0, 5.0));
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(summary(&v), (1.0, 10.0, 18.0));
    }

    #[test]
    fn reports_say_pass_or_fail() {
        let mut r = Report::default();
        r.goal("fast", 100.0, "ms", 150.0, "median of 20");
        assert!(!r.failed);
        assert!(r.lines[0].contains("pass"), "{}", r.lines[0]);
        r.goal("slow", 200.0, "ms", 150.0, "median of 20");
        assert!(r.failed);
        assert!(r.lines[1].contains("FAIL"), "{}", r.lines[1]);
    }
}
