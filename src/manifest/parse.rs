//! One file -> objects: limits, YAML documents, kinds and apiVersions, legacy conversion,
//! the typed check against the Kubernetes schema, then defaults and validation.

use super::positions::{Pos, Positions, field, item};
use super::yaml::{self, Document};
use super::{DesiredObject, Diagnostic, Limits, ParsedFile, defaults, limits, validate};
use crate::api::{Kind, ObjectKey};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde_json::{Map, Value};

/// apiVersions of Deployments that are converted to `apps/v1`.
pub const LEGACY_DEPLOYMENT_VERSIONS: [&str; 3] =
    ["extensions/v1beta1", "apps/v1beta1", "apps/v1beta2"];

/// Collects the diagnostics of one document, placed by field path.
pub struct Report<'a> {
    pub file: &'a str,
    pub positions: &'a Positions,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub fn new(file: &'a str, positions: &'a Positions) -> Self {
        Report {
            file,
            positions,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diagnostic(&self, path: &str, message: String) -> Diagnostic {
        let pos = self.positions.lookup(path);
        Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message,
        }
    }

    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(path, message.into());
        self.errors.push(d);
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        let d = self.diagnostic(path, message.into());
        self.warnings.push(d);
    }
}

fn file_diagnostic(file: &str, pos: Pos, path: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        path: path.to_string(),
        message,
    }
}

/// Parses, converts, defaults and validates one file. Never panics on any input.
pub fn load_file(file: &str, bytes: &[u8], limits: &Limits) -> ParsedFile {
    // The reader is written not to panic; this is a last line of defence so that one
    // hostile file can never take the control plane down.
    match std::panic::catch_unwind(|| load_file_inner(file, bytes, limits)) {
        Ok(parsed) => parsed,
        Err(_) => ParsedFile {
            errors: vec![file_diagnostic(
                file,
                Pos::default(),
                "",
                "internal error while reading this file; please report it".to_string(),
            )],
            ..ParsedFile::default()
        },
    }
}

fn load_file_inner(file: &str, bytes: &[u8], limits: &Limits) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let text = match limits::check_bytes(bytes, limits) {
        Ok(text) => text,
        Err(message) => {
            parsed
                .errors
                .push(file_diagnostic(file, Pos::default(), "", message));
            return parsed;
        }
    };
    let read = yaml::read(text, limits);
    for e in read.errors {
        parsed
            .errors
            .push(file_diagnostic(file, e.pos, &e.path, e.message));
    }
    // A file that stopped early (syntax error, limit) is rejected as a whole: its one
    // clear error is not buried under complaints about the documents before it.
    if !read.fatal {
        for doc in read.documents {
            load_document(file, text, doc, &mut parsed);
        }
    }
    parsed
        .errors
        .sort_by_key(|d| (d.line == 0, d.line, d.column));
    parsed
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Fields a Kubernetes object has at its top level.
const TOP_LEVEL_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

fn load_document(file: &str, text: &str, mut doc: Document, parsed: &mut ParsedFile) {
    let value = std::mem::take(&mut doc.value);
    let mut report = Report::new(file, &doc.positions);
    if let Some(object) = check_document(text, value, &mut report)
        && object_size_ok(&object.1, &mut report)
    {
        parsed.objects.push(DesiredObject {
            key: object.0,
            file: file.to_string(),
            line: doc.start.line,
            object: object.1,
        });
    }
    parsed.errors.extend(report.errors);
    parsed.warnings.extend(report.warnings);
}

/// The largest object, as JSON, that is accepted: etcd's default request limit, which is
/// what bounds a Kubernetes object. Every object is copied into ReplicaSets, pods, watch events
/// and agents; one of a few megabytes (100,000 env entries) would be copied everywhere.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

fn object_size_ok(object: &Value, report: &mut Report) -> bool {
    let size = serde_json::to_vec(object).map_or(usize::MAX, |v| v.len());
    if size > MAX_OBJECT_BYTES {
        report.error(
            "",
            format!(
                "the object is {size} bytes as JSON, more than the limit of {MAX_OBJECT_BYTES} \
                 bytes (as Kubernetes' etcd)"
            ),
        );
        return false;
    }
    true
}

