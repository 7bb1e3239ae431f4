//! In-place edits of one object's manifest (`scale`, `rollout pause|resume|undo`): only the
//! lines that carry the changed field are rewritten, so comments, key order, quoting, line
//! endings and the other documents of the file stay byte-identical. Every result is parsed
//! again and compared with the intended object before it is handed back: an edit either
//! produces exactly the intended object or fails, never a corrupted file.

use super::positions::{Pos, field};
use super::{Limits, defaults, load_file, yaml};
use crate::api::{Kind, ObjectKey};
use crate::source::write::Edit;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The file does not hold the object (or does not parse any more).
    #[error("{key} is not in this file{detail}")]
    NotFound { key: String, detail: String },
    /// The manifest is written in a way tend does not rewrite safely (flow style, anchors...).
    #[error(
        "cannot edit {field} of {key} in place at line {line}: {reason}; edit the file by hand"
    )]
    Unsupported {
        key: String,
        field: String,
        line: usize,
        reason: String,
    },
    /// The edited text did not parse back into the intended object.
    #[error("editing {key} would not give the intended object: {reason}")]
    Unverified { key: String, reason: String },
}

/// Applies `edit` to the document of `key` in `file_text`. Returns the text unchanged when the
/// object already has the intended value.
pub fn apply_edit(file_text: &str, key: &ObjectKey, edit: &Edit) -> Result<String, EditError> {
    let shown = format!("{}/{}", key.kind.name().to_ascii_lowercase(), key.name);
    let before = find_object(file_text, key, &shown)?;
    let reading = yaml::read(file_text, &Limits::default());
    let Some(doc) = reading
        .documents
        .iter()
        .find(|d| d.start.line == before.line)
    else {
        return Err(not_found(&shown, " (its document was not found again)"));
    };
    let lines = Lines::new(file_text);
    let doc_end = lines.document_end(before.line.saturating_sub(1));
    let ctx = DocContext {
        lines: &lines,
        doc_end,
        shown: &shown,
    };
    let spec_pos = doc
        .positions
        .get("spec")
        .ok_or_else(|| not_found(&shown, " (it has no spec)"))?;
    let spec = ctx.block_key(spec_pos, "spec")?;

    let mut expected = before.object.clone();
    let edited = match edit {
        Edit::SetReplicas(n) => {
            set_spec_field(&mut expected, "replicas", json!(n));
            ctx.set_scalar(
                doc.positions.get("spec.replicas"),
                &spec,
                "replicas",
                &n.to_string(),
            )?
        }
        Edit::SetPaused(true) => {
            set_spec_field(&mut expected, "paused", json!(true));
            ctx.set_scalar(doc.positions.get("spec.paused"), &spec, "paused", "true")?
        }
        Edit::SetPaused(false) => {
            set_spec_field(&mut expected, "paused", json!(false));
            match doc.positions.get("spec.paused") {
                Some(pos) => ctx.remove_entry(pos, "paused")?,
                None => return Ok(file_text.to_string()),
            }
        }
        Edit::SetTemplate(template) => {
            let wanted = defaulted_template(template);
            if before.object.pointer("/spec/template") == Some(&wanted) {
                return Ok(file_text.to_string());
            }
            set_spec_field(&mut expected, "template", wanted);
            let pos = doc
                .positions
                .get("spec.template")
                .ok_or_else(|| not_found(&shown, " (it has no spec.template)"))?;
            // Keys keep the order they were written in; new keys follow, sorted.
            let written_at = |path: &str| doc.positions.get(path).map(|p| p.line);
            let order = KeyOrder {
                base: "spec.template".to_string(),
                written_at: &written_at,
            };
            let written = |path: &str| doc.positions.get(path).is_some();
            ctx.replace_block(
                pos,
                "template",
                &minimal_template(template, &written),
                &order,
            )?
        }
    };
    verify(&edited, key, &shown, &expected)?;
    Ok(edited)
}

/// The pod template as the defaulted Deployment carries it (what a ReplicaSet stores).
pub fn defaulted_template(template: &Value) -> Value {
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "template"},
        "spec": {"template": template},
    });
    defaults::apply(Kind::Deployment, &mut deployment);
    deployment
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null)
}

/// The template without the fields defaulting would fill in again: a rollback writes what a
/// person would have written, not every default the control plane added. A field the file
/// already spells out (`written`, by its path under `spec.template`) stays, even when it
/// only repeats a default.
fn minimal_template(template: &Value, written: &dyn Fn(&str) -> bool) -> Value {
    let target = defaulted_template(template);
    let mut current = template.clone();
    prune(&mut current, &mut Vec::new(), &target, written);
    current
}

