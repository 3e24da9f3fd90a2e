//! The one module that talks to the OS below glommio, and the only one with `unsafe`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;

use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Bind a listening socket with SO_REUSEPORT (so every core binds the same address and the kernel
/// spreads incoming connections between them) and the given backlog.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

/// Hand a listening socket to the calling core's glommio reactor. Must run on that core.
pub fn into_listener(socket: Socket) -> TcpListener {
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd` from a socket we created, bound and put in
    // the listening state; nothing else owns it, so the listener takes sole ownership and closes it.
    unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// Give memory freed by the allocator back to the kernel (glibc keeps freed chunks in its arenas,
/// so after a mass disconnect RSS would otherwise stay at the peak). Process-wide; takes a few
/// milliseconds on a large heap, so callers do it only after a big drop in connections.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes no
    // pointers from us and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process, in bytes, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The CPUs this process may run on, in order (from its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        ids = (0..n).collect();
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
    }

    #[test]
    fn some_cpu_is_allowed() {
        assert!(!allowed_cpus().is_empty());
    }
}
