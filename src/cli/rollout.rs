//! `tend rollout status|history|undo|pause|resume`: undo, pause and resume are commits on the
//! source made by the server; status follows the Deployment's counters as kubectl does;
//! history lists the owned ReplicaSets' revisions.

use super::Printed;
use super::client::{Client, ClientError};
use super::describe::describe_replicaset;
use super::humanize::Clock;
use crate::api::{Kind, ObjectKey};
use crate::server::rollout::{CHANGE_CAUSE_ANNOTATION, owned_replica_sets, revision_of};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// `deployment/NAME`, `deploy/NAME` or `deployment NAME`, and the namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// `deployment/NAME` (or `deployment NAME`).
    pub resource: String,
    pub name: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCommand {
    /// Follow a rollout until it completes (exit 0) or fails or times out (exit 1).
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (e.g. 60s, 5m).
        #[arg(long, default_value = "60s")]
        timeout: String,
    },
    /// List revisions (REVISION CHANGE-CAUSE), or show one revision's pod template.
    History {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Commit the pod template of an earlier revision (default: the previous one).
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Commit `spec.paused: true`.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Commit the removal of `spec.paused`.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    /// The Deployment named, whatever the accepted spelling.
    pub fn key(&self) -> anyhow::Result<ObjectKey> {
        let (kind, name) = match (self.resource.split_once('/'), &self.name) {
            (Some((kind, name)), None) => (kind, name),
            (None, Some(name)) => (self.resource.as_str(), name.as_str()),
            _ => bail!(
                "name the deployment as deployment/NAME or deployment NAME (got {:?})",
                self.resource
            ),
        };
        if super::parse_kind(kind)? != Kind::Deployment || name.is_empty() {
            bail!("only deployments have rollouts (got {kind}/{name})");
        }
        Ok(ObjectKey::new(Kind::Deployment, &self.namespace, name))
    }
}

/// `POST .../deployments/NAME/ACTION`; answers the new revision id.
pub fn command_path(key: &ObjectKey, action: &str) -> String {
    format!(
        "/apis/tend.dev/v1/namespaces/{}/deployments/{}/{action}",
        key.namespace, key.name
    )
}

pub fn post_command(
    client: &Client,
    key: &ObjectKey,
    action: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let answer = client
        .post_json(&command_path(key, action), body)
        .with_context(|| format!("{action} deployment/{}", key.name))?;
    Ok(answer
        .get("revision")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string())
}

/// Runs a rollout subcommand; `Ok(false)` means exit 1 (the rollout failed or timed out).
pub fn run(args: RolloutArgs, client: &Client) -> anyhow::Result<(Printed, bool)> {
    let ok = |stdout: String| {
        Ok((
            Printed {
                stdout,
                stderr: String::new(),
            },
            true,
        ))
    };
    // A mutation prints only the new commit id on stdout (CLI.md: scripts capture it), and
    // kubectl's sentence on stderr.
    let committed = |sentence: String, revision: String| {
        Ok((
            Printed {
                stdout: format!("{revision}\n"),
                stderr: format!("{sentence}\n"),
            },
            true,
        ))
    };
    match args.command {
        RolloutCommand::Undo {
            target,
            to_revision,
        } => {
            let key = target.key()?;
            let revision = post_command(
                client,
                &key,
                "rollback",
                &json!({"toRevision": to_revision}),
            )?;
            committed(
                format!("deployment.apps/{} rolled back", key.name),
                revision,
            )
        }
        RolloutCommand::Pause { target } => {
            let key = target.key()?;
            let revision = post_command(client, &key, "pause", &json!({}))?;
            committed(format!("deployment.apps/{} paused", key.name), revision)
        }
        RolloutCommand::Resume { target } => {
            let key = target.key()?;
            let revision = post_command(client, &key, "resume", &json!({}))?;
            committed(format!("deployment.apps/{} resumed", key.name), revision)
        }
        RolloutCommand::History { target, revision } => {
            let key = target.key()?;
            let deployment = client.get(&key)?;
            let replica_sets = client.list(Kind::ReplicaSet, Some(&key.namespace), "")?;
            let owned = owned_replica_sets(&deployment, &replica_sets);
            ok(match revision {
                None => history_table(&key.name, &owned),
                Some(n) => revision_detail(&key.name, &owned, n)?,
            })
        }
        RolloutCommand::Status { target, timeout } => {
            let key = target.key()?;
            let timeout = super::serve::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout {e}"))?;
            follow_status(client, &key, timeout)
        }
    }
}

