//! Validation of objects and of the whole set.
use super::{DesiredObject, Diagnostic};
pub fn validate_set<'a>(_objects: impl IntoIterator<Item = &'a DesiredObject>) -> Vec<Diagnostic> {
    Vec::new()
}
