//! Handing the memory the agent freed back to the system.
//!
//! Why: glibc keeps freed memory in its arenas for reuse, so the agent's resident memory
//! would stay at the peak of its busiest moment (the first list of every Service and
//! Endpoints, the first full sync of the Service proxy, 50 containers starting at once)
//! for as long as it runs. `malloc_trim` releases the free pages inside the arenas, not
//! only at their tops; measured with 50 pods and 2,000 Services it is worth several MiB
//! (docs/performance.md). It walks only the free chunks of two arenas (the agent caps
//! them), well under a millisecond at the agent's heap size, so once per [`TRIM_PERIOD`]
//! costs nothing measurable.
//!
//! The binary's code is the other half of the agent's resident memory: `tend` is one binary
//! for serve and the agent, and the kernel's fault-around maps 64 KiB of code around every
//! page the agent runs, so the agent had ~14 MiB of its ~24 MB of code mapped although it
//! runs a small part of it. [`map_code_page_by_page`] turns fault-around off for the
//! agent's read-only file mappings at start, and drops what start-up mapped of those that
//! hold no private copy (docs/performance.md has the figures).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often freed memory is handed back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Releases the free pages of every malloc arena; whether any were released.
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it has no
        // preconditions and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Releases freed memory every [`TRIM_PERIOD`] until `shutdown`.
pub async fn keep_releasing(mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TRIM_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                release_freed_memory();
            }
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

/// An address range of the process, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
}

/// The executable mappings (`r-xp`) of `exe` in a `/proc/PID/maps` text.
///
/// Only those: the binary's read-only mappings include its RELRO part, which the dynamic
/// linker wrote (relocations) before making it read-only; dropping those private copies
/// would bring back the file's unrelocated bytes. Code is never written, so its pages are
/// the file's. Lines that do not parse are skipped (the format is the kernel's, but a
/// skipped line only means less is mapped page by page).
pub fn executable_mappings(maps: &str, exe: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(maps_line)
        .filter(|(_, perms, path)| *perms == "r-xp" && *path == exe)
        .map(|(m, _, _)| m)
        .collect()
}

/// A read-only mapping of a file (`r-xp`, `r--p`; the binary's or a library's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly {
    pub mapping: Mapping,
    /// Whether any page of it may be a private copy: the dynamic linker wrote it (the
    /// relocations of a RELRO part) before making it read-only. True unless an smaps text
    /// said `Anonymous: 0 kB`; such pages hold bytes the file does not, so they must stay.
    pub copied: bool,
}

/// The read-only mappings of files in a `/proc/PID/smaps` (or `maps`) text: those
/// fault-around fills, registered page by page too. From a `maps` text, which does not
/// tell, every one counts as [`ReadOnly::copied`].
pub fn read_only_file_mappings(smaps: &str) -> Vec<ReadOnly> {
    let mut found: Vec<ReadOnly> = Vec::new();
    // Whether the last header line was one of those, so that its fields belong to it.
    let mut current = false;
    for line in smaps.lines() {
        if let Some((mapping, perms, path)) = maps_line(line) {
            current = matches!(perms, "r-xp" | "r--p") && path.starts_with('/');
            if current {
                found.push(ReadOnly {
                    mapping,
                    copied: true,
                });
            }
        } else if current
            && let Some(kib) = line.strip_prefix("Anonymous:")
            && let Some(last) = found.last_mut()
        {
            last.copied = kib.split_whitespace().next() != Some("0");
        }
    }
    found
}

/// One line of a `/proc/PID/maps` text: its range, permissions and path (empty for an
/// anonymous mapping); `None` for a line that does not parse or an empty range.
fn maps_line(line: &str) -> Option<(Mapping, &str, &str)> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (_offset, rest) = next_field(rest)?;
    let (_device, rest) = next_field(rest)?;
    let (_inode, rest) = next_field(rest)?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start < end).then_some((Mapping { start, end }, perms, rest.trim_start()))
}

