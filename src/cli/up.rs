//! `tend up`: a whole cluster on one machine, in one process: the control plane (`serve`,
//! with its embedded store under `--state`) and one local agent (state in
//! `<state>/agent`), which talks to it over loopback with the join token from the state
//! directory. NodePorts also answer on 127.0.0.1 (`route_localnet`, as kube-proxy does), so
//! that `curl localhost:30080` works on a laptop. Ctrl-C or SIGTERM stops both; the agent
//! then removes every container, the pod network, the `tend-lb` table and restores
//! `route_localnet` ([`crate::agent::teardown`]), unless `--keep-workloads` is given (then
//! containers stay running, as `tend agent` leaves them, and the next `tend up` adopts them).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::serve::{ServeArgs, serve_until};
use crate::agent::network::ipam::Cidr;
use crate::agent::network::plan::BRIDGE;
use crate::agent::node::AgentArgs;

/// Flags of `tend up` (CLI.md): serve's, and the local node's (named as `tend agent`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Image archives to import at start (offline images, `imagePullPolicy: Never`).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// The local node's name (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Labels the local Node is created with (kept as they are when it already exists).
    #[arg(long, default_value = "")]
    pub labels: String,
    /// The node's InternalIP (default: the first global IPv4 address, else 127.0.0.1).
    #[arg(long)]
    pub address: Option<Ipv4Addr>,
    /// Registries (HOST:PORT) reached over plain HTTP.
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    /// On Ctrl-C, leave the containers running (as `tend agent` does); the next `tend up`
    /// with the same --state adopts them.
    #[arg(long)]
    pub keep_workloads: bool,
    /// The CA the local agent pins with --tls-cert (filled from the global `--ca`; default:
    /// the --tls-cert file itself, right for a self-signed certificate or a chain that
    /// holds its CA).
    #[arg(skip)]
    pub ca: Option<PathBuf>,
}

/// A node name from a hostname: its first label, lowercased (`Laptop.local` -> `laptop`);
/// `None` when nothing valid is left.
pub fn node_name(hostname: &str) -> Option<String> {
    let first = hostname.trim().split('.').next().unwrap_or_default();
    let name: String = first
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = name.trim_matches('-').to_string();
    (!name.is_empty() && name.len() <= 63).then_some(name)
}

