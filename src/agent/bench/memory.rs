//! Figure 3: the agent's resident memory with 50 pods and 2,000 Services (issue 7's row).
//! `tend serve --dir` and `tend agent --images` run in one node namespace the bench makes (no
//! links needed: the API is on its loopback); [`DEPLOYMENTS`] Deployments sharing N replicas
//! of the imported busybox image (`imagePullPolicy: Never`) and M ClusterIP Services, each
//! selecting one of the Deployments (so ~N/10 endpoints each, as in a cluster whose Services
//! have a few pods each), are in the directory from the start. The bench reaches the API from a thread that
//! joined the namespace, waits until every pod is Running, and reads the agent's VmRSS then
//! and 10 s later. Clean-up is first the real one (the Deployment's file removed, the agent
//! stops the pods), then the [`Lab`]'s.

use super::image::{BUSYBOX_REF, busybox_image};
use super::{Lab, Report, in_netns};
use anyhow::{Context as _, bail};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

const NODE: &str = "bench-node";
const PORT: u16 = 7443;

/// How many Deployments share the replicas (and the Services' selectors).
pub const DEPLOYMENTS: usize = 10;

/// The Deployments the bench applies: `replicas` in all, spread over [`DEPLOYMENTS`].
pub fn deployments_yaml(replicas: usize) -> String {
    (0..DEPLOYMENTS)
        .map(|d| {
            let share = replicas / DEPLOYMENTS + usize::from(d < replicas % DEPLOYMENTS);
            deployment_yaml(d, share)
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// ClusterIP Services `first..end`, the i-th selecting Deployment `i % DEPLOYMENTS`.
pub fn services_yaml(first: usize, end: usize) -> String {
    (first..end)
        .map(|i| {
            format!(
                "apiVersion: v1
kind: Service
metadata:
  name: bench-svc-{i}
spec:
  selector:
    app: bench-{}
  ports:
  - name: http
    port: 80
    targetPort: 8080
",
                i % DEPLOYMENTS
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn deployment_yaml(index: usize, replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: bench-{index}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: bench-{index}
  template:
    metadata:
      labels:
        app: bench-{index}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: main
        image: {BUSYBOX_REF}
        imagePullPolicy: Never
        command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]
"
    )
}

/// The pods bound to the bench node: `(uid, phase)`.
fn node_pods(
    http: &reqwest::blocking::Client,
    token: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let v: Value = http
        .get(format!("http://127.0.0.1:{PORT}/api/v1/pods"))
        .bearer_auth(token)
        .send()?
        .error_for_status()?
        .json()?;
    Ok(v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(NODE))
        .map(|p| {
            let s = |ptr: &str| {
                p.pointer(ptr)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (s("/metadata/uid"), s("/status/phase"))
        })
        .collect())
}

pub fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// What `/proc/PID/status` says of a process's memory.
pub struct Resident {
    /// `VmRSS`, MiB.
    pub total: f64,
    /// `RssAnon`, MiB: the heap and stacks (the rest is the binary and libraries).
    pub anon: f64,
    pub threads: u32,
}

/// `VmRSS`, `RssAnon` and `Threads` of `pid`.
pub fn rss(pid: u32) -> anyhow::Result<Resident> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the agent exited?)"))?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let kb = field("VmRSS:").context("VmRSS")?;
    Ok(Resident {
        total: kb / 1024.0,
        anon: field("RssAnon:").unwrap_or(0.0) / 1024.0,
        threads: field("Threads:").unwrap_or(0.0) as u32,
    })
}

/// `Pss` of `pid` in MiB: its resident memory with pages shared with other processes (the
/// same `tend` binary in the agent and the reaper) divided among them, so that two
/// processes' figures add up to what they cost together.
fn pss(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: f64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

pub fn run(lab: &mut Lab, replicas: usize, services: usize) -> anyhow::Result<Report> {
    let node = format!("tend-bench-mem-{}", std::process::id());
    lab.node_namespace(&node)?;
    let work = lab.work.clone();
    let manifests = work.join("manifests");
    let images = work.join("images");
    for d in [&manifests, &images] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(manifests.join("bench.yaml"), deployments_yaml(replicas))?;
    // 500 a file: a file may hold at most 1,000 documents.
    for (file, first) in (0..services).step_by(500).enumerate() {
        let yaml = services_yaml(first, (first + 500).min(services));
        std::fs::write(manifests.join(format!("services-{file}.yaml")), yaml)?;
    }
    busybox_image()?.write_oci_archive(&images.join("busybox.tar"), BUSYBOX_REF)?;
    let serve_state = work.join("serve");
    let agent_state = work.join("agent");
    lab.runc_roots.push(agent_state.join("runc"));
    lab.agent_states.push(agent_state.clone());
    let exe = std::env::current_exe().context("locating the tend binary")?;
    let in_node = |log: &str| -> anyhow::Result<Command> {
        let mut c = super::command_in_netns(&node, &exe)?;
        c.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join(log))?);
        Ok(c)
    };

    let serve = in_node("serve.log")?
        .arg("serve")
        .arg("--dir")
        .arg(&manifests)
        .args(["--listen", &format!("127.0.0.1:{PORT}"), "--state"])
        .arg(&serve_state)
        .spawn()
        .context("starting tend serve in the node namespace")?;
    let serve_pid = serve.id();
    lab.children.push(serve);
    let admin = serve_state.join("admin.token");
    let join = serve_state.join("join.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(admin.is_file() && join.is_file()) {
        if Instant::now() > deadline {
            bail!(
                "tend serve wrote no tokens within 30 s: {}",
                log_tail(&work.join("serve.log"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = std::fs::read_to_string(&admin)?.trim().to_string();

    let started = Instant::now();
    let agent = in_node("agent.log")?
        .args(["--server", &format!("http://127.0.0.1:{PORT}"), "agent"])
        .arg("--token-file")
        .arg(&join)
        .args(["--name", NODE, "--state"])
        .arg(&agent_state)
        .arg("--images")
        .arg(&images)
        .spawn()
        .context("starting tend agent in the node namespace")?;
    let agent_pid = agent.id();
    // The agent goes first at clean-up, before the server it reports to.
    lab.children.insert(0, agent);

    let wait_token = token.clone();
    let uids = in_netns(&node, move || {
        let http = client()?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let pods = node_pods(&http, &wait_token).unwrap_or_default();
            let running = pods.iter().filter(|(_, phase)| phase == "Running").count();
            if running >= replicas {
                return Ok(pods.into_iter().map(|(uid, _)| uid).collect::<Vec<_>>());
            }
            if Instant::now() > deadline {
                bail!("{running} of {replicas} pods Running after 300 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let uids = match uids {
        Ok(u) => u,
        Err(e) => bail!(
            "{e:#}; agent log: {}; serve log: {}",
            log_tail(&work.join("agent.log")),
            log_tail(&work.join("serve.log"))
        ),
    };
    let all_running_s = started.elapsed().as_secs_f64();
    lab.pod_netns.extend(
        uids.iter()
            .map(|u| crate::agent::network::plan::pod_names(u).netns),
    );
    let at_running = rss(agent_pid)?;
    std::thread::sleep(Duration::from_secs(10));
    let settled = rss(agent_pid)?;
    let serve_rss = rss(serve_pid)?.total;
    // The node's reaper (the containers' parent, keeping their exit codes) is the agent's too.
    let reaper = std::fs::read_to_string(agent_state.join("reaper.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .and_then(|pid| Some((rss(pid).ok()?, pss(pid)?, pss(agent_pid)?)));

    // The real clean-up: the Deployment goes, the agent stops and removes every pod.
    std::fs::remove_file(manifests.join("bench.yaml"))?;
    let started = Instant::now();
    let gone = in_netns(&node, move || {
        let http = client()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if node_pods(&http, &token).is_ok_and(|p| p.is_empty()) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(false)
    })?;
    let deleted_s = started.elapsed().as_secs_f64();

    let mut report = Report::default();
    report.goal(
        &format!("agent resident memory, {replicas} pods Running, {services} Services"),
        at_running.total,
        "MiB",
        30.0,
        &format!(
            "VmRSS; {:.1} MiB heap and stacks, the rest code; {} threads",
            at_running.anon, at_running.threads
        ),
    );
    report.goal(
        "  the same, 10 s later",
        settled.total,
        "MiB",
        30.0,
        &format!(
            "{:.1} MiB heap and stacks; {} threads",
            settled.anon, settled.threads
        ),
    );
    report.info(
        &format!("  {replicas} replicas applied -> all Running"),
        all_running_s,
        "s",
        "agent start, registration, scheduling, pod starts, status writes",
    );
    if let Some((reaper_rss, reaper_pss, agent_pss)) = reaper {
        report.goal(
            "  agent + the node's reaper (PSS)",
            agent_pss + reaper_pss,
            "MiB",
            30.0,
            &format!(
                "shared code counted once; the reaper: VmRSS {:.1} MiB, of it {:.1} MiB its own heap and stacks",
                reaper_rss.total, reaper_rss.anon
            ),
        );
    }
    report.info(
        "  serve resident memory beside it",
        serve_rss,
        "MiB",
        "for reference",
    );
    if gone {
        report.info(
            "  Deployment removed -> every pod gone",
            deleted_s,
            "s",
            "the agent stopped and deleted them",
        );
    } else {
        report.text(format!(
            "  pods still bound to {NODE} {deleted_s:.0} s after the Deployment was removed; removed by the bench instead"
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_are_valid_and_share_the_replicas() {
        let limits = crate::manifest::Limits::default();
        let deployments =
            crate::manifest::load_file("bench.yaml", deployments_yaml(53).as_bytes(), &limits);
        assert!(deployments.errors.is_empty(), "{:?}", deployments.errors);
        assert_eq!(deployments.objects.len(), DEPLOYMENTS);
        let replicas: i64 = deployments
            .objects
            .iter()
            .filter_map(|o| o.object["spec"]["replicas"].as_i64())
            .sum();
        assert_eq!(replicas, 53);
        let services =
            crate::manifest::load_file("services.yaml", services_yaml(10, 35).as_bytes(), &limits);
        assert!(services.errors.is_empty(), "{:?}", services.errors);
        assert_eq!(services.objects.len(), 25);
        assert_eq!(
            services.objects[13].object["spec"]["selector"]["app"],
            "bench-3"
        );
        assert_eq!(
            services.objects[0].object["metadata"]["name"],
            "bench-svc-10"
        );
    }
}
