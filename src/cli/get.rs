//! `tend get KIND [NAME]`: tables with kubectl's columns, or `-o json|yaml|name`.

use super::client::Client;
use super::columns::{self, TableOptions};
use super::humanize::{Clock, int_at, str_at};
use super::output::{self, OutputFormat};
use super::{Printed, parse_kind};
use crate::api::selector::Selector;
use crate::api::{Kind, ObjectKey};
use anyhow::bail;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// nodes|deployments|replicasets|pods|services|endpoints|events|revisions (or KIND/NAME)
    pub kind: String,
    /// One object; for revisions, any unique prefix of the id.
    pub name: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace (adds a NAMESPACE column).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum)]
    pub output: Option<OutputFormat>,
    /// Adds a LABELS column.
    #[arg(long)]
    pub show_labels: bool,
}

pub fn run(args: GetArgs, client: &Client) -> anyhow::Result<Printed> {
    let (kind, name) = kind_and_name(&args.kind, args.name.as_deref())?;
    if name.is_some() && args.all_namespaces {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    let selector = match &args.selector {
        Some(s) => Selector::parse(s)?,
        None => Selector::default(),
    };
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let objects = match &name {
        Some(name) => vec![fetch_one(
            client,
            kind,
            namespace.unwrap_or("default"),
            name,
        )?],
        None => {
            let mut items = client.list(kind, namespace, &selector.to_string())?;
            // The server filters too; filtering here keeps `-l` right against any server.
            items.retain(|o| {
                selector.matches(o.pointer("/metadata/labels").and_then(Value::as_object))
            });
            sort_for_display(kind, &mut items);
            items
        }
    };
    let mut printed = Printed::default();
    match args.output {
        Some(OutputFormat::Json) => {
            printed.stdout = output::to_json(&output::document(kind, objects, name.is_some()))?;
        }
        Some(OutputFormat::Yaml) => {
            printed.stdout = output::to_yaml(&output::document(kind, objects, name.is_some()))?;
        }
        _ if objects.is_empty() => {
            printed.stderr = if kind.namespaced() && !args.all_namespaces {
                format!("No resources found in {} namespace.\n", args.namespace)
            } else {
                "No resources found\n".to_string()
            };
        }
        Some(OutputFormat::Name) => {
            for obj in &objects {
                printed.stdout.push_str(&output::name_line(kind, obj));
                printed.stdout.push('\n');
            }
        }
        format @ (Some(OutputFormat::Wide) | None) => {
            let opts = TableOptions {
                wide: format.is_some(),
                all_namespaces: args.all_namespaces,
                show_labels: args.show_labels,
            };
            printed.stdout = columns::render(kind, &objects, opts, &Clock::system());
        }
    }
    Ok(printed)
}

/// `KIND` or `KIND/NAME`, checked.
pub fn kind_and_name(kind: &str, name: Option<&str>) -> anyhow::Result<(Kind, Option<String>)> {
    match kind.split_once('/') {
        Some(_) if name.is_some() => {
            bail!("there is no need to give a name when using the form {kind:?}")
        }
        Some((k, n)) if !n.is_empty() => Ok((parse_kind(k)?, Some(n.to_string()))),
        Some(_) => bail!("no name after '/' in {kind:?}"),
        None => Ok((parse_kind(kind)?, name.map(str::to_string))),
    }
}

/// One object by name; revisions by a unique prefix of their id.
pub fn fetch_one(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Value> {
    if kind == Kind::Revision {
        let revisions = client.list(Kind::Revision, None, "")?;
        return Ok(resolve_revision(&revisions, name)?.clone());
    }
    Ok(client.get(&ObjectKey::new(kind, namespace, name))?)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("revision {0:?} not found")]
    NotFound(String),
    #[error("revision prefix {prefix:?} is ambiguous: it matches {}", .matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
}

/// The revision whose id is `prefix` or starts with it (content hashes may be given without
/// their `sha256:`); an exact id always wins.
pub fn resolve_revision<'a>(
    revisions: &'a [Value],
    prefix: &str,
) -> Result<&'a Value, ResolveError> {
    let id = |r: &'a Value| str_at(r, "/metadata/name");
    if let Some(exact) = revisions.iter().find(|r| id(r) == prefix) {
        return Ok(exact);
    }
    let matches: Vec<&Value> = revisions
        .iter()
        .filter(|r| {
            let id = id(r);
            !prefix.is_empty()
                && (id.starts_with(prefix)
                    || id
                        .strip_prefix("sha256:")
                        .is_some_and(|h| h.starts_with(prefix)))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(ResolveError::NotFound(prefix.to_string())),
        many => Err(ResolveError::Ambiguous {
            prefix: prefix.to_string(),
            matches: many
                .iter()
                .map(|r| columns::short_id(id(r)).to_string())
                .collect(),
        }),
    }
}

