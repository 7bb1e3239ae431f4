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

/// Checks the raw bytes before any YAML parsing: size first, then encoding.
/// Returns the text, or the one diagnostic that explains why it is refused.
pub fn check_bytes<'a>(bytes: &'a [u8], limits: &Limits) -> Result<&'a str, String> {
    if bytes.len() > limits.max_file_bytes {
        return Err(format!(
            "file is {} bytes, larger than the limit of {} bytes",
            bytes.len(),
            limits.max_file_bytes
        ));
    }
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err("file is UTF-16; save it as UTF-8".to_string());
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            return Err(format!(
                "file is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(offset) = text.find('\0') {
        return Err(format!(
            "file is not UTF-8 text (NUL byte at offset {offset}: UTF-16 or binary?)"
        ));
    }
    Ok(text)
}
