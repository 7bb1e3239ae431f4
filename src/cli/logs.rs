//! `tend logs POD [-c CONTAINER] [-n NS] [-p] [--tail N] [-f]`: a container's output, read
//! through the control plane from the agent of the pod's node. The container defaults to the
//! pod's only one, or the one its `kubectl.kubernetes.io/default-container` annotation names
//! (the server chooses, so `curl` gets the same answer).

use super::client::Client;
use anyhow::Context as _;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pub pod: String,
    /// The container, when the pod has several.
    #[arg(short, long)]
    pub container: Option<String>,
    /// The pod's namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// The previous instance's log (before the last restart).
    #[arg(short, long)]
    pub previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Keep printing new lines until the container stops (or Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
}

/// The API path of a pod's log.
pub fn log_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}/log")
}

/// The pod's name from `NAME`, `pod/NAME` or `pods/NAME`.
pub fn pod_name(arg: &str) -> anyhow::Result<&str> {
    let name = match arg.split_once('/') {
        Some(("pod" | "pods" | "po", name)) => name,
        Some((kind, _)) => anyhow::bail!("tend logs reads pods, not {kind}"),
        None => arg,
    };
    if name.is_empty() {
        anyhow::bail!("a pod name is required");
    }
    Ok(name)
}

/// Writes the log to `out` as it arrives; a reader that went away ends it quietly.
pub fn run(args: LogsArgs, client: &Client, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let pod = pod_name(&args.pod)?;
    let tail = args.tail.to_string();
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = args.container.as_deref() {
        query.push(("container", c));
    }
    if args.previous {
        query.push(("previous", "true"));
    }
    if args.tail >= 0 {
        query.push(("tailLines", &tail));
    }
    if args.follow {
        query.push(("follow", "true"));
    }
    let mut body = client.get_stream(&log_path(&args.namespace, pod), &query)?;
    match std::io::copy(&mut body, out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).with_context(|| format!("reading the log of pod {pod}")),
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names() {
        assert_eq!(pod_name("web-1").expect("name"), "web-1");
        assert_eq!(pod_name("pod/web-1").expect("name"), "web-1");
        assert!(pod_name("deploy/web").is_err());
        assert!(pod_name("pod/").is_err());
        assert_eq!(
            log_path("shop", "web-1"),
            "/api/v1/namespaces/shop/pods/web-1/log"
        );
    }
}