/// The node's address from `ip -j -4 addr show`: the first global-scope IPv4 address that
/// is not on `lo` or tend's bridge and not inside the pod network; 127.0.0.1 when there is
/// none (a laptop offline, a fresh network namespace).
pub fn pick_address(ip_json: &str, pod_cidr: Option<&Cidr>) -> Ipv4Addr {
    let links: Vec<Value> = serde_json::from_str(ip_json).unwrap_or_default();
    links
        .iter()
        .filter(|l| {
            let name = l.get("ifname").and_then(Value::as_str).unwrap_or_default();
            name != "lo" && name != BRIDGE
        })
        .flat_map(|l| {
            l.get("addr_info")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter(|a| a.get("scope").and_then(Value::as_str) == Some("global"))
        .filter_map(|a| a.get("local")?.as_str()?.parse::<Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback() && !pod_cidr.is_some_and(|c| c.contains(*ip)))
        .unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The URL the CLI and the local agent use for the API bound at `addr` (an unspecified
/// address such as 0.0.0.0 is reached on 127.0.0.1).
pub fn client_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// What `tend up` prints once the API listens: where it is and how to use the CLI.
pub fn banner(url: &str, state: &std::path::Path, node: &str, address: Ipv4Addr) -> String {
    let state = state.display();
    let mut text = format!(
        "tend up: control plane on {url}, node {node} ({address}), state in {state}\n\
         \n\
         In another shell (as root, which can read {state}/admin.token):\n\
         \x20 export TEND_SERVER={url} TEND_STATE={state}\n\
         \x20 tend get pods -o wide\n\
         \n\
         NodePorts answer on 127.0.0.1"
    );
    if !address.is_loopback() {
        text.push_str(&format!(" and {address}"));
    }
    text.push_str(
        " (curl http://127.0.0.1:NODEPORT/).\n\
         Ctrl-C stops tend and removes its containers and pod network (--keep-workloads keeps them).\n",
    );
    text
}

/// What a second Ctrl-C prints before `tend up` exits at once (code 130).
const SECOND_SIGNAL: &str = "tend up: second signal, exiting without finishing the clean-up; \
     what is left is adopted by the next `tend up` with the same --state";

/// `tend up`: runs until SIGINT or SIGTERM, then cleans up; exit 0 when all went well.
pub fn run(args: UpArgs, log: crate::telemetry::LogFormat) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(log);
    crate::agent::node::check_node()?;
    super::serve::bound_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(up(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let pod_cidr: Cidr = args
        .serve
        .pod_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("--pod-cidr {}: {e}", args.serve.pod_cidr))?;
    let service_cidr: Cidr = args
        .serve
        .service_cidr
        .parse()
        .map_err(|e| anyhow::anyhow!("--service-cidr {}: {e}", args.serve.service_cidr))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            node_name(&host).with_context(|| {
                format!(
                    "the hostname {:?} is no valid node name: give --name NODE",
                    host.trim()
                )
            })?
        }
    };
    let address = match args.address {
        Some(a) => a,
        None => {
            let listing = std::process::Command::new("ip")
                .args(["-j", "-4", "addr", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            pick_address(&listing, Some(&pod_cidr))
        }
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            crate::shutdown::signal().await;
            let _ = stop_tx.send(true);
            // The clean-up waits for containers' grace periods; a second Ctrl-C does not.
            crate::shutdown::signal().await;
            say(SECOND_SIGNAL);
            std::process::exit(130);
        });
    }
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let state = args.serve.state.clone();
    let server = tokio::spawn(serve_until(args.serve.clone(), stop_rx.clone(), move |a| {
        let _ = addr_tx.send(a);
    }));
    let Ok(addr) = addr_rx.await else {
        // serve stopped before it listened: its error says why.
        server.await.context("the control plane")??;
        return Ok(ExitCode::SUCCESS);
    };
    let mut url = client_url(addr);
    if args.serve.tls_cert.is_some() {
        url = url.replacen("http://", "https://", 1);
    }
    say(&banner(&url, &state, &name, address));

    let agent = AgentArgs {
        servers: vec![url],
        token_file: state.join("join.token"),
        ca: args.ca.clone().or_else(|| args.serve.tls_cert.clone()),
        name,
        labels: args.labels.clone(),
        address,
        port: crate::agent::logs::DEFAULT_PORT,
        capacity: "cpu=4,memory=8Gi,pods=110".to_string(),
        state: state.join("agent"),
        images: args.images.clone(),
        insecure_registry: args.insecure_registry.clone(),
        registry_config: None,
        service_cidr,
        cluster_cidr: pod_cidr,
        heartbeat: Duration::from_secs(2),
        sync_period: Duration::from_secs(2),
        localhost_nodeports: true,
        remove_on_exit: !args.keep_workloads,
    };
    let ran = crate::agent::node::run(agent, stop_rx).await;
    // The agent ends on a signal or on an error: either way the control plane stops too.
    let _ = stop_tx.send(true);
    let served = server.await.context("the control plane")?;
    ran.context("the local agent")?;
    served?;
    say("tend up: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints for the person at the terminal (serve's printer; `text` may end in a newline).
fn say(text: &str) {
    super::serve::say(text.strip_suffix('\n').unwrap_or(text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn node_names_come_from_hostnames() {
        assert_eq!(node_name("Laptop.local\n").as_deref(), Some("laptop"));
        assert_eq!(node_name("build_box-01").as_deref(), Some("buildbox-01"));
        assert_eq!(node_name("---"), None);
        assert_eq!(node_name(""), None);
    }

    #[test]
    fn the_address_is_the_first_global_ipv4_outside_the_pod_network() {
        let pods: Cidr = "10.244.0.0/16".parse().unwrap();
        let listing = r#"[
          {"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
          {"ifname":"tend0","addr_info":[{"family":"inet","local":"10.244.0.1","prefixlen":24,"scope":"global"}]},
          {"ifname":"weird","addr_info":[{"family":"inet","local":"10.244.9.1","prefixlen":24,"scope":"global"}]},
          {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"scope":"global"}]}
        ]"#;
        assert_eq!(
            pick_address(listing, Some(&pods)),
            "192.0.2.2".parse::<Ipv4Addr>().unwrap()
        );
        let only_lo = r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1","scope":"host"}]}]"#;
        assert_eq!(pick_address(only_lo, Some(&pods)), Ipv4Addr::LOCALHOST);
        assert_eq!(pick_address("not json", None), Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn the_cli_reaches_an_unspecified_listener_on_loopback() {
        assert_eq!(
            client_url("0.0.0.0:7443".parse().unwrap()),
            "http://127.0.0.1:7443"
        );
        assert_eq!(
            client_url("127.0.0.1:9000".parse().unwrap()),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            client_url("192.0.2.2:7443".parse().unwrap()),
            "http://192.0.2.2:7443"
        );
    }

    #[test]
    fn the_banner_says_how_to_use_the_cli() {
        let text = banner(
            "http://127.0.0.1:7443",
            std::path::Path::new("/var/lib/tend"),
            "laptop",
            "192.0.2.2".parse().unwrap(),
        );
        assert!(text.contains("export TEND_SERVER=http://127.0.0.1:7443 TEND_STATE=/var/lib/tend"));
        assert!(text.contains("tend get pods -o wide"));
        assert!(text.contains("127.0.0.1 and 192.0.2.2"));
    }

    #[test]
    fn flags_parse_like_serve_and_agent() {
        let cli = crate::cli::Cli::try_parse_from([
            "tend",
            "up",
            "--repo",
            "/srv/lab.git",
            "--images",
            "/srv/images",
            "--labels",
            "disk=ssd",
            "--name",
            "node01",
            "--keep-workloads",
        ])
        .unwrap();
        let crate::cli::Command::Up(args) = cli.command else {
            panic!("not up")
        };
        assert_eq!(args.serve.repo.as_deref(), Some("/srv/lab.git"));
        assert_eq!(args.serve.listen.to_string(), "127.0.0.1:7443");
        assert_eq!(args.labels, "disk=ssd");
        assert_eq!(args.name.as_deref(), Some("node01"));
        assert!(args.keep_workloads);
        assert!(crate::cli::Cli::try_parse_from(["tend", "up"]).is_err());
        assert!(
            crate::cli::Cli::try_parse_from(["tend", "up", "--dir", "/x", "--repo", "/y"]).is_err()
        );
    }
}
