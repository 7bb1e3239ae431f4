//! YAML text -> one JSON value per document, with the position of every field.
//!
//! The values are built straight from yaml-rust2's events, so the positions and the
//! values come from the same parse, and the limits (depth, aliases, documents,
//! duplicate keys) are enforced while reading, before anything is expanded.

use super::Limits;
use super::positions::{PathHash, Pos, Positions, field, item};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One non-empty document of a file.
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    pub positions: Positions,
    /// Where the document's content starts.
    pub start: Pos,
}

/// A problem found while reading the YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

/// What reading a file yields. `fatal` is set when reading stopped early (syntax error or
/// a limit); the documents read before it are kept.
#[derive(Debug, Default)]
pub struct Documents {
    pub documents: Vec<Document>,
    pub errors: Vec<YamlError>,
    pub fatal: bool,
}

/// Nodes that aliases may copy into one document, whatever `max_alias_expansions` says:
/// bounds the memory an alias can multiply.
const MAX_ALIASED_NODES: usize = 1 << 20;

fn pos_of(mark: &Marker) -> Pos {
    // yaml-rust2 lines are 1-based and columns 0-based.
    Pos::new(mark.line(), mark.col() + 1)
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        path: String,
        hash: PathHash,
        weight: Weight,
    },
    Map {
        map: Map<String, Value>,
        pending_key: Option<String>,
        pending_hash: PathHash,
        merges: Vec<Value>,
        /// The mapping's own position came from its start event, which yaml-rust2 places
        /// after the first key; the first key's position replaces it.
        take_first_key_pos: bool,
        anchor: usize,
        path: String,
        hash: PathHash,
        weight: Weight,
    },
}

/// The cost of expanding a node: how many alias expansions and copied nodes it holds.
#[derive(Clone, Copy, Default)]
struct Weight {
    aliases: usize,
    nodes: usize,
}

impl Weight {
    fn add(&mut self, other: Weight) {
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.nodes = self.nodes.saturating_add(other.nodes);
    }
}

struct Reader<'l> {
    limits: &'l Limits,
    out: Documents,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, Weight)>,
    positions: Positions,
    doc_start: Option<Pos>,
    root: Option<Value>,
    documents_seen: usize,
    /// Alias expansions and aliased nodes in the current document.
    expanded: Weight,
}

/// Reads every document of `text`. Never panics.
pub fn read(text: &str, limits: &Limits) -> Documents {
    let mut reader = Reader {
        limits,
        out: Documents::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        positions: Positions::default(),
        doc_start: None,
        root: None,
        documents_seen: 0,
        expanded: Weight::default(),
    };
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((event, mark)) => {
                if let Err(e) = reader.on_event(event, pos_of(&mark)) {
                    reader.out.errors.push(e);
                    reader.out.fatal = true;
                    break;
                }
            }
            Err(e) => {
                let pos = pos_of(e.marker());
                let message = if e.info().contains("recursion limit") {
                    format!(
                        "nesting is deeper than the limit of {} levels (the YAML parser stopped: \
                         {})",
                        limits.max_depth,
                        e.info()
                    )
                } else {
                    syntax_message(text, pos, e.info())
                };
                reader.out.errors.push(YamlError {
                    pos,
                    path: String::new(),
                    message,
                });
                reader.out.fatal = true;
                break;
            }
        }
    }
    reader.out
}

/// The parser's reason, plus a hint for the usual way hand-edited YAML breaks.
fn syntax_message(text: &str, pos: Pos, info: &str) -> String {
    let mut message = format!("YAML syntax error: {info}");
    let line = text
        .lines()
        .nth(pos.line.saturating_sub(1))
        .unwrap_or_default();
    let keys_on_line = line.matches(": ").count();
    if info.contains("mapping values are not allowed") && keys_on_line > 1 {
        message.push_str(
            "; this line holds several `key: value` pairs: the YAML looks flattened onto one \
             line, put each field on its own line, indented under its parent",
        );
    } else if info.contains("mapping values are not allowed")
        || info.contains("could not find expected ':'")
        || info.contains("did not find expected")
    {
        message.push_str("; check the indentation of this line and the one before it");
    }
    if line.trim_start().starts_with('`') {
        message.push_str("; a line cannot start with '`'");
    }
    if let Some(hint) = missing_space_hint(text, pos.line) {
        message.push_str(&hint);
    }
    if let Some(hint) = unindented_hint(text, pos.line) {
        message.push_str(&hint);
    }
    message
}

