//! `tend scale deployment/NAME --replicas N`: a commit setting `spec.replicas`.

use super::Printed;
use super::client::Client;
use super::rollout::{Target, post_command};
use serde_json::json;

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub replicas: u32,
}

pub fn run(args: ScaleArgs, client: &Client) -> anyhow::Result<Printed> {
    let key = args.target.key()?;
    let revision = post_command(client, &key, "scale", &json!({"replicas": args.replicas}))?;
    Ok(Printed {
        stdout: format!("deployment.apps/{} scaled\n{revision}\n", key.name),
        stderr: String::new(),
    })
}