/// The position-map path of `path` under the template: `spec.template.spec.containers[0].image`.
fn field_path(path: &[PathStep]) -> String {
    let mut out = String::from("spec.template");
    for step in path {
        match step {
            PathStep::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            PathStep::Item(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Removes, deepest first, each mapping field whose absence defaults back to `target`, unless
/// the file writes it.
fn prune(
    root: &mut Value,
    path: &mut Vec<PathStep>,
    target: &Value,
    written: &dyn Fn(&str) -> bool,
) {
    let Some(node) = walk(root, path).cloned() else {
        return;
    };
    match node {
        Value::Object(map) => {
            for field in map.keys() {
                path.push(PathStep::Field(field.clone()));
                prune(root, path, target, written);
                let spelled_out = written(&field_path(path));
                path.pop();
                if spelled_out {
                    continue;
                }
                let mut candidate = root.clone();
                if let Some(Value::Object(parent)) = walk_mut(&mut candidate, path) {
                    parent.remove(field);
                }
                if defaulted_template(&candidate) == *target {
                    *root = candidate;
                }
            }
        }
        Value::Array(items) => {
            for index in 0..items.len() {
                path.push(PathStep::Item(index));
                prune(root, path, target, written);
                path.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Field(String),
    Item(usize),
}

fn walk<'v>(value: &'v Value, path: &[PathStep]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, step| match step {
        PathStep::Field(f) => v.get(f),
        PathStep::Item(i) => v.get(i),
    })
}

fn walk_mut<'v>(value: &'v mut Value, path: &[PathStep]) -> Option<&'v mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        PathStep::Field(f) => v.get_mut(f),
        PathStep::Item(i) => v.get_mut(i),
    })
}

fn set_spec_field(object: &mut Value, field: &str, value: Value) {
    if let Some(Value::Object(spec)) = object.get_mut("spec") {
        spec.insert(field.to_string(), value);
    }
}

fn not_found(shown: &str, detail: &str) -> EditError {
    EditError::NotFound {
        key: shown.to_string(),
        detail: detail.to_string(),
    }
}

struct Found {
    line: usize,
    object: Value,
}

fn find_object(text: &str, key: &ObjectKey, shown: &str) -> Result<Found, EditError> {
    let parsed = load_file("manifest", text.as_bytes(), &Limits::default());
    match parsed.objects.into_iter().find(|o| o.key == *key) {
        Some(o) => Ok(Found {
            line: o.line,
            object: without_paused_false(o.object),
        }),
        None => {
            let detail = parsed
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            Err(not_found(shown, &detail))
        }
    }
}

/// `paused: false` and no `paused` mean the same; compare them as equal.
fn without_paused_false(mut object: Value) -> Value {
    if let Some(Value::Object(spec)) = object.get_mut("spec")
        && spec.get("paused") == Some(&Value::Bool(false))
    {
        spec.remove("paused");
    }
    object
}

fn verify(text: &str, key: &ObjectKey, shown: &str, expected: &Value) -> Result<(), EditError> {
    let unverified = |reason: String| EditError::Unverified {
        key: shown.to_string(),
        reason,
    };
    let after = find_object(text, key, shown).map_err(|e| unverified(e.to_string()))?;
    if after.object != without_paused_false(expected.clone()) {
        return Err(unverified(
            "the file reads back differently than intended".into(),
        ));
    }
    Ok(())
}

/// The file's lines, each with its own line ending.
struct Lines<'t> {
    lines: Vec<&'t str>,
    eol: &'static str,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let eol = if lines.first().is_some_and(|l| l.ends_with("\r\n")) {
            "\r\n"
        } else {
            "\n"
        };
        Lines { lines, eol }
    }

    fn content(&self, index: usize) -> &'t str {
        self.lines
            .get(index)
            .map(|l| l.trim_end_matches('\n').trim_end_matches('\r'))
            .unwrap_or("")
    }

    /// The index after the last line of the document that starts at line index `start`.
    fn document_end(&self, start: usize) -> usize {
        (start + 1..self.lines.len())
            .find(|&i| is_document_marker(self.content(i)))
            .unwrap_or(self.lines.len())
    }

    fn join(&self, before: usize, middle: &str, after: usize) -> String {
        let mut out = String::new();
        for l in &self.lines[..before] {
            out.push_str(l);
        }
        out.push_str(middle);
        for l in &self.lines[after.min(self.lines.len())..] {
            out.push_str(l);
        }
        out
    }
}

fn is_document_marker(line: &str) -> bool {
    ["---", "..."].iter().any(|m| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    })
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// A block-style `key:` line: where it is and how deep.
struct BlockKey {
    line: usize,
    indent: usize,
}

struct DocContext<'a, 't> {
    lines: &'a Lines<'t>,
    doc_end: usize,
    shown: &'a str,
}

