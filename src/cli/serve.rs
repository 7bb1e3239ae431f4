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
}

// TEMPORARY (cli branch): a placeholder so `main` compiles until the real `serve` lands.
// The serve engineer replaces this function; the signature is the contract.
pub fn run(
    _args: ServeArgs,
    _log: crate::telemetry::LogFormat,
) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("serve: not implemented yet in this build")
}