fn check_document(text: &str, value: Value, report: &mut Report) -> Option<(ObjectKey, Value)> {
    let Value::Object(top) = &value else {
        report.error(
            "",
            format!(
                "a document must be a mapping with `apiVersion` and `kind`, found {}",
                describe(&value)
            ),
        );
        return None;
    };
    let kind = top.get("kind").and_then(Value::as_str);
    let managed =
        |k: &str| ["deployment", "service", "endpoints"].contains(&k.to_ascii_lowercase().as_str());
    if let Some(k) = kind
        && !managed(k)
    {
        report.warn(
            "kind",
            format!(
                "kind {k} is not managed by tend (only Deployment, Service and Endpoints); skipped"
            ),
        );
        return None;
    }
    let errors_before = report.errors.len();
    check_unindented(top, report);
    let api_version = required_string(top, "apiVersion", text, report);
    let kind = required_string(top, "kind", text, report);
    if report.errors.len() > errors_before {
        return None;
    }
    let (api_version, kind) = (api_version?.to_string(), kind?.to_string());
    let api_version = api_version.as_str();
    let mut object = value;
    let kind = match kind.as_str() {
        "Deployment" => {
            if LEGACY_DEPLOYMENT_VERSIONS.contains(&api_version) {
                convert_legacy_deployment(&mut object, api_version, report);
            } else if api_version != "apps/v1" {
                report.error(
                    "apiVersion",
                    format!(
                        "Deployment needs apiVersion apps/v1 (or legacy extensions/v1beta1, \
                         apps/v1beta1, apps/v1beta2), not {api_version}"
                    ),
                );
                return None;
            }
            Kind::Deployment
        }
        "Service" => {
            if api_version != "v1" {
                report.error(
                    "apiVersion",
                    format!("Service needs apiVersion v1, not {api_version}"),
                );
                return None;
            }
            Kind::Service
        }
        // The endpoints of a Service without a selector (an outside database, say).
        "Endpoints" => {
            if api_version != "v1" {
                report.error(
                    "apiVersion",
                    format!("Endpoints needs apiVersion v1, not {api_version}"),
                );
                return None;
            }
            Kind::Endpoints
        }
        other => {
            let suggestion = if other.eq_ignore_ascii_case("deployment") {
                "Deployment"
            } else if other.eq_ignore_ascii_case("endpoints") {
                "Endpoints"
            } else {
                "Service"
            };
            report.error(
                "kind",
                format!(
                    "unknown kind {other}: did you mean {suggestion}? (kinds are case-sensitive)"
                ),
            );
            return None;
        }
    };
    let typed = match kind {
        Kind::Deployment => typed_round_trip::<Deployment>(&object, report),
        Kind::Endpoints => typed_round_trip::<Endpoints>(&object, report),
        _ => typed_round_trip::<Service>(&object, report),
    }?;
    report_unknown_fields(&object, &typed, "", report);
    let mut object = keep_desired_fields(typed);
    defaults::apply(kind, &mut object);
    let errors_before = report.errors.len();
    validate::validate_object(kind, &object, report);
    if report.errors.len() > errors_before {
        return None;
    }
    let key = ObjectKey::of(&object)?;
    Some((key, object))
}

/// A string field every object needs, with a hint when it is misspelled or lost.
fn required_string<'v>(
    top: &'v Map<String, Value>,
    name: &str,
    text: &str,
    report: &mut Report,
) -> Option<&'v str> {
    match top.get(name) {
        Some(Value::String(s)) if !s.is_empty() => return Some(s),
        Some(other) => {
            report.error(
                name,
                format!(
                    "`{name}` must be a non-empty string, found {}",
                    describe(other)
                ),
            );
            return None;
        }
        None => {}
    }
    let mut message = format!("the document has no `{name}`");
    if let Some(similar) = top
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name) || k.trim() == name)
    {
        message.push_str(&format!(
            " (found `{similar}`: field names are case-sensitive and take no spaces)"
        ));
    } else if let Some(flattened) = flattened_line(top, text, report) {
        message.push_str(&format!(
            "; line {flattened} holds more fields after a `#`: the YAML looks flattened onto \
             one line and everything after `#` is a comment; put each field on its own line"
        ));
    }
    report.error("", message);
    None
}

/// The line of a field whose source line goes on with `# ... key: value` text.
fn flattened_line(top: &Map<String, Value>, text: &str, report: &Report) -> Option<usize> {
    top.keys().find_map(|key| {
        let pos = report.positions.get(key)?;
        let line = text.lines().nth(pos.line.checked_sub(1)?)?;
        let (_, comment) = line.split_once(" #")?;
        (comment.contains(": ") || comment.contains(":")).then_some(pos.line)
    })
}

/// Seed 003's failure: a parent written with no fields (`metadata:`) followed by its
/// fields at the top level.
fn check_unindented(top: &Map<String, Value>, report: &mut Report) {
    let empty_parent = TOP_LEVEL_FIELDS[2..]
        .iter()
        .find(|name| top.get(**name).is_some_and(Value::is_null));
    let stray = top
        .keys()
        .filter(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str()))
        .filter_map(|k| Some((report.positions.get(k)?, k.clone())))
        .min_by_key(|(pos, _)| pos.line);
    let (Some(parent), Some((pos, stray))) = (empty_parent, stray) else {
        // Other stray fields are reported as unknown fields.
        return;
    };
    let parent_line = report.positions.lookup(parent).line;
    report.error(
        &stray,
        format!(
            "`{parent}` (line {parent_line}) has no fields and `{stray}` at line {} is a \
             top-level field: the mapping looks unindented; indent the fields of `{parent}` \
             under it",
            pos.line
        ),
    );
}

