//! The command-line client: one file per verb, kubectl-style tables, and the `serve` daemon's
//! flags. Every error becomes one line on stderr; exit codes are 0 (yes), 1 (no), 2 (error).
//!
//! - [`client`]: blocking HTTP client of the API (token, timeouts, Status errors).
//! - [`get`], [`describe`]: the reading verbs; [`columns`] and the describers are pure
//!   renderers of Kubernetes-shaped JSON; [`table`] aligns cells as kubectl does.
//! - [`logs`]: a container's log through the control plane (streamed, `-f`).
//! - [`output`]: `-o json|yaml|name`; [`humanize`]: ages, times, labels, selectors.

pub mod client;
pub mod columns;
pub mod describe;
pub mod diff;
pub mod docs;
pub mod get;
pub mod humanize;
pub mod label;
pub mod logs;
pub mod output;
pub mod rollout;
pub mod scale;
pub mod serve;
pub mod serve_store;
pub mod table;
pub mod up;

use crate::api::Kind;
use crate::telemetry::LogFormat;
use client::{Client, ClientOptions};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// `tend`: GitOps deployments with Kubernetes semantics, without a Kubernetes cluster.
#[derive(Debug, clap::Parser)]
#[command(name = "tend", version, about, propagate_version = true)]
pub struct Cli {
    /// URL of the tend API server. `tend agent` and `tend sim-node` take several,
    /// comma-separated (control planes sharing an etcd store), and move to the next one when
    /// one stops answering.
    #[arg(
        long,
        global = true,
        env = "TEND_SERVER",
        default_value = "http://127.0.0.1:7443"
    )]
    pub server: String,
    /// Bearer token (default: admin.token in $TEND_STATE or /var/lib/tend, when readable).
    #[arg(long, global = true, env = "TEND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate(s) an `https://` server's certificate must chain to (the server's
    /// `--tls-cert` CA); the system's roots are then not trusted.
    #[arg(long, global = true, env = "TEND_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Log format of daemons.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the control plane: watch a git repository or directory and serve the API.
    Serve(serve::ServeArgs),
    /// Run a whole cluster on this machine: the control plane and one local agent in one
    /// process; Ctrl-C stops it and removes its containers.
    Up(up::UpArgs),
    /// Display one or many objects (kubectl columns).
    Get(get::GetArgs),
    /// Show details of one object, with its events.
    Describe(describe::DescribeArgs),
    /// Show what applying a repository or directory would change (exit 0: none, 1: changes, 2: error).
    Diff(diff::DiffArgs),
    /// Run a simulated node: registers, heartbeats, and marks its pods Running and Ready.
    SimNode(crate::agent::sim::SimNodeArgs),
    /// Run the node agent: registers, runs the pods bound to this node with runc.
    Agent(crate::agent::node::AgentArgs),
    /// The node's reaper, started by `tend agent`: runs containers and keeps exit codes.
    #[command(hide = true)]
    AgentReaper(ReaperArgs),
    /// Measure tend: `apply` (cold apply, one-file commit, memory), `schedule` (pods/s) or
    /// `agent` (pod start, image pull, agent memory; needs root and the lab tools).
    Bench(crate::bench::BenchArgs),
    /// Follow, list, undo, pause or resume rollouts (undo, pause and resume are commits).
    Rollout(rollout::RolloutArgs),
    /// Set a Deployment's replicas (a commit on the source).
    Scale(scale::ScaleArgs),
    /// Add, change or remove node labels.
    Label(label::LabelArgs),
    /// Print a container's log (-p: the previous instance's, -f: follow).
    Logs(logs::LogsArgs),
    /// Print the client version (and the server's, when reachable).
    Version,
    /// Print a shell completion script: `source <(tend completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print reference documentation: `tend docs cli` is docs/cli.md.
    #[command(hide = true)]
    Docs(docs::DocsArgs),
}

/// Flags of the hidden `tend agent-reaper` (started by `tend agent`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReaperArgs {
    /// The agent's state directory.
    #[arg(long)]
    pub state: std::path::PathBuf,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: std::path::PathBuf,
}

/// What a reading command prints; written by [`run`] so that a closed pipe is not an error.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    pub stderr: String,
}

/// Runs a parsed command line; every error is printed as one line and exits 2.
pub fn run(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            report_error(&err);
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = || {
        ClientOptions::with_token_fallback(cli.server.clone(), cli.token.clone())
            .with_ca(cli.ca.clone())
    };
    let printed = match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init(cli.log_format);
            return serve::run(args, cli.log_format);
        }
        Command::Up(mut args) => {
            args.ca = cli.ca.clone();
            return up::run(args, cli.log_format);
        }
        Command::Diff(args) => {
            let client = Client::new(&options())?;
            return diff::run(args, |kind| Ok(client.list(kind, None, "")?));
        }
        Command::SimNode(mut args) => {
            args.ca = cli.ca.clone();
            return crate::agent::sim::main(args, &cli.server, cli.log_format);
        }
        Command::Agent(mut args) => {
            args.ca = cli.ca.clone();
            return crate::agent::node::main(args, &cli.server, cli.log_format);
        }
        Command::AgentReaper(args) => {
            crate::agent::runtime::reaper::serve(&args.state, &args.runc)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Bench(args) => {
            crate::telemetry::init(cli.log_format);
            return crate::bench::run(args);
        }
        Command::Get(args) => get::run(args, &Client::new(&options())?)?,
        Command::Describe(args) => describe::run(args, &Client::new(&options())?)?,
        Command::Scale(args) => scale::run(args, &Client::new(&options())?)?,
        Command::Label(args) => label::run(args, &Client::new(&options())?)?,
        Command::Logs(args) => {
            let client = Client::streaming(&options())?;
            return logs::run(args, &client, &mut std::io::stdout().lock());
        }
        Command::Rollout(args) => {
            let (printed, succeeded) = rollout::run(args, &Client::new(&options())?)?;
            print(&printed);
            return Ok(if succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Version => version(&options()),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "tend", &mut script);
            Printed {
                stdout: String::from_utf8_lossy(&script).into_owned(),
                stderr: String::new(),
            }
        }
        Command::Docs(args) => match args.topic {
            docs::Topic::Cli => Printed {
                stdout: docs::cli_markdown(),
                stderr: String::new(),
            },
        },
    };
    print(&printed);
    Ok(ExitCode::SUCCESS)
}

