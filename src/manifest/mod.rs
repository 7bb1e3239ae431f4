//! YAML documents -> validated, defaulted Kubernetes objects (Deployments and Services).
//! Every error names `file:line:column` and the field path.

pub mod defaults;
pub mod edit;
pub mod handlers;
pub mod limits;
pub mod parse;
pub mod positions;
pub mod set_index;
pub mod validate;
mod yaml;

use crate::api::ObjectKey;
use serde_json::Value;
use std::fmt;

pub use limits::Limits;

/// A problem found in a file: an error (the revision is rejected) or a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
    /// Field path such as `spec.template.spec.containers[0].image`; empty for the document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: path: message` (parts that are unknown are left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An object from the source, after conversion, defaulting and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    pub key: ObjectKey,
    /// The file it came from, relative to the source root.
    pub file: String,
    /// The line of the document's first line in that file (1-based).
    pub line: usize,
    /// The Kubernetes-shaped object (`apiVersion` apps/v1 or v1), defaults applied, no status.
    pub object: Value,
}

/// What one file yields.
#[derive(Debug, Clone, Default)]
pub struct ParsedFile {
    pub objects: Vec<DesiredObject>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// `text` with control characters escaped as Rust does (`\n`, `\u{1b}`), so that a message
/// built from a file name or a value stays on one line and prints no terminal escapes.
pub fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses, converts, defaults and validates one file. Never panics on any input.
pub fn load_file(file: &str, bytes: &[u8], limits: &Limits) -> ParsedFile {
    parse::load_file(file, bytes, limits)
}

/// Checks that span files: duplicate objects (same kind, namespace and name) and NodePorts
/// given twice. Returns errors naming both places.
pub fn validate_set<'a>(objects: impl IntoIterator<Item = &'a DesiredObject>) -> Vec<Diagnostic> {
    validate::validate_set(objects)
}