/// Revisions newest first (like `git log`), events oldest first (like `kubectl events`);
/// other kinds keep the server's order (namespace, name).
pub fn sort_for_display(kind: Kind, items: &mut [Value]) {
    match kind {
        Kind::Revision => items.sort_by_key(|r| std::cmp::Reverse(int_at(r, "/spec/sequence", 0))),
        Kind::Event => {
            items.sort_by(|a, b| columns::event_last_seen(a).cmp(columns::event_last_seen(b)))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn revs() -> Vec<Value> {
        [
            "4f2a9c1e7b3d5a6f",
            "4f2b000000000000",
            "sha256:abcdef0123",
            "abc999",
        ]
        .iter()
        .map(|id| json!({"metadata": {"name": id}}))
        .collect()
    }

    #[test]
    fn revision_prefixes() {
        let revs = revs();
        let name =
            |r: Result<&Value, ResolveError>| r.map(|v| str_at(v, "/metadata/name").to_string());
        assert_eq!(
            name(resolve_revision(&revs, "4f2a")),
            Ok("4f2a9c1e7b3d5a6f".into())
        );
        assert_eq!(
            name(resolve_revision(&revs, "abcd")),
            Ok("sha256:abcdef0123".into())
        );
        assert_eq!(
            name(resolve_revision(&revs, "sha256:ab")),
            Ok("sha256:abcdef0123".into())
        );
        assert_eq!(name(resolve_revision(&revs, "abc999")), Ok("abc999".into()));
        assert_eq!(
            name(resolve_revision(&revs, "4f2")),
            Err(ResolveError::Ambiguous {
                prefix: "4f2".into(),
                matches: vec!["4f2a9c1e7b3d".into(), "4f2b00000000".into()]
            })
        );
        assert_eq!(
            name(resolve_revision(&revs, "ffff")),
            Err(ResolveError::NotFound("ffff".into()))
        );
        assert!(resolve_revision(&revs, "").is_err());
    }

    #[test]
    fn kind_slash_name() {
        assert_eq!(
            kind_and_name("deploy/web", None).unwrap(),
            (Kind::Deployment, Some("web".into()))
        );
        assert_eq!(
            kind_and_name("svc", Some("x")).unwrap(),
            (Kind::Service, Some("x".into()))
        );
        assert!(kind_and_name("deploy/web", Some("x")).is_err());
        assert!(kind_and_name("bogus", None).is_err());
    }

    #[test]
    fn revisions_sort_newest_first() {
        let mut items = vec![
            json!({"spec": {"sequence": 1}}),
            json!({"spec": {"sequence": 3}}),
            json!({"spec": {"sequence": 2}}),
        ];
        sort_for_display(Kind::Revision, &mut items);
        let seqs: Vec<i64> = items
            .iter()
            .map(|r| int_at(r, "/spec/sequence", 0))
            .collect();
        assert_eq!(seqs, [3, 2, 1]);
    }
}