/// `extensions/v1beta1`, `apps/v1beta1`, `apps/v1beta2` -> `apps/v1`; those versions
/// defaulted the selector to the template's labels.
fn convert_legacy_deployment(object: &mut Value, from: &str, report: &mut Report) {
    report.warn(
        "apiVersion",
        format!("converted {from} Deployment to apps/v1"),
    );
    object["apiVersion"] = Value::from("apps/v1");
    let has_selector = object
        .pointer("/spec/selector")
        .is_some_and(|s| !s.is_null());
    let labels = object.pointer("/spec/template/metadata/labels").cloned();
    if !has_selector
        && let Some(labels @ Value::Object(_)) = labels
        && let Some(Value::Object(spec)) = object.get_mut("spec")
    {
        let mut selector = Map::new();
        selector.insert("matchLabels".to_string(), labels);
        spec.insert("selector".to_string(), Value::Object(selector));
    }
}

/// Deserializes into the Kubernetes type (type errors name the field) and serializes
/// back: what comes out is the object as Kubernetes understands it.
fn typed_round_trip<T>(object: &Value, report: &mut Report) -> Option<Value>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    // The plain deserializer is twice as fast; the path-tracking one runs only to
    // explain an error.
    let typed = match T::deserialize(object) {
        Ok(typed) => Ok(typed),
        Err(_) => serde_path_to_error::deserialize::<_, T>(object),
    };
    match typed {
        Ok(typed) => match serde_json::to_value(&typed) {
            Ok(value) => Some(value),
            Err(e) => {
                report.error("", format!("cannot re-encode the object: {e}"));
                None
            }
        },
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = type_error_message(object, &path, &e.inner().to_string());
            report.error(&path, message);
            None
        }
    }
}

/// serde's message, made plainer for integers out of range.
fn type_error_message(object: &Value, path: &str, message: &str) -> String {
    let value = lookup(object, path);
    let is_number = value.is_some_and(Value::is_number);
    if is_number && message.ends_with("expected i32") {
        let shown = value.map(Value::to_string).unwrap_or_default();
        return format!(
            "{shown} is out of range: it must be an integer from -2147483648 to 2147483647"
        );
    }
    if is_number && message.ends_with("expected i64") {
        return "integer out of range for a 64-bit field".to_string();
    }
    message.to_string()
}

/// The value at a path written as serde_path_to_error prints it.
fn lookup<'v>(object: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = object;
    if path.is_empty() {
        return Some(current);
    }
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            current = current.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            current = current.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(current)
}

/// Fields given in the file that the typed round trip dropped are unknown to Kubernetes.
fn report_unknown_fields(input: &Value, typed: &Value, path: &str, report: &mut Report) {
    match (input, typed) {
        (Value::Object(given), Value::Object(known)) => {
            for (key, value) in given {
                if value.is_null() || (path.is_empty() && key == "status") {
                    continue;
                }
                let child = field(path, key);
                match known.get(key) {
                    Some(known) => report_unknown_fields(value, known, &child, report),
                    None => report.warn(&child, "unknown field"),
                }
            }
        }
        (Value::Array(given), Value::Array(known)) => {
            for (i, (value, known)) in given.iter().zip(known).enumerate() {
                report_unknown_fields(value, known, &item(path, i), report);
            }
        }
        _ => {}
    }
}

/// apiVersion, kind, metadata (name, namespace, labels, annotations) and spec; the
/// fields the cluster sets (status, uid, resourceVersion, ...) are not desired state.
fn keep_desired_fields(typed: Value) -> Value {
    let Value::Object(mut top) = typed else {
        return typed;
    };
    let mut out = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = top.remove(key) {
            out.insert(key.to_string(), v);
        }
    }
    let mut metadata = Map::new();
    if let Some(Value::Object(mut given)) = top.remove("metadata") {
        for key in ["name", "namespace", "labels", "annotations"] {
            if let Some(v) = given.remove(key) {
                metadata.insert(key.to_string(), v);
            }
        }
    }
    out.insert("metadata".to_string(), Value::Object(metadata));
    // Endpoints carry their content at the top level, not in a spec.
    for key in ["spec", "subsets"] {
        if let Some(v) = top.remove(key) {
            out.insert(key.to_string(), v);
        }
    }
    Value::Object(out)
}