impl DocContext<'_, '_> {
    fn unsupported(&self, field: &str, line: usize, reason: &str) -> EditError {
        EditError::Unsupported {
            key: self.shown.to_string(),
            field: field.to_string(),
            line: line + 1,
            reason: reason.to_string(),
        }
    }

    /// The key at `pos` and the byte offset just after its `:`; the key must start its line.
    fn key_at(&self, pos: Pos, field: &str) -> Result<(usize, usize), EditError> {
        let index = pos.line.saturating_sub(1);
        let line = self.lines.content(index);
        // The parser's column counts characters; slicing needs the byte offset.
        let column = pos.column.saturating_sub(1);
        let start = line
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(line.len()))
            .nth(column);
        let Some(start) = start.filter(|&s| line[..s].trim().is_empty()) else {
            return Err(self.unsupported(
                field,
                index,
                "the key does not start its line (flow style?)",
            ));
        };
        let rest = &line[start..];
        let key_len = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].find(q).map(|i| i + 2),
            _ => rest.find(':'),
        }
        .ok_or_else(|| self.unsupported(field, index, "no `key:` found"))?;
        let after_key = &rest[key_len..];
        let colon = after_key
            .find(':')
            .filter(|&i| after_key[..i].trim().is_empty())
            .ok_or_else(|| self.unsupported(field, index, "no `key:` found"))?;
        Ok((index, start + key_len + colon + 1))
    }

    /// A `key:` whose value is a block on the following lines (no flow `{...}` or anchors).
    fn block_key(&self, pos: Pos, field: &str) -> Result<BlockKey, EditError> {
        let (index, after) = self.key_at(pos, field)?;
        let line = self.lines.content(index);
        if !is_blank_or_comment(&line[after..]) {
            return Err(self.unsupported(
                field,
                index,
                "its value is not a block mapping (flow style, anchor or tag)",
            ));
        }
        Ok(BlockKey {
            line: index,
            indent: indent_of(line),
        })
    }

    /// The first line after `key` with content, and its indentation, when it is deeper.
    fn child_indent(&self, key: &BlockKey) -> Option<usize> {
        (key.line + 1..self.doc_end)
            .map(|i| self.lines.content(i))
            .find(|l| !is_blank_or_comment(l))
            .map(indent_of)
            .filter(|&i| i > key.indent)
    }

    /// Sets the scalar of `field` (at `pos`, or inserted first under `parent`), keeping its
    /// quotes and any trailing comment.
    fn set_scalar(
        &self,
        pos: Option<Pos>,
        parent: &BlockKey,
        field: &str,
        value: &str,
    ) -> Result<String, EditError> {
        let Some(pos) = pos else {
            let indent = self.child_indent(parent).ok_or_else(|| {
                self.unsupported(
                    field,
                    parent.line,
                    "cannot tell the indentation of its fields",
                )
            })?;
            let inserted = format!("{}{field}: {value}{}", " ".repeat(indent), self.lines.eol);
            let after = parent.line + 1;
            return Ok(self.lines.join(after, &inserted, after));
        };
        let (index, after) = self.key_at(pos, field)?;
        let line = self.lines.content(index);
        let rest = &line[after..];
        let skipped = rest.len() - rest.trim_start().len();
        let value_start = after + skipped;
        let token = &line[value_start..];
        let (inner_start, inner_end) = match token.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let close = token[1..]
                    .find(q)
                    .ok_or_else(|| self.unsupported(field, index, "unterminated quoted value"))?;
                (value_start + 1, value_start + 1 + close)
            }
            Some(c) if !"{[&*!|>#".contains(c) => {
                let end = token.find(" #").unwrap_or(token.len());
                (value_start, value_start + token[..end].trim_end().len())
            }
            _ => {
                return Err(self.unsupported(
                    field,
                    index,
                    "its value is not a plain scalar on the key's line",
                ));
            }
        };
        let ending = &self.lines.lines[index][line.len()..];
        let new_line = format!(
            "{}{value}{}{ending}",
            &line[..inner_start],
            &line[inner_end..]
        );
        Ok(self.lines.join(index, &new_line, index + 1))
    }

    /// Removes the line of a scalar entry.
    fn remove_entry(&self, pos: Pos, field: &str) -> Result<String, EditError> {
        let (index, _) = self.key_at(pos, field)?;
        if self
            .child_indent(&BlockKey {
                line: index,
                indent: indent_of(self.lines.content(index)),
            })
            .is_some()
        {
            return Err(self.unsupported(field, index, "its value spans several lines"));
        }
        Ok(self.lines.join(index, "", index + 1))
    }

    /// Replaces the block under the key at `pos` with `value` rendered as block YAML, at the
    /// block's own indentation and list style.
    fn replace_block(
        &self,
        pos: Pos,
        field: &str,
        value: &Value,
        order: &KeyOrder<'_>,
    ) -> Result<String, EditError> {
        let key = self.block_key(pos, field)?;
        let mut end = (key.line + 1..self.doc_end)
            .find(|&i| {
                let l = self.lines.content(i);
                !is_blank_or_comment(l) && indent_of(l) <= key.indent
            })
            .unwrap_or(self.doc_end);
        // Comments and blank lines after the block belong to what follows it.
        while end > key.line + 1 && is_blank_or_comment(self.lines.content(end - 1)) {
            end -= 1;
        }
        let unit = self.child_indent(&key).map(|i| i - key.indent).unwrap_or(2);
        let style = Style {
            unit,
            indented_lists: self.lists_are_indented(key.line + 1, end),
            eol: self.lines.eol,
            order,
        };
        let mut rendered = String::new();
        let Value::Object(map) = value else {
            return Err(self.unsupported(field, key.line, "the new value is not a mapping"));
        };
        render_map(map, &order.base, key.indent + unit, &style, &mut rendered);
        Ok(self.lines.join(key.line + 1, &rendered, end))
    }

    /// Whether `- ` items sit deeper than their key (`  - a`) or level with it (`- a`).
    fn lists_are_indented(&self, from: usize, to: usize) -> bool {
        let mut previous: Option<&str> = None;
        for i in from..to {
            let l = self.lines.content(i);
            if is_blank_or_comment(l) {
                continue;
            }
            if l.trim_start().starts_with('-')
                && let Some(p) = previous
                && p.trim_end().ends_with(':')
            {
                return indent_of(l) > indent_of(p);
            }
            previous = Some(l);
        }
        true
    }
}

