//! `tend label nodes NODE key=value... | key-...`: node labels live in the control plane, not
//! in the source (like kubectl); the Node is read, changed and replaced with its
//! resourceVersion, so a concurrent change makes the command fail rather than be lost.

use super::Printed;
use super::client::Client;
use crate::api::{Kind, ObjectKey};
use anyhow::bail;
use serde_json::{Map, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct LabelArgs {
    /// Only `nodes` (`node`, `no`).
    pub kind: String,
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub changes: Vec<String>,
    /// Allow changing the value of a label that is already set.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

pub fn parse_change(text: &str) -> anyhow::Result<LabelChange> {
    if let Some(key) = text.strip_suffix('-')
        && !key.contains('=')
        && !key.is_empty()
    {
        return Ok(LabelChange::Remove(key.to_string()));
    }
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(LabelChange::Set(k.to_string(), v.to_string())),
        _ => bail!("invalid label {text:?}: use key=value to set or key- to remove"),
    }
}

/// The labels after `changes`; refuses to change an existing value without `overwrite`.
pub fn apply_changes(
    labels: &Map<String, Value>,
    changes: &[LabelChange],
    overwrite: bool,
) -> anyhow::Result<Map<String, Value>> {
    let mut out = labels.clone();
    for change in changes {
        match change {
            LabelChange::Set(k, v) => {
                if let Some(old) = out.get(k).and_then(Value::as_str)
                    && old != v
                    && !overwrite
                {
                    bail!("'{k}' already has a value ({old}), and --overwrite is false");
                }
                out.insert(k.clone(), Value::String(v.clone()));
            }
            LabelChange::Remove(k) => {
                out.remove(k);
            }
        }
    }
    Ok(out)
}

pub fn run(args: LabelArgs, client: &Client) -> anyhow::Result<Printed> {
    if super::parse_kind(&args.kind)? != Kind::Node {
        bail!("tend label changes nodes only (labels of workloads live in the source)");
    }
    let changes = args
        .changes
        .iter()
        .map(|c| parse_change(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key = ObjectKey::new(Kind::Node, "", &args.name);
    let mut node = client.get(&key)?;
    let labels = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let updated = apply_changes(&labels, &changes, args.overwrite)?;
    if let Some(Value::Object(meta)) = node.get_mut("metadata") {
        meta.insert("labels".into(), Value::Object(updated));
    }
    client.put_json(&key.path(), &node)?;
    Ok(Printed {
        stdout: format!("node/{} labeled\n", args.name),
        stderr: String::new(),
    })
}
