//! Where each field of a document was written: field path -> line and column.

use std::collections::HashMap;

/// A 1-based line and column in a file; `0:0` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub fn new(line: usize, column: usize) -> Self {
        Pos { line, column }
    }
}

/// Field paths (`spec.template.spec.containers[0].image`, as serde_path_to_error
/// prints them) of one document mapped to where they were written. The empty path is
/// the document itself.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    map: HashMap<String, Pos>,
}

impl Positions {
    pub fn insert(&mut self, path: String, pos: Pos) {
        self.map.entry(path).or_insert(pos);
    }

    pub fn replace(&mut self, path: String, pos: Pos) {
        self.map.insert(path, pos);
    }

    /// The position of `path`, or of its nearest written ancestor (a defaulted field
    /// points at the object that lacks it).
    pub fn lookup(&self, path: &str) -> Pos {
        let mut path = path;
        loop {
            if let Some(pos) = self.map.get(path) {
                return *pos;
            }
            if path.is_empty() {
                return Pos::default();
            }
            path = parent(path);
        }
    }

    /// The position of `path` only if it was written in the file.
    pub fn get(&self, path: &str) -> Option<Pos> {
        self.map.get(path).copied()
    }
}

/// `a.b[0].c` -> `a.b[0]` -> `a.b` -> `a` -> ``.
pub fn parent(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The path of field `key` inside the object at `path`.
pub fn field(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The path of item `index` of the sequence at `path`.
pub fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}