/// Where each field path was written in the old document (its line), if it was.
struct KeyOrder<'a> {
    base: String,
    written_at: &'a dyn Fn(&str) -> Option<usize>,
}

struct Style<'a> {
    unit: usize,
    indented_lists: bool,
    eol: &'static str,
    order: &'a KeyOrder<'a>,
}

fn render_map(
    map: &Map<String, Value>,
    path: &str,
    indent: usize,
    style: &Style,
    out: &mut String,
) {
    let mut keys: Vec<(Option<usize>, &String, &Value)> = map
        .iter()
        .map(|(k, v)| ((style.order.written_at)(&field(path, k)), k, v))
        .collect();
    keys.sort_by_key(|(line, k, _)| (line.is_none(), *line, *k));
    for (_, key, value) in keys {
        out.push_str(&" ".repeat(indent));
        out.push_str(&scalar_text(key));
        out.push(':');
        render_after_key(value, &field(path, key), indent, style, out);
    }
}

fn render_after_key(value: &Value, path: &str, indent: usize, style: &Style, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push_str(style.eol);
            render_map(m, path, indent + style.unit, style, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str(style.eol);
            let at = if style.indented_lists {
                indent + style.unit
            } else {
                indent
            };
            render_list(items, path, at, style, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&value_text(scalar));
            out.push_str(style.eol);
        }
    }
}

fn render_list(items: &[Value], path: &str, indent: usize, style: &Style, out: &mut String) {
    for (index, item) in items.iter().enumerate() {
        let path = format!("{path}[{index}]");
        match item {
            Value::Object(m) if !m.is_empty() => {
                let mut nested = String::new();
                render_map(m, &path, indent + 2, style, &mut nested);
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&nested[indent + 2..]);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                out.push_str(style.eol);
                render_list(inner, &path, indent + 2, style, out);
            }
            scalar => {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&value_text(scalar));
                out.push_str(style.eol);
            }
        }
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_text(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

/// A string as a plain scalar when YAML would read it back as the same string, else
/// double-quoted (JSON's escapes are valid YAML).
fn scalar_text(s: &str) -> String {
    if plain_is_safe(s) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
    }
}

fn plain_is_safe(s: &str) -> bool {
    const RESERVED: [&str; 14] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "nan", "inf", ".nan",
        ".inf",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    !(s.trim() != s
        || "-?:,[]{}#&*!|>'\"%@`+.".contains(first)
        || first.is_ascii_digit()
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.chars().any(char::is_control)
        || RESERVED.contains(&s.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::Deployment, "default", "web")
    }

    const WEB: &str = "# the web tier\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3 # three\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.25\n";

    #[test]
    fn replicas_only_that_scalar() {
        let out = apply_edit(WEB, &key(), &Edit::SetReplicas(5)).unwrap();
        assert_eq!(
            out,
            WEB.replace("replicas: 3 # three", "replicas: 5 # three")
        );
    }

    #[test]
    fn plain_scalars() {
        assert_eq!(scalar_text("nginx:1.25"), "nginx:1.25");
        assert_eq!(scalar_text("80"), "\"80\"");
        assert_eq!(scalar_text("yes"), "\"yes\"");
        assert_eq!(scalar_text("a: b"), "\"a: b\"");
    }
}