/// The first whitespace-separated field of `s` and what follows it.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// Turns off the kernel's fault-around for the binary's code and the other read-only file
/// mappings (its data, the libraries), then drops what start-up mapped of them; the bytes
/// registered.
///
/// Why: fault-around maps up to 16 pages already in the page cache around every page a
/// fault brings in, so each function the agent runs maps 64 KiB of code beside it — of
/// serve's code mostly, as the two share the binary. The only per-mapping switch the
/// kernel has (mm/memory.c `should_fault_around`, 6.x) is a userfaultfd registration in
/// write-protect or minor mode; `MADV_RANDOM` does not turn it off (it stops readahead
/// from the disk only). So the code is registered in write-protect mode with
/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): the kernel resolves write-protect faults itself,
/// no thread handles events, and code is never written anyway. From then on each code
/// page the agent runs is mapped alone, on a minor fault of its own the first time. The
/// descriptor stays open for the life of the process (closing it would end the
/// registration); children do not inherit it (close-on-exec, and a fork's copy of the
/// mappings is not registered).
pub fn map_code_page_by_page() -> usize {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let outcome = own_code().and_then(|code| {
        // Also the binary's read-only data and the libraries, each on a best-effort basis.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let read_only = read_only_file_mappings(&smaps);
        let others: Vec<Mapping> = read_only
            .iter()
            .map(|r| r.mapping)
            .filter(|m| !code.contains(m))
            .collect();
        let registered = page_by_page::register(&code, &others)?;
        for m in &code {
            drop_pages(*m)?;
        }
        // What loading the libraries and their start-up (OpenSSL's, mostly) mapped with
        // fault-around comes back page by page too, where it is used again: libcrypto
        // alone had ~2.4 MiB of code mapped. Not the mappings holding private copies.
        for r in read_only.iter().filter(|r| !r.copied) {
            if !code.contains(&r.mapping) {
                let _ = drop_pages(r.mapping);
            }
        }
        Ok(registered)
    });
    match outcome {
        Ok(bytes) => bytes,
        Err(e) => {
            if !LOGGED.swap(true, Ordering::Relaxed) {
                tracing::debug!("the agent's code keeps the kernel's fault-around: {e}");
            }
            0
        }
    }
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod page_by_page {
    use super::{CodeError, Mapping};
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::sync::Mutex;

    // linux/userfaultfd.h; the ioctl numbers are _IOWR(0xAA, nr, struct) in the encoding
    // of the architectures above.
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    const UFFD_API: u64 = 0xAA;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
    const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }

    #[repr(C)]
    struct UffdioRegister {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }

    /// The registrations' descriptors, kept open until the process exits.
    static KEPT: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

    fn os_error(step: &'static str) -> CodeError {
        CodeError::Userfaultfd {
            step,
            source: std::io::Error::last_os_error(),
        }
    }

    /// Registers `required` (any failure is an error) and what it can of `optional`; the
    /// bytes registered.
    pub fn register(required: &[Mapping], optional: &[Mapping]) -> Result<usize, CodeError> {
        // SAFETY: userfaultfd takes only flags and returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return Err(os_error("userfaultfd"));
        }
        let raw = libc::c_int::try_from(fd).map_err(|_| CodeError::Userfaultfd {
            step: "userfaultfd",
            source: std::io::Error::other("descriptor out of range"),
        })?;
        // SAFETY: `raw` was just returned by the kernel and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `api` is.
        if unsafe { libc::ioctl(raw, UFFDIO_API, &mut api as *mut UffdioApi) } != 0 {
            return Err(os_error("UFFDIO_API with UFFD_FEATURE_WP_ASYNC"));
        }
        let mut bytes = 0;
        for (i, m) in required.iter().chain(optional).enumerate() {
            let mut register = UffdioRegister {
                start: m.start as u64,
                len: (m.end - m.start) as u64,
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`; the
            // range is a mapping of this process, which the kernel checks again.
            if unsafe { libc::ioctl(raw, UFFDIO_REGISTER, &mut register as *mut UffdioRegister) }
                != 0
            {
                if i < required.len() {
                    return Err(os_error("UFFDIO_REGISTER in write-protect mode"));
                }
                continue;
            }
            bytes += m.end - m.start;
        }
        if let Ok(mut kept) = KEPT.lock() {
            kept.push(fd);
        } else {
            // A poisoned lock: keep the registration anyway, by never closing it.
            std::mem::forget(fd);
        }
        Ok(bytes)
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
mod page_by_page {
    use super::{CodeError, Mapping};

    pub fn register(_required: &[Mapping], _optional: &[Mapping]) -> Result<usize, CodeError> {
        Err(CodeError::Unsupported)
    }
}

/// Why the code mappings could not be advised.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path} names no executable mapping of {exe}")]
    NoMapping { path: &'static str, exe: String },
    #[error("madvise(MADV_DONTNEED) on {start:#x}-{end:#x}: {source}")]
    Advise {
        start: usize,
        end: usize,
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Userfaultfd {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("madvise or userfaultfd is not available on this platform")]
    Unsupported,
}

/// The binary's executable mappings in this process.
fn own_code() -> Result<Vec<Mapping>, CodeError> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|source| CodeError::Read {
        path: "/proc/self/exe",
        source,
    })?;
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|source| CodeError::Read {
        path: "/proc/self/maps",
        source,
    })?;
    let exe = exe.to_string_lossy();
    let mappings = executable_mappings(&maps, &exe);
    if mappings.is_empty() {
        return Err(CodeError::NoMapping {
            path: "/proc/self/maps",
            exe: exe.into_owned(),
        });
    }
    Ok(mappings)
}

/// Drops the page table entries of `m`, a read-only mapping of a file holding no private
/// copy (the binary's code, or a [`ReadOnly`] not `copied`), so that what start-up mapped
/// with fault-around comes back page by page, when used again.
#[cfg(target_os = "linux")]
fn drop_pages(m: Mapping) -> Result<(), CodeError> {
    // SAFETY: the range is a whole private mapping of a file that this process never wrote
    // (code, see `executable_mappings`; or a read-only mapping whose smaps counted no
    // anonymous page, and read-only it cannot gain one): without page table entries its
    // pages fault back in from the page cache with the same bytes, so no memory this
    // process relies on changes. The maps were read at start, before any library is
    // loaded or unloaded at run time.
    let rc = unsafe {
        libc::madvise(
            m.start as *mut libc::c_void,
            m.end - m.start,
            libc::MADV_DONTNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(CodeError::Advise {
            start: m.start,
            end: m.end,
            source: std::io::Error::last_os_error(),
        })
    }
}

#[cfg(not(target_os = "linux"))]
fn drop_pages(_m: Mapping) -> Result<(), CodeError> {
    Err(CodeError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn free_pages_between_live_blocks_are_released() {
        // Blocks of 64 KiB (below the mmap threshold: they come from an arena), each
        // followed by a small one that stays: freeing the large ones leaves free pages
        // between live memory, which glibc keeps (they are not at the arena's top).
        let pinned = std::thread::spawn(|| {
            let mut large = Vec::new();
            let mut small = Vec::new();
            for i in 0..64u8 {
                large.push(vec![i; 64 * 1024]);
                small.push(vec![i; 16]);
            }
            drop(large);
            let released = release_freed_memory();
            (released, small.len())
        })
        .join();
        assert!(
            matches!(pinned, Ok((true, 64))),
            "malloc_trim released the free pages"
        );
    }

    const MAPS: &str = "\
5581d2a00000-5581d3200000 r--p 00000000 103:02 1311  /usr/local/bin/tend
5581d3200000-5581d4a00000 r-xp 00800000 103:02 1311  /usr/local/bin/tend
5581d4a00000-5581d4c00000 r--p 02000000 103:02 1311  /usr/local/bin/tend
5581d4c00000-5581d4c10000 rw-p 02200000 103:02 1311  /usr/local/bin/tend
5581d5000000-5581d5100000 rw-p 00000000 00:00 0      [heap]
7f3a10000000-7f3a10200000 r-xp 00028000 103:02 77    /usr/lib/x86_64-linux-gnu/libc.so.6
7f3a20000000-7f3a20100000 r-xp 00000000 103:02 1311  /usr/local/bin/tend-old
7f3a30000000-7f3a30100000 r-xp 00000000 103:02 99    /work/my dir/tend (deleted)
garbage line
7f3a40000000-zz r-xp 00000000 103:02 1311  /usr/local/bin/tend
7ffd8a000000-7ffd8a021000 rw-p 00000000 00:00 0      [stack]
";

    #[test]
    fn only_the_binarys_executable_mappings_are_found() {
        assert_eq!(
            executable_mappings(MAPS, "/usr/local/bin/tend"),
            vec![Mapping {
                start: 0x5581_d320_0000,
                end: 0x5581_d4a0_0000
            }],
            "not its read-only, writable or unparsable lines, nor libc's or another binary's"
        );
    }

    #[test]
    fn read_only_file_mappings_are_the_binarys_and_the_libraries() {
        let found = read_only_file_mappings(MAPS);
        let starts: Vec<usize> = found.iter().map(|r| r.mapping.start).collect();
        assert!(
            found.iter().all(|r| r.copied),
            "a maps text does not tell which hold private copies: all may"
        );
        assert_eq!(
            starts,
            vec![
                0x5581_d2a0_0000,
                0x5581_d320_0000,
                0x5581_d4a0_0000,
                0x7f3a_1000_0000,
                0x7f3a_2000_0000,
                0x7f3a_3000_0000
            ],
            "not the writable ones, the heap, the stack or unparsable lines"
        );
    }

    #[test]
    fn smaps_tells_which_read_only_mappings_hold_private_copies() {
        let smaps = "\
5581d2a00000-5581d3200000 r--p 00000000 103:02 1311  /usr/local/bin/tend
Size:               8192 kB
Rss:                2084 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
5581d3200000-5581d4a00000 r-xp 00800000 103:02 1311  /usr/local/bin/tend
Rss:                4756 kB
Anonymous:             0 kB
5581d4a00000-5581d4c00000 r--p 02000000 103:02 1311  /usr/local/bin/tend
Rss:                 676 kB
Anonymous:           676 kB
5581d4c00000-5581d4c10000 rw-p 02200000 103:02 1311  /usr/local/bin/tend
Anonymous:             0 kB
7f3a10000000-7f3a10200000 r-xp 00028000 103:02 77    /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1020 kB
7f3a20000000-7f3a20100000 r--p 00000000 103:02 78    /usr/lib/x86_64-linux-gnu/libcrypto.so.3
Anonymous:             4 kB
7f3a30000000-7f3a30100000 rw-p 00000000 00:00 0
Anonymous:             0 kB
";
        let copied: Vec<(usize, bool)> = read_only_file_mappings(smaps)
            .iter()
            .map(|r| (r.mapping.start, r.copied))
            .collect();
        assert_eq!(
            copied,
            vec![
                (0x5581_d2a0_0000, false),
                (0x5581_d320_0000, false),
                (0x5581_d4a0_0000, true),
                (0x7f3a_1000_0000, true),
                (0x7f3a_2000_0000, true),
            ],
            "relocated (anonymous pages) or not saying: copied; writable and anonymous \
             mappings are not listed, and their fields do not change the one before"
        );
    }

    #[test]
    fn a_replaced_binary_with_spaces_in_its_path_is_found() {
        // /proc/self/exe reads "... (deleted)" too once the file was replaced.
        assert_eq!(
            executable_mappings(MAPS, "/work/my dir/tend (deleted)"),
            vec![Mapping {
                start: 0x7f3a_3000_0000,
                end: 0x7f3a_3010_0000
            }]
        );
        assert!(executable_mappings(MAPS, "/work/my dir/tend").is_empty());
        assert!(executable_mappings("", "/usr/local/bin/tend").is_empty());
    }

    /// The resident KiB of this process's mapping starting at `start`, from /proc/self/smaps.
    fn resident_kib(start: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let header = format!("{start:x}-");
        smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&header))
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// Whether this kernel has `UFFD_FEATURE_WP_ASYNC` (Linux 6.7); the two tests below
    /// need it. Without it the agent only logs at debug level and keeps fault-around.
    fn kernel_has_wp_async() -> bool {
        match page_by_page::register(&[], &[]) {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "skipping: this kernel cannot map code page by page ({e}); needs Linux 6.7+"
                );
                false
            }
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_processs_code_leaves_its_resident_set_and_still_runs() {
        if !kernel_has_wp_async() {
            return;
        }
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let code = executable_mappings(&maps, &exe);
        let first = code.first().map(|m| m.start).unwrap_or(0);
        // libc's code: a library's read-only mapping holding no private copy.
        let libc = maps
            .lines()
            .filter_map(maps_line)
            .find(|(_, perms, path)| *perms == "r-xp" && path.contains("/libc.so"))
            .map(|(m, _, _)| m.start)
            .unwrap_or(0);
        let (before, libc_before) = (resident_kib(first), resident_kib(libc));
        let registered = map_code_page_by_page();
        // Running on after the drop (this very code, the parsing) maps pages back in.
        let (after, libc_after) = (resident_kib(first), resident_kib(libc));
        assert!(
            matches!((libc_before, libc_after), (Some(b), Some(a)) if a < b),
            "libc's resident code before and after: {libc_before:?} KiB, {libc_after:?} KiB"
        );
        assert!(
            registered >= code.iter().map(|m| m.end - m.start).sum::<usize>(),
            "every executable mapping of the test binary was registered ({registered} bytes; needs Linux 6.7)"
        );
        assert!(
            matches!((before, after), (Some(b), Some(a)) if a < b),
            "resident code before and after: {before:?} KiB, {after:?} KiB"
        );
    }

    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn a_registered_mapping_maps_only_the_pages_touched() {
        if !kernel_has_wp_async() {
            return;
        }
        // A private read-only mapping of the test binary (in the page cache: it runs),
        // 4 MiB of it, one byte read every 64 KiB: with fault-around each read maps up to
        // 16 pages, registered each maps one.
        const LEN: usize = 4 << 20;
        const STRIDE: usize = 64 << 10;
        let Ok(file) = std::fs::File::open("/proc/self/exe") else {
            panic!("opening the test binary");
        };
        let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        assert!(len >= LEN, "the test binary is {len} bytes");
        let map = |register: bool| -> Option<u64> {
            use std::os::fd::AsRawFd as _;
            // SAFETY: a new private read-only mapping of an open file, unmapped below.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    LEN,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(at, libc::MAP_FAILED, "mapping the test binary");
            let start = at as usize;
            let m = Mapping {
                start,
                end: start + LEN,
            };
            let registered = !register || page_by_page::register(&[m], &[]).is_ok();
            let mut sum = 0u8;
            for offset in (0..LEN).step_by(STRIDE) {
                // SAFETY: inside the mapping made above.
                sum = sum.wrapping_add(unsafe {
                    std::ptr::read_volatile((start + offset) as *const u8)
                });
            }
            std::hint::black_box(sum);
            let rss = resident_kib(start);
            // SAFETY: the mapping made above, no longer used.
            unsafe { libc::munmap(at, LEN) };
            registered.then_some(rss).flatten()
        };
        let touched = (LEN / STRIDE) as u64 * 4;
        let around = map(false);
        let registered = map(true);
        assert!(
            matches!(around, Some(kib) if kib > touched),
            "fault-around maps more than the {touched} KiB touched: {around:?}"
        );
        assert_eq!(
            registered,
            Some(touched),
            "registered, only the pages touched are mapped (needs Linux 6.7)"
        );
    }

    #[tokio::test]
    async fn the_release_loop_stops_at_shutdown() {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(keep_releasing(rx));
        assert!(tx.send(true).is_ok());
        let stopped = tokio::time::timeout(Duration::from_secs(30), task).await;
        assert!(stopped.is_ok_and(|r| r.is_ok()), "the loop ended");
    }
}
