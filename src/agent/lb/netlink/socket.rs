//! The `NETLINK_NETFILTER` socket: opened in this network namespace or in a named one (on
//! a short-lived thread that enters it, so the process stays where it is: a socket keeps
//! the namespace it was made in).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug)]
pub struct Socket(OwnedFd);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Socket {
    /// A socket in network namespace `netns` (a name under /run/netns), or in ours.
    pub fn open(netns: Option<&str>) -> io::Result<Socket> {
        let Some(ns) = netns else {
            return Socket::open_here();
        };
        let path = format!("/run/netns/{ns}");
        let ns_file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only; the fd is valid for the call.
                check(unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) })
                    .map_err(|e| io::Error::new(e.kind(), format!("entering {path}: {e}")))?;
                Socket::open_here()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread entering the namespace died")))
        })
    }

    fn open_here() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before being owned.
        let fd = check(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        })?;
        // SAFETY: fd was just returned by socket(2) and nothing else owns it.
        let socket = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: a zeroed sockaddr_nl is valid (pid 0: the kernel assigns one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        check(unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        // Room for the kernel's reports on a large failed batch; best effort.
        let _ = socket.set_buffer(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 4 << 20);
        Ok(socket)
    }

    /// Sets a buffer size, past the system's limit when allowed (CAP_NET_ADMIN, which
    /// nf_tables needs anyway).
    fn set_buffer(&self, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
        let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX / 2);
        let set = |opt| {
            // SAFETY: v outlives the call; the size is that of c_int.
            check(unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            })
        };
        set(force).or_else(|_| set(plain)).map(|_| ())
    }

    /// Sends one datagram to the kernel. nfnetlink processes a batch inside this call, so
    /// when it returns every error report is already queued for [`Socket::recv`].
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        // The kernel refuses a datagram larger than the send buffer.
        self.set_buffer(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, buf.len() + 4096)?;
        // SAFETY: buf is valid for its length.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if sent as usize != buf.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// One datagram; `None` when `wait` is false and nothing is queued.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: buf is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }
}