/// `tend 0.1.0`, then `server: ...` when a server answers within two seconds.
fn version(opts: &ClientOptions) -> Printed {
    let mut stdout = format!("tend {}\n", env!("CARGO_PKG_VERSION"));
    let server = Client::with_timeout(opts, Duration::from_secs(2))
        .and_then(|c| c.get_json("/version", &[]));
    if let Ok(v) = server {
        let text = ["gitVersion", "version"]
            .iter()
            .find_map(|k| v.get(*k).and_then(serde_json::Value::as_str))
            .map(str::to_string);
        if let Some(text) = text {
            stdout.push_str(&format!("server: {text} ({})\n", opts.server));
        }
    }
    Printed {
        stdout,
        stderr: String::new(),
    }
}

/// Writes output; a reader that went away (`tend get pods | head -1`) is not an error.
fn print(printed: &Printed) {
    let _ = std::io::stdout()
        .lock()
        .write_all(printed.stdout.as_bytes());
    let _ = std::io::stderr()
        .lock()
        .write_all(printed.stderr.as_bytes());
}

/// `error: what: why` on one line.
pub fn report_error(err: &anyhow::Error) {
    let text = format!("{err:#}").replace(['\n', '\r'], " ");
    let _ = writeln!(std::io::stderr(), "error: {text}");
}

/// KIND as kubectl spells it, or a clear error naming what is accepted.
pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::from_cli(s).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown resource type {s:?}: use one of nodes (no), deployments (deploy), replicasets (rs), \
             pods (po), services (svc), endpoints (ep), events (ev), revisions (rev)"
        )
    })
}

/// A panic prints one line (no backtrace); the caller turns it into exit code 2.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown cause")
            .replace('\n', " ");
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(std::io::stderr(), "error: internal error{place}: {message}");
    }));
}

/// At most this many glibc malloc arenas (unless `MALLOC_ARENA_MAX` says otherwise).
/// glibc gives each thread that meets a locked arena its own, up to 8 per core, and each
/// arena keeps the peak its threads once held; the agent runs its container starts and nft
/// on many blocking threads. Two arenas keep two threads from contending. The memory figures
/// in docs/performance.md were measured with this cap; its own effect was not isolated (a run
/// with one arena was within noise).
const MALLOC_ARENAS: i32 = 2;

fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// At most this many bytes of git objects kept in libgit2's cache, across all repositories.
/// Its default, 256 MiB, is a cap that a long-running `tend serve` grows towards: the cache
/// keeps the commits and small trees of every revision it read, 0.6 MB more over 11 minutes
/// at a commit every 5 s (`tend bench load`, jemalloc's heap profile). A sync diffs the new
/// commit's tree against the last one's: that is what is worth keeping.
const GIT_CACHE_BYTES: libc::ssize_t = 8 << 20;

fn limit_git_cache() {
    // SAFETY: sets a libgit2 global; called before any thread starts, as git2 asks.
    // It fails only if libgit2 cannot initialise, which its first real use then reports; the
    // cache keeps its default size meanwhile (logging is not set up yet to say so).
    let _ = unsafe { git2::opts::set_cache_max_size(GIT_CACHE_BYTES) };
}

/// The whole program: parse, run, and never let a panic escape.
pub fn main() -> ExitCode {
    limit_malloc_arenas();
    limit_git_cache();
    install_panic_hook();
    let cli = <Cli as clap::Parser>::parse();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))).unwrap_or(ExitCode::from(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "tend",
            "get",
            "pods",
            "-A",
            "-o",
            "wide",
            "-l",
            "app=x",
            "--server",
            "http://h:1",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://h:1");
        let Command::Get(args) = cli.command else {
            panic!("not get")
        };
        assert!(args.all_namespaces);
        assert_eq!(args.output, Some(output::OutputFormat::Wide));
        assert!(Cli::try_parse_from(["tend", "get", "pods", "-A", "-n", "x"]).is_err());
        assert!(Cli::try_parse_from(["tend", "describe", "rev", "4f2a"]).is_ok());
        assert!(Cli::try_parse_from(["tend", "serve", "--dir", "/tmp/x"]).is_ok());
    }

    #[test]
    fn kinds() {
        assert_eq!(parse_kind("deploy").unwrap(), Kind::Deployment);
        let err = parse_kind("bogus").unwrap_err().to_string();
        assert!(err.starts_with("unknown resource type \"bogus\""), "{err}");
    }
}
