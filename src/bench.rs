//! `tend bench`: reproducible measurements against the real binary, real git and the real API.
//!
//! `tend bench apply [--deployments N]` builds a git repository with N Deployments and N
//! Services (one file each pair), starts `tend serve` on it, and measures: the cold apply,
//! a one-file commit applied after the ref update, and serve's resident memory; beside them,
//! the floor: parsing the same YAML alone in this process.
//!
//! `tend bench load [--agents 100] [--duration 300s] [--event-ttl 1h]`: simulated agents
//! watching and reporting status every second against a real serve ([`load`]).

pub mod load;
mod push;

use crate::manifest::{self, Limits};
use anyhow::{Context, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Deployments (and as many Services) of `tend bench apply` by default: the 4,000 objects the
/// serve-memory goal (150 MiB) is set for.
const GOAL_DEPLOYMENTS: usize = 2000;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure: `apply`, `schedule`, `agent`, `services`, `push` or `load`.
    pub what: String,
    /// Deployments (and as many Services) in the repository.
    #[arg(long, default_value_t = GOAL_DEPLOYMENTS)]
    pub deployments: usize,
    /// One-file commits to time (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub commits: usize,
    /// `agent`: pods started and deleted one after the other.
    #[arg(long, default_value_t = 20)]
    pub pods: usize,
    /// `agent`: pulls of the 1 MB image, each into a fresh store.
    #[arg(long, default_value_t = 10)]
    pub pulls: usize,
    /// `agent`: replicas of the Deployment whose agent memory is measured.
    #[arg(long, default_value_t = 50)]
    pub replicas: usize,
    /// `agent`: ClusterIP Services beside those pods (each selects a tenth of them).
    #[arg(long, default_value_t = 2000)]
    pub memory_services: usize,
    /// `agent`: the figures to measure, comma-separated (pods, pull, memory).
    #[arg(long, default_value = "pods,pull,memory")]
    pub only: String,
    /// `services`: the numbers of Services (× 10 endpoints) to measure, comma-separated.
    #[arg(long, default_value = "1000,10000")]
    pub services: String,
    /// `services`: endpoint changes timed per size (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// `push`: pushes timed (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// `push`: Services added for the Service-change figure (0: skip it).
    #[arg(long, default_value_t = 2000)]
    pub extra_services: usize,
    /// `load`: simulated agents, each watching and reporting status every second.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// `load`: how long the load runs once the agents are registered (`300s`, `5m`).
    #[arg(long, default_value = "300s", value_parser = crate::cli::serve::parse_duration)]
    pub duration: std::time::Duration,
    /// `load`: serve's --event-ttl (default: serve's, 1h); shorter, Events stop piling up
    /// sooner and a run reaches its steady state sooner.
    #[arg(long, value_parser = crate::cli::serve::parse_duration)]
    pub event_ttl: Option<std::time::Duration>,
    /// `apply`: the store serve uses: `redb`, or `etcd://HOST:PORT[,..]` (an etcd you run,
    /// holding no tend objects yet; see docs/etcd.md).
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// Internal: the part of `agent` that runs inside the node namespace, in this directory.
    #[arg(long, hide = true)]
    pub inner: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what.as_str() {
        "apply" => apply(&args),
        "schedule" => crate::scheduler::bench::run(),
        "agent" => crate::agent::bench::run(&args),
        "services" => {
            let sizes = parse_sizes(&args.services)?;
            crate::agent::lb::bench::run(&sizes, args.changes)
        }
        "push" => push::run(args.runs, args.extra_services),
        "load" => load::main(args.agents, args.duration, args.event_ttl),
        other => bail!(
            "bench {other:?}: unknown benchmark (available: apply, schedule, agent, services, push, load)"
        ),
    }
}

/// `--services 1000,10000` as numbers.
fn parse_sizes(list: &str) -> anyhow::Result<Vec<usize>> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--services {list:?}: {t:?} is not a positive number"))
        })
        .collect()
}

