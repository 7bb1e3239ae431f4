//! Multi-document YAML -> JSON objects with positions.
use super::{Limits, ParsedFile};
pub fn load_file(_file: &str, _bytes: &[u8], _limits: &Limits) -> ParsedFile {
    ParsedFile::default()
}