/// The lines of `text` up to `line` (1-based), numbered, without comments.
fn lines_upto(text: &str, line: usize) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .take(line)
        .enumerate()
        .map(|(i, l)| (i + 1, l.split(" #").next().unwrap_or(l).trim_end()))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}

/// `replicas:3` is one plain string, not a field: YAML needs a space after the colon.
fn missing_space_hint(text: &str, line: usize) -> Option<String> {
    let (number, found) = lines_upto(text, line)
        .filter(|(n, _)| *n + 2 >= line)
        .find(|(_, l)| {
            let body = l.trim_start().trim_start_matches('-').trim_start();
            body.split_once(':').is_some_and(|(key, value)| {
                !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric())
                    && value.starts_with(|c: char| !c.is_whitespace() && c != ':')
                    && !body.starts_with("http")
            })
        })?;
    Some(format!(
        "; line {number} `{}` has no space after ':', so it is a plain string, not a field \
         (write `key: value`)",
        found.trim()
    ))
}

/// Fields that hold a mapping in Kubernetes objects: written with nothing after the
/// colon and followed by a line at the same indentation, they lost their indentation.
const MAPPING_FIELDS: [&str; 14] = [
    "metadata",
    "spec",
    "template",
    "selector",
    "matchLabels",
    "labels",
    "annotations",
    "strategy",
    "rollingUpdate",
    "nodeSelector",
    "resources",
    "httpGet",
    "livenessProbe",
    "readinessProbe",
];

/// Seed 003's failure: `metadata:` followed by `name: x` at the same indentation.
pub fn unindented_hint(text: &str, line: usize) -> Option<String> {
    let lines: Vec<(usize, &str)> = lines_upto(text, line).collect();
    lines.windows(2).find_map(|pair| {
        let [(number, parent), (_, next)] = pair else {
            return None;
        };
        let key = parent.trim().strip_suffix(':')?.trim();
        let indent = |l: &str| l.len() - l.trim_start().len();
        (MAPPING_FIELDS.contains(&key)
            && indent(parent) == indent(next)
            && !next.trim_start().starts_with('-'))
        .then(|| {
            format!(
                "; the YAML looks unindented: `{key}:` at line {number} has no fields, the next \
                 line is at the same indentation; indent the fields of `{key}` under it"
            )
        })
    })
}

