//! Label selectors: the `-l` / `?labelSelector=` syntax (equality and set-based) and matching.

use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid label selector {input:?}: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let err = |reason: &str| SelectorError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let mut reqs = Vec::new();
        for term in split_terms(input) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(valid_key(key.trim()).map_err(|r| err(&r))?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(
                    valid_key(k.trim()).map_err(|r| err(&r))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(
                    valid_key(k.trim()).map_err(|r| err(&r))?,
                    v.trim().to_string(),
                )
            } else if let Some((k, rest)) = split_set_op(term, " notin ") {
                Requirement::NotIn(
                    valid_key(k).map_err(|r| err(&r))?,
                    set_values(rest).map_err(|r| err(&r))?,
                )
            } else if let Some((k, rest)) = split_set_op(term, " in ") {
                Requirement::In(
                    valid_key(k).map_err(|r| err(&r))?,
                    set_values(rest).map_err(|r| err(&r))?,
                )
            } else {
                Requirement::Exists(valid_key(term).map_err(|r| err(&r))?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    /// A selector requiring every pair of `labels` (a Kubernetes `matchLabels`).
    pub fn from_labels(labels: &Map<String, Value>) -> Selector {
        Selector(
            labels
                .iter()
                .map(|(k, v)| {
                    Requirement::Equals(k.clone(), v.as_str().unwrap_or_default().to_string())
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.matches_by(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// [`Selector::matches`] on labels looked up by `get` (a label that is not a string
    /// counts as absent).
    pub fn matches_by<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(input: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&input[start..]);
    out
}

fn split_set_op<'a>(term: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let i = term.find(op)?;
    Some((term[..i].trim(), term[i + op.len()..].trim()))
}

fn set_values(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list of values, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn valid_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("empty label key".into());
    }
    if key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
    {
        return Err(format!(
            "label key {key:?} has characters other than letters, digits, '-', '_', '.', '/'"
        ));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_matches_equality_and_sets() {
        let labels = json!({"app": "web", "tier": "front"});
        let labels = labels.as_object();
        assert!(Selector::parse("app=web").unwrap().matches(labels));
        assert!(Selector::parse("app==web,tier").unwrap().matches(labels));
        assert!(!Selector::parse("app!=web").unwrap().matches(labels));
        assert!(
            Selector::parse("tier in (front, back)")
                .unwrap()
                .matches(labels)
        );
        assert!(
            !Selector::parse("tier notin (front)")
                .unwrap()
                .matches(labels)
        );
        assert!(Selector::parse("!missing").unwrap().matches(labels));
        assert!(!Selector::parse("missing").unwrap().matches(labels));
        assert!(Selector::parse("").unwrap().matches(None));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Selector::parse("a b=c").is_err());
        assert!(Selector::parse("x in y").is_err());
    }
}