/// `deployment.apps/NAME`, then `REVISION  CHANGE-CAUSE` rows, oldest first.
pub fn history_table(name: &str, owned: &[&Value]) -> String {
    let rows: Vec<(String, String)> = owned
        .iter()
        .filter_map(|rs| {
            let revision = revision_of(rs)?;
            let cause = rs
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .unwrap_or("<none>");
            Some((revision.to_string(), cause.to_string()))
        })
        .collect();
    let width = rows
        .iter()
        .map(|(r, _)| r.len())
        .chain(std::iter::once("REVISION".len()))
        .max()
        .unwrap_or(8)
        + 2;
    let mut out = format!(
        "deployment.apps/{name}\n{:<width$}CHANGE-CAUSE\n",
        "REVISION"
    );
    for (revision, cause) in rows {
        out.push_str(&format!("{revision:<width$}{cause}\n"));
    }
    out
}

/// `deployment.apps/NAME with revision #N` and that revision's pod template, as kubectl's
/// describe shows a template.
pub fn revision_detail(name: &str, owned: &[&Value], revision: i64) -> anyhow::Result<String> {
    let Some(rs) = owned.iter().find(|rs| revision_of(rs) == Some(revision)) else {
        bail!("unable to find the specified revision {revision} of deployment {name:?}");
    };
    let described = describe_replicaset(rs, &[], None, &Clock::system());
    let mut out = format!("deployment.apps/{name} with revision #{revision}\n");
    let mut inside = false;
    for line in described.lines() {
        if line.starts_with("Pod Template:") {
            inside = true;
        } else if inside && !line.starts_with([' ', '\t']) {
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Where a rollout stands, from the Deployment alone (kubectl's `DeploymentStatusViewer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    Waiting(String),
    Complete(String),
    Failed(String),
}

pub fn rollout_state(deployment: &Value) -> RolloutState {
    let name = deployment
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let int = |p: &str| deployment.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    if generation > observed {
        return RolloutState::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    let deadline_exceeded = deployment
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Progressing")
                    && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
            })
        });
    if deadline_exceeded {
        return RolloutState::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let wanted = deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int("/status/updatedReplicas");
    let replicas = int("/status/replicas");
    let available = int("/status/availableReplicas");
    let waiting = |what: String| {
        RolloutState::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {what}..."
        ))
    };
    if updated < wanted {
        return waiting(format!(
            "{updated} out of {wanted} new replicas have been updated"
        ));
    }
    if replicas > updated {
        return waiting(format!(
            "{} old replicas are pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available"
        ));
    }
    RolloutState::Complete(format!("deployment {name:?} successfully rolled out"))
}

/// Polls every 200 ms, printing each new line as it comes.
fn follow_status(
    client: &Client,
    key: &ObjectKey,
    timeout: Duration,
) -> anyhow::Result<(Printed, bool)> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut out = std::io::stdout().lock();
    loop {
        let deployment = client
            .get(key)
            .map_err(|e: ClientError| anyhow::anyhow!(e))?;
        let state = rollout_state(&deployment);
        let line = match &state {
            RolloutState::Waiting(l) | RolloutState::Complete(l) => l.clone(),
            RolloutState::Failed(l) => {
                return Ok((
                    Printed {
                        stdout: String::new(),
                        stderr: format!("error: {l}\n"),
                    },
                    false,
                ));
            }
        };
        if line != last {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            last = line;
        }
        if matches!(state, RolloutState::Complete(_)) {
            return Ok((Printed::default(), true));
        }
        if Instant::now() >= deadline {
            return Ok((
                Printed {
                    stdout: String::new(),
                    stderr: format!(
                        "error: timed out waiting for the condition (deployment {:?}, {}s)\n",
                        key.name,
                        timeout.as_secs()
                    ),
                },
                false,
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