impl Reader<'_> {
    fn depth_error(&self, pos: Pos, path: &str) -> YamlError {
        YamlError {
            pos,
            path: path.to_string(),
            message: format!(
                "nesting is deeper than the limit of {} levels",
                self.limits.max_depth
            ),
        }
    }

    /// The path the next node gets, and where to record its position: for a mapping
    /// value the key's position was recorded already.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), true),
            Some(Frame::Seq { items, path, .. }) => (item(path, items.len()), true),
            Some(Frame::Map {
                pending_key: Some(key),
                path,
                ..
            }) => (field(path, key), false),
            Some(Frame::Map { path, .. }) => (path.clone(), false),
        }
    }

    /// The hash of the path the next node gets.
    fn next_hash(&self) -> PathHash {
        match self.stack.last() {
            None => PathHash::ROOT,
            Some(Frame::Seq { items, hash, .. }) => hash.item(items.len()),
            Some(Frame::Map { pending_hash, .. }) => *pending_hash,
        }
    }

    /// Records where a leaf value was written; values of mapping keys are placed by
    /// their key, which `set_key` recorded.
    fn record_leaf(&mut self, pos: Pos) {
        if !matches!(self.stack.last(), Some(Frame::Map { .. })) {
            let hash = self.next_hash();
            self.positions.insert_hash(hash, pos);
        }
    }

    fn in_key_position(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Map {
                pending_key: None,
                ..
            })
        )
    }

    fn on_event(&mut self, event: Event, pos: Pos) -> Result<(), YamlError> {
        match event {
            Event::StreamStart | Event::Nothing | Event::StreamEnd => {}
            Event::DocumentStart => {
                self.documents_seen += 1;
                if self.documents_seen > self.limits.max_documents {
                    return Err(YamlError {
                        pos,
                        path: String::new(),
                        message: format!(
                            "more than {} documents in one file",
                            self.limits.max_documents
                        ),
                    });
                }
                self.positions = Positions::default();
                self.doc_start = None;
                self.root = None;
                self.anchors.clear();
                self.expanded = Weight::default();
            }
            Event::DocumentEnd => {
                let value = self.root.take().unwrap_or(Value::Null);
                let positions = std::mem::take(&mut self.positions);
                if !value.is_null() {
                    self.out.documents.push(Document {
                        value,
                        positions,
                        start: self.doc_start.unwrap_or_default(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if self.doc_start.is_none() && !(text.is_empty() && style == TScalarStyle::Plain) {
                    self.doc_start = Some(pos);
                }
                let value = resolve_scalar(text, style, tag.as_ref());
                if self.in_key_position() {
                    self.set_key(value, pos)?;
                    return Ok(());
                }
                self.record_leaf(pos);
                let weight = Weight {
                    aliases: 0,
                    nodes: 1,
                };
                self.complete(value, anchor, weight, pos)?;
            }
            Event::Alias(id) => {
                let Some((value, weight)) = self.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        pos,
                        path: self.next_path().0,
                        message: "alias refers to an unknown anchor".to_string(),
                    });
                };
                let cost = Weight {
                    aliases: weight.aliases.saturating_add(1),
                    nodes: weight.nodes,
                };
                self.expanded.add(cost);
                if self.expanded.aliases > self.limits.max_alias_expansions
                    || self.expanded.nodes > MAX_ALIASED_NODES
                {
                    return Err(YamlError {
                        pos,
                        path: self.next_path().0,
                        message: format!(
                            "more than {} alias expansions in one document (an alias bomb?)",
                            self.limits.max_alias_expansions
                        ),
                    });
                }
                if self.in_key_position() {
                    self.set_key(value, pos)?;
                    return Ok(());
                }
                self.record_leaf(pos);
                self.complete(value, 0, cost, pos)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.doc_start.is_none() {
                    self.doc_start = Some(pos);
                }
                if self.in_key_position() {
                    return Err(YamlError {
                        pos,
                        path: self.next_path().0,
                        message: "a mapping key must be a plain value, not a list or mapping"
                            .to_string(),
                    });
                }
                let (path, record) = self.next_path();
                let hash = self.next_hash();
                if self.stack.len() >= self.limits.max_depth {
                    return Err(self.depth_error(pos, &path));
                }
                if record {
                    self.positions.insert_hash(hash, pos);
                }
                let weight = Weight {
                    aliases: 0,
                    nodes: 1,
                };
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        items: Vec::new(),
                        anchor,
                        path,
                        hash,
                        weight,
                    }
                } else {
                    Frame::Map {
                        map: Map::new(),
                        pending_key: None,
                        pending_hash: hash,
                        merges: Vec::new(),
                        take_first_key_pos: record,
                        anchor,
                        path,
                        hash,
                        weight,
                    }
                };
                self.stack.push(frame);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let (value, anchor, weight) = match frame {
                    Frame::Seq {
                        items,
                        anchor,
                        weight,
                        ..
                    } => (Value::Array(items), anchor, weight),
                    Frame::Map {
                        mut map,
                        merges,
                        anchor,
                        weight,
                        ..
                    } => {
                        apply_merges(&mut map, merges);
                        (Value::Object(map), anchor, weight)
                    }
                };
                self.complete(value, anchor, weight, pos)?;
            }
        }
        Ok(())
    }

    /// Records a mapping key; a duplicate is an error naming both lines.
    fn set_key(&mut self, key: Value, pos: Pos) -> Result<(), YamlError> {
        let key = match key {
            Value::String(s) => s,
            Value::Null => "null".to_string(),
            other => other.to_string(),
        };
        let depth = self.stack.len();
        let Some(Frame::Map {
            map,
            pending_key,
            pending_hash,
            path,
            hash,
            take_first_key_pos,
            ..
        }) = self.stack.last_mut()
        else {
            return Ok(());
        };
        if std::mem::take(take_first_key_pos) {
            self.positions.replace_hash(*hash, pos);
            if depth == 1 {
                self.doc_start = Some(pos);
            }
        }
        let key_hash = hash.field(&key);
        if key != "<<" && map.contains_key(&key) {
            let first = self.positions.get_hash(key_hash).unwrap_or_default();
            self.out.errors.push(YamlError {
                pos,
                path: field(path, &key),
                message: format!("duplicate key `{key}` (first given at line {})", first.line),
            });
        }
        *pending_key = Some(key);
        *pending_hash = key_hash;
        self.positions.insert_hash(key_hash, pos);
        Ok(())
    }

    /// Places a finished node into its parent (or makes it the document root).
    fn complete(
        &mut self,
        value: Value,
        anchor: usize,
        weight: Weight,
        _pos: Pos,
    ) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), weight));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq {
                items,
                weight: parent,
                ..
            }) => {
                parent.add(weight);
                items.push(value);
            }
            Some(Frame::Map {
                map,
                pending_key,
                merges,
                weight: parent,
                ..
            }) => {
                parent.add(weight);
                if let Some(key) = pending_key.take() {
                    if key == "<<" {
                        merges.push(value);
                    } else {
                        map.entry(key).or_insert(value);
                    }
                }
            }
        }
        Ok(())
    }
}