/// The YAML of app `i`: a Deployment and a Service, ~50 lines.
pub fn app_yaml(i: usize, image_tag: &str) -> String {
    let lines = [
        "apiVersion: apps/v1",
        "kind: Deployment",
        "metadata:",
        "  name: app-{i}",
        "  labels:",
        "    app: app-{i}",
        "    team: bench",
        "spec:",
        "  replicas: 3",
        "  revisionHistoryLimit: 5",
        "  selector:",
        "    matchLabels:",
        "      app: app-{i}",
        "  strategy:",
        "    type: RollingUpdate",
        "    rollingUpdate:",
        "      maxSurge: 1",
        "      maxUnavailable: 0",
        "  template:",
        "    metadata:",
        "      labels:",
        "        app: app-{i}",
        "    spec:",
        "      nodeSelector:",
        "        disk: ssd",
        "      containers:",
        "      - name: web",
        "        image: registry.local:5000/app-{i}:{tag}",
        "        ports:",
        "        - containerPort: 8080",
        "          name: http",
        "        env:",
        "        - name: MODE",
        "          value: bench",
        "        resources:",
        "          requests:",
        "            cpu: 100m",
        "            memory: 64Mi",
        "        readinessProbe:",
        "          httpGet:",
        "            path: /healthz",
        "            port: http",
        "          periodSeconds: 5",
        "---",
        "apiVersion: v1",
        "kind: Service",
        "metadata:",
        "  name: app-{i}",
        "spec:",
        "  selector:",
        "    app: app-{i}",
        "  ports:",
        "  - name: http",
        "    port: 80",
        "    targetPort: http",
    ];
    let mut out = String::new();
    for line in lines {
        out.push_str(
            &line
                .replace("{i}", &i.to_string())
                .replace("{tag}", image_tag),
        );
        out.push('\n');
    }
    out
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    git_out(dir, args).map(drop)
}

fn head(dir: &Path) -> anyhow::Result<String> {
    git_out(dir, &["rev-parse", "HEAD"])
}

