//! Container log files: the current instance's `<id>.log` (written by the runtime), the
//! previous instance's `<id>.log.previous` (kept across one restart, as the kubelet keeps
//! it), and reading the last lines of a file without reading all of it.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where the previous instance's log of `log` is kept: `<log>.previous`.
pub fn previous_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

/// Moves `log` to its previous slot (replacing an older one) before a container starts
/// again. Returns whether there was a log to move.
pub fn rotate(log: &Path) -> io::Result<bool> {
    match std::fs::rename(log, previous_path(log)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a container's current and previous logs (its pod is gone); absent files are fine.
pub fn remove(log: &Path) -> io::Result<()> {
    for path in [log.to_path_buf(), previous_path(log)] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

const CHUNK: u64 = 64 * 1024;

/// The offset where the last `lines` lines of `reader` (`len` bytes long) begin; reads
/// backwards by chunks, so a long log costs only what is returned. A final newline ends the
/// last line rather than starting an empty one.
///
/// Example: `"a\nb\nc\n"` with 2 lines starts at 2 (`"b\nc\n"`); with 5 lines at 0; with 0
/// lines at 6 (nothing).
pub fn tail_offset<R: Read + Seek>(reader: &mut R, len: u64, lines: u64) -> io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut found = 0;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(chunk)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            let at = start + i as u64;
            if *byte == b'\n' && at + 1 != len {
                found += 1;
                if found == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tail(text: &str, lines: u64) -> String {
        let mut cursor = Cursor::new(text.as_bytes());
        let at = tail_offset(&mut cursor, text.len() as u64, lines).expect("tail");
        text[at as usize..].to_string()
    }

    #[test]
    fn last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 1), "c\n");
        assert_eq!(tail("a\nb\nc\n", 3), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 9), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc\n", 0), "");
        // A last line still being written counts as a line.
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("", 3), "");
        assert_eq!(tail("\n\n", 1), "\n");
    }

    #[test]
    fn long_logs_are_read_backwards_across_chunks() {
        let text: String = (0..30_000).map(|i| format!("line {i}\n")).collect();
        assert!(text.len() as u64 > 2 * CHUNK);
        assert_eq!(tail(&text, 2), "line 29998\nline 29999\n");
        let many = tail(&text, 20_000);
        assert!(many.starts_with("line 10000\n"), "{}", &many[..20]);
        assert_eq!(tail(&text, 30_000), text);
    }

    #[test]
    fn rotation_keeps_one_previous_log_and_removal_takes_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("uid-web.log");
        assert!(!rotate(&log).expect("nothing to rotate"));
        std::fs::write(&log, "first\n").expect("write");
        assert!(rotate(&log).expect("rotate"));
        assert!(!log.exists());
        std::fs::write(&log, "second\n").expect("write");
        assert!(rotate(&log).expect("rotate"));
        let previous = previous_path(&log);
        assert_eq!(previous, dir.path().join("uid-web.log.previous"));
        assert_eq!(
            std::fs::read_to_string(&previous).expect("read"),
            "second\n"
        );
        std::fs::write(&log, "third\n").expect("write");
        remove(&log).expect("remove");
        assert!(!log.exists() && !previous.exists());
        remove(&log).expect("removing nothing is fine");
    }
}
