//! Limits that make hostile YAML fail fast.

/// Bounds on one file. The defaults suit hand-written manifests with a wide margin.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file_bytes: usize,
    /// Deepest nesting of mappings and sequences.
    pub max_depth: usize,
    /// Most alias (`*name`) expansions in one document.
    pub max_alias_expansions: usize,
    /// Most documents in one file.
    pub max_documents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 4 << 20,
            max_depth: 64,
            max_alias_expansions: 1000,
            max_documents: 1000,
        }
    }
}