/// Runs git in `dir` and returns its trimmed standard output.
fn git_out(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Serve {
    child: Child,
    url: String,
    token: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(repo: &Path, state: &Path, store: &str) -> anyhow::Result<Serve> {
    let exe = std::env::current_exe().context("locating the tend binary")?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--repo",
        ])
        .arg(repo)
        .arg("--state")
        .arg(state)
        // `TEND_BENCH_SERVE_LOG=tend=info` shows each sync's steps and their times.
        .env(
            "RUST_LOG",
            std::env::var("TEND_BENCH_SERVE_LOG").unwrap_or_else(|_| "warn".to_string()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting tend serve")?;
    let stdout = child.stdout.take().context("serve's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("serve printed {line:?} instead of its URL"))?
        .to_string();
    let token = std::fs::read_to_string(state.join("admin.token"))?
        .trim()
        .to_string();
    Ok(Serve { child, url, token })
}

/// Waits until revision `id` has a final phase; returns the phase.
fn wait_revision(
    serve: &Serve,
    http: &reqwest::blocking::Client,
    id: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    let url = format!("{}/apis/tend.dev/v1/revisions/{id}", serve.url);
    while Instant::now() < deadline {
        if let Ok(resp) = http.get(&url).bearer_auth(&serve.token).send()
            && resp.status().is_success()
            && let Ok(v) = resp.json::<Value>()
            && let Some(phase) = v.pointer("/status/phase").and_then(Value::as_str)
            && phase != "Pending"
        {
            return Ok(phase.to_string());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("revision {id} was not applied within {limit:?}")
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn apply(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let n = args.deployments;
    if args.store != "redb" {
        store_is_empty(&args.store)?;
    }
    let work = std::env::temp_dir().join(format!("tend-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let repo = work.join("repo");
    std::fs::create_dir_all(repo.join("apps"))?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let mut total_bytes = 0;
    for i in 0..n {
        let yaml = app_yaml(i, "v1");
        total_bytes += yaml.len();
        std::fs::write(repo.join(format!("apps/app-{i}.yaml")), yaml)?;
    }
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "bench: initial apps"])?;

    // The floor: parsing and validating the same YAML alone.
    let limits = Limits::default();
    let started = Instant::now();
    let mut objects = 0;
    for i in 0..n {
        let path = format!("apps/app-{i}.yaml");
        let bytes = std::fs::read(repo.join(&path))?;
        objects += manifest::load_file(&path, &bytes, &limits).objects.len();
    }
    let parse_s = started.elapsed().as_secs_f64();

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let state = work.join("state");
    let started = Instant::now();
    let serve = start_serve(&repo, &state, &args.store)?;
    let phase = wait_revision(&serve, &http, &head(&repo)?, Duration::from_secs(120))?;
    let cold_s = started.elapsed().as_secs_f64();
    if phase != "Applied" {
        bail!("the initial revision was {phase}");
    }

    let count = |path: &str| -> usize {
        http.get(format!("{}{path}", serve.url))
            .bearer_auth(&serve.token)
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v.get("items").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0)
    };
    let pods_before = count("/api/v1/pods");
    let busy = Instant::now();
    let one_file = time_commits(&repo, &serve, &http, n, args.commits, 0)?;
    let busy_s = busy.elapsed().as_secs_f64();
    let rss = rss_mib(serve.child.id())?;
    let pods_after = count("/api/v1/pods");
    println!(
        "tend bench apply: {n} Deployments + {n} Services ({objects} objects, {:.1} MiB of YAML), store {}",
        total_bytes as f64 / 1048576.0,
        args.store
    );
    println!(
        "  {:<44} {:>10.3} s   (goal <= 3 s)",
        "cold apply (serve start -> Applied)", cold_s
    );
    println!(
        "  {:<44} {:>10.3} s   (floor: parse + validate alone)",
        "  baseline: parse the same YAML", parse_s
    );
    print_commits("one-file commit -> Applied", &one_file, cold_s);
    // Fair to say: these commits ran while the controllers were still creating the apply's
    // ReplicaSets and pods (and their Events) through the same store.
    println!(
        "  {:<44} {:>10} pods (of {}) created during the {:.1} s of those commits, {} before",
        "  meanwhile, by the controllers",
        pods_after.saturating_sub(pods_before),
        3 * n,
        busy_s,
        pods_before
    );
    let goal = if n == GOAL_DEPLOYMENTS {
        "goal <= 150 MiB"
    } else {
        "the goal, 150 MiB, is for 4,000 objects"
    };
    println!(
        "  {:<44} {:>10.1} MiB ({goal})",
        "serve resident memory, all loaded", rss
    );

    // The controllers then make a ReplicaSet and 3 (pending: there are no nodes) pods per
    // Deployment, with their events: measure again once they have settled. The commits
    // above ran while the controllers were busy with that; the ones below run on a store
    // at rest, several times larger.
    let started = Instant::now();
    let limit = Duration::from_secs(300).max(Duration::from_millis(60 * n as u64));
    let (mut replica_sets, mut pods) = (0, 0);
    while replica_sets < n || pods < 3 * n {
        if started.elapsed() > limit {
            println!(
                "  controllers not settled within {limit:?}: {replica_sets} of {n} ReplicaSets, \
                 {pods} of {} pods",
                3 * n
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(500));
        replica_sets = count("/apis/apps/v1/replicasets");
        pods = count("/api/v1/pods");
    }
    let settle_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(15));
    let settled_rss = rss_mib(serve.child.id())?;
    let settled = time_commits(&repo, &serve, &http, n, args.commits, args.commits)?;
    drop(serve);
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "  {:<44} {:>10.1} s   ({n} ReplicaSets and {} pods created)",
        "controllers settled after the apply",
        settle_s,
        3 * n
    );
    println!(
        "  {:<44} {:>10.1} MiB (about {} objects with the events)",
        "serve resident memory, controllers settled",
        settled_rss,
        2 * n + n + 3 * n + 3 * n
    );
    print_commits("one-file commit, controllers settled", &settled, cold_s);
    Ok(ExitCode::SUCCESS)
}

/// Commits `commits` one-file changes (each a new image tag of one app, spread over the
/// repository), as a push delivers them: the commit's objects are written first (`git
/// write-tree` and `commit-tree` in the 10,000-file checkout), then its ref is moved
/// (`git update-ref`), as `git receive-pack` does last. Each is timed from that ref update
/// to its revision Applied, in ms; the writing before it is timed apart.
fn time_commits(
    repo: &Path,
    serve: &Serve,
    http: &reqwest::blocking::Client,
    n: usize,
    commits: usize,
    done_before: usize,
) -> anyhow::Result<Commits> {
    let mut times = Vec::new();
    let mut write_ms = Vec::new();
    for c in done_before..done_before + commits {
        let i = (c * 7919) % n;
        let version = format!("v{}", c + 2);
        std::fs::write(
            repo.join(format!("apps/app-{i}.yaml")),
            app_yaml(i, &version),
        )?;
        git(repo, &["add", "-A"])?;
        let t = Instant::now();
        let tree = git_out(repo, &["write-tree"])?;
        let message = format!("bench: app-{i} to {version}");
        let commit = git_out(repo, &["commit-tree", &tree, "-p", "HEAD", "-m", &message])?;
        write_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        git(repo, &["update-ref", "-m", &message, "HEAD", &commit])?;
        let phase = wait_revision(serve, http, &commit, Duration::from_secs(30))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if phase != "Applied" {
            bail!("commit {c} was {phase}");
        }
    }
    Ok(Commits { times, write_ms })
}

/// The times of one-file commits (ms, from their ref update to Applied), and of writing each
/// commit before it (the index's tree and the commit object of a 10,000-file checkout).
struct Commits {
    times: Vec<f64>,
    write_ms: Vec<f64>,
}

/// Three lines: the median of the commits' times (ms), each time, and the cold apply over
/// the median; how long writing the commits took before; and the two together, as a
/// `git commit` in the watched checkout itself would take.
fn print_commits(what: &str, commits: &Commits, cold_s: f64) {
    let times = &commits.times;
    let median_ms = median(times.to_vec());
    println!(
        "  {what:<44} {median_ms:>10.1} ms  (goal <= 150 ms; ref update -> Applied, median of \
         {}: {:?}; the cold apply is {:.0}x)",
        times.len(),
        times
            .iter()
            .map(|v| (v * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        cold_s * 1000.0 / median_ms.max(f64::MIN_POSITIVE)
    );
    println!(
        "  {:<44} {:>10.1} ms  (median; git write-tree + commit-tree, not in the figure above)",
        "  before it: writing the commit",
        median(commits.write_ms.clone())
    );
    let together = times
        .iter()
        .zip(&commits.write_ms)
        .map(|(t, g)| t + g)
        .collect();
    println!(
        "  {:<44} {:>10.1} ms  (median; as a `git commit` in the watched checkout)",
        "  both together",
        median(together)
    );
}

/// A cold apply needs a store without tend's objects: the bench does not delete anyone's.
fn store_is_empty(url: &str) -> anyhow::Result<()> {
    use crate::store::Store;
    let store = crate::store::etcd::EtcdStore::open(url)?;
    let (revisions, _) = store.list(crate::api::Kind::Revision, None)?;
    if !revisions.is_empty() {
        bail!(
            "{url} already holds tend's objects ({} revisions): give the bench an empty etcd",
            revisions.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_apps_are_valid() {
        let parsed =
            manifest::load_file("app.yaml", app_yaml(7, "v2").as_bytes(), &Limits::default());
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.len(), 2);
        assert_eq!(
            parsed.objects[0].object["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.local:5000/app-7:v2"
        );
    }
}
