//! Errors as one line: every cause (`a: b: c`), or only the innermost one. Library errors
//! (reqwest, io) often keep the useful part in their sources.

/// Every cause of an error on one line, a repeated cause written once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e;
    while let Some(next) = cur.source() {
        let text = next.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = next;
    }
    parts.join(": ")
}

/// The innermost cause of an error (`Connection refused (os error 111)`).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_and_roots() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        assert_eq!(root_cause(&e), "inner");
    }
}
