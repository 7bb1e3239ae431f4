//! Where each field of a document was written: field path -> line and column.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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
///
/// Paths are stored as 64-bit FNV-1a hashes of their text, which the reader extends key
/// by key without building a string per node (loading thousands of objects stays cheap);
/// a collision could only misplace a message, never change a result.
#[derive(Debug, Clone, Default)]
pub struct Positions {
    map: HashMap<u64, Pos, BuildHasherDefault<PrehashedHasher>>,
}

impl Positions {
    pub fn insert(&mut self, path: &str, pos: Pos) {
        self.insert_hash(PathHash::of(path), pos);
    }

    pub fn insert_hash(&mut self, path: PathHash, pos: Pos) {
        self.map.entry(path.0).or_insert(pos);
    }

    pub fn replace_hash(&mut self, path: PathHash, pos: Pos) {
        self.map.insert(path.0, pos);
    }

    /// The position of `path`, or of its nearest written ancestor (a defaulted field
    /// points at the object that lacks it).
    pub fn lookup(&self, path: &str) -> Pos {
        let mut path = path;
        loop {
            if let Some(pos) = self.get(path) {
                return pos;
            }
            if path.is_empty() {
                return Pos::default();
            }
            path = parent(path);
        }
    }

    /// The position of `path` only if it was written in the file.
    pub fn get(&self, path: &str) -> Option<Pos> {
        self.get_hash(PathHash::of(path))
    }

    pub fn get_hash(&self, path: PathHash) -> Option<Pos> {
        self.map.get(&path.0).copied()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The FNV-1a hash of a path's text, extendable one field or item at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathHash(u64);

impl PathHash {
    /// The document itself (the empty path).
    pub const ROOT: PathHash = PathHash(FNV_OFFSET);

    pub fn of(path: &str) -> Self {
        PathHash::ROOT.extend(path.as_bytes())
    }

    fn extend(self, bytes: &[u8]) -> Self {
        let mut h = self.0;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        PathHash(h)
    }

    /// The hash of `field(path, key)`.
    pub fn field(self, key: &str) -> Self {
        let base = if self == PathHash::ROOT {
            self
        } else {
            self.extend(b".")
        };
        base.extend(key.as_bytes())
    }

    /// The hash of `item(path, index)`.
    pub fn item(self, index: usize) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = index;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.extend(b"[").extend(&digits[at..]).extend(b"]")
    }
}

/// The keys are hashes already.
#[derive(Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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
        return key.to_string();
    }
    let mut out = String::with_capacity(path.len() + 1 + key.len());
    out.push_str(path);
    out.push('.');
    out.push_str(key);
    out
}

/// The path of item `index` of the sequence at `path`.
pub fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_extend_like_the_text() {
        let h = PathHash::ROOT
            .field("spec")
            .field("containers")
            .item(12)
            .field("image");
        assert_eq!(h, PathHash::of("spec.containers[12].image"));
        assert_eq!(PathHash::ROOT.item(0), PathHash::of("[0]"));
        assert_eq!(parent("a.b[0].c"), "a.b[0]");
        assert_eq!(parent("a.b[0]"), "a.b");
        assert_eq!(parent("a"), "");
    }
}