/// `<<: *base` (YAML 1.1 merge keys, which kubectl accepts): keys given explicitly win.
fn apply_merges(map: &mut Map<String, Value>, merges: Vec<Value>) {
    for merge in merges {
        let sources = match merge {
            Value::Array(items) => items,
            other => vec![other],
        };
        for source in sources {
            if let Value::Object(source) = source {
                for (k, v) in source {
                    map.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// The YAML 1.2 core schema, as serde_norway resolves plain scalars.
fn resolve_scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && (tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:")
    {
        return match tag.suffix.as_str() {
            "str" => Value::String(text),
            "null" => Value::Null,
            "bool" | "int" | "float" => resolve_plain(text),
            _ => Value::String(text),
        };
    }
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    resolve_plain(text)
}

fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(&text) {
        return Value::Number(n);
    }
    if looks_like_float(&text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

fn parse_int(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    match u128::from_str_radix(digits, radix) {
        Ok(magnitude) if negative => {
            let n = i64::try_from(magnitude).ok()?;
            Some(Number::from(-n))
        }
        Ok(magnitude) => match u64::try_from(magnitude) {
            Ok(n) => Some(Number::from(n)),
            // Too big for JSON integers: keep it a number so the type check reports it.
            Err(_) => Number::from_f64(magnitude as f64),
        },
        Err(_) => Number::from_f64(f64::MAX),
    }
}

fn looks_like_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let mut digits = 0;
    let mut dots = 0;
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if c == '.' {
            dots += 1;
        } else {
            break;
        }
        chars.next();
    }
    if digits == 0 || dots > 1 {
        return false;
    }
    match chars.next() {
        None => true,
        Some('e' | 'E') => {
            let rest: String = chars.collect();
            let rest = rest.strip_prefix(['-', '+']).unwrap_or(&rest);
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
        }
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Document {
        let mut docs = read(text, &Limits::default());
        assert!(docs.errors.is_empty(), "{:?}", docs.errors);
        assert_eq!(docs.documents.len(), 1);
        docs.documents.remove(0)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let doc = one("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: 0x10\ng: yes\nh: -3\ni: 1e3\n");
        let v = &doc.value;
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"], "1");
        assert_eq!(v["c"], true);
        assert!(v["d"].is_null());
        assert_eq!(v["e"], 1.5);
        assert_eq!(v["f"], 16);
        assert_eq!(v["g"], "yes");
        assert_eq!(v["h"], -3);
        assert_eq!(v["i"], 1000.0);
    }

    #[test]
    fn positions_are_one_based() {
        let doc = one("a:\n  b:\n    - x: 1\n      y: 2\n");
        assert_eq!(doc.positions.get("a"), Some(Pos::new(1, 1)));
        assert_eq!(doc.positions.get("a.b"), Some(Pos::new(2, 3)));
        assert_eq!(doc.positions.get("a.b[0].y"), Some(Pos::new(4, 7)));
        assert_eq!(doc.positions.lookup("a.b[0].z").line, 3);
    }

    #[test]
    fn merge_keys_and_anchors() {
        let doc = one("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        assert_eq!(doc.value["c"]["x"], 1);
        assert_eq!(doc.value["c"]["y"], 3);
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let docs = read("a: 1\nb: 2\na: 3\n", &Limits::default());
        assert_eq!(docs.errors.len(), 1);
        assert_eq!(docs.errors[0].pos, Pos::new(3, 1));
        assert!(docs.errors[0].message.contains("first given at line 1"));
    }

    #[test]
    fn empty_and_comment_documents_are_skipped() {
        let docs = read(
            "---\n# only a comment\n---\n---\na: 1\n...\n",
            &Limits::default(),
        );
        assert!(docs.errors.is_empty());
        assert_eq!(docs.documents.len(), 1);
        assert_eq!(docs.documents[0].start.line, 5);
    }
}
