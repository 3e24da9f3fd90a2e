//! The one module that talks to the OS below glommio, and the only one with `unsafe`.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};

use io_uring::{IoUring, opcode, types};
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

/// A core's own io_uring, used only for readiness: poll requests carry a `user_data` tag and no
/// buffer, so nothing the kernel holds points into our memory (STYLE 6 holds trivially).
///
/// A poll request pins the polled file until it completes or is removed. Entries reach the
/// kernel in the order they were queued, and a closing socket queues the removal of its polls
/// behind them (see `reactor::Reactor::forget`), so a poll submitted late is removed right after.
///
/// When the submission queue is full and the kernel cannot take entries (`EBUSY`: completions
/// wait to be reaped, which only this core's thread does), entries wait in `backlog`, in order,
/// until the next [`Ring::submit`] after a reap: the core never spins on its own ring.
pub struct Ring {
    ring: IoUring,
    backlog: VecDeque<io_uring::squeue::Entry>,
    /// The period of the ring's timeout requests (see [`Ring::timeout`]): boxed, so its address
    /// stays put while an entry that points at it waits to be submitted.
    period: Box<types::Timespec>,
}

/// One completion: the request's tag, its result (a poll mask or `-errno`), and whether a
/// multishot request stays armed after it.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub tag: u64,
    pub result: i32,
    pub more: bool,
}

impl Ring {
    /// A ring with `sq` submission and `cq` completion entries.
    pub fn new(sq: u32, cq: u32) -> io::Result<Ring> {
        let ring = IoUring::builder().setup_cqsize(cq).build(sq)?;
        Ok(Ring {
            ring,
            backlog: VecDeque::new(),
            period: Box::new(types::Timespec::new()),
        })
    }

    /// Have the kernel signal `eventfd` whenever completions are posted (while enabled).
    pub fn register_eventfd(&self, eventfd: &File) -> io::Result<()> {
        self.ring.submitter().register_eventfd(eventfd.as_raw_fd())
    }

    /// Queue a multishot poll for `mask` on `fd`: one completion per readiness change until it is
    /// removed (or the kernel ends it: then `more` is false on its last completion).
    pub fn poll_multishot(&mut self, fd: BorrowedFd<'_>, mask: i16, tag: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask as u16 as u32)
            .multi(true)
            .build()
            .user_data(tag);
        self.push(e);
    }

    /// Queue a one-shot poll for `mask` on `fd`.
    pub fn poll_once(&mut self, fd: BorrowedFd<'_>, mask: i16, tag: u64) {
        let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), mask as u16 as u32)
            .build()
            .user_data(tag);
        self.push(e);
    }

    /// Queue a timeout of `period` that completes (`-ETIME`) every period until removed when
    /// `multishot` (kernel 6.4 and later; older kernels answer `-EINVAL`), or once. Every timeout
    /// of a ring has the same period: the last one given.
    pub fn timeout(&mut self, period: std::time::Duration, multishot: bool, tag: u64) {
        *self.period = types::Timespec::from(period);
        let mut op = opcode::Timeout::new(&*self.period as *const types::Timespec).count(0);
        if multishot {
            op = op.flags(types::TimeoutFlags::MULTISHOT);
        }
        self.push(op.build().user_data(tag));
    }

    /// Queue the removal of the poll tagged `target`; its own completion carries `tag`.
    pub fn poll_remove(&mut self, target: u64, tag: u64) {
        let e = opcode::PollRemove::new(target).build().user_data(tag);
        self.push(e);
    }

    /// Queue `e` behind everything queued before it. Never waits.
    fn push(&mut self, e: io_uring::squeue::Entry) {
        if self.backlog.is_empty() {
            if self.try_push(&e) {
                return;
            }
            // Full: hand the queue to the kernel once; if it takes it, there is room now.
            if self.ring.submit().is_ok() && self.try_push(&e) {
                return;
            }
        }
        self.backlog.push_back(e);
    }

    fn try_push(&mut self, e: &io_uring::squeue::Entry) -> bool {
        // SAFETY: the entries built here reference no memory of ours but one: poll add and poll
        // remove carry only a descriptor number and a tag, and a timeout points at `period`,
        // which the kernel copies when the entry is submitted and which lives (boxed, never
        // moved) as long as the ring, so nothing the kernel reads can dangle. A descriptor
        // closed before its poll is submitted makes that poll fail or attach to a reused number,
        // and the removal queued behind it on close ends it (order is kept, see the type's doc).
        unsafe { self.ring.submission().push(e) }.is_ok()
    }

    /// Move backlog entries into the submission queue while it has room.
    fn refill(&mut self) {
        while let Some(e) = self.backlog.pop_front() {
            if !self.try_push(&e) {
                self.backlog.push_front(e);
                break;
            }
        }
        if self.backlog.is_empty() && self.backlog.capacity() > 64 {
            self.backlog = VecDeque::new();
        }
    }

    /// Whether the kernel needs an `io_uring_enter`: entries are queued but not submitted, or
    /// completions overflowed the ring and wait in the kernel to be flushed into it.
    pub fn needs_enter(&mut self) -> bool {
        let backlog = !self.backlog.is_empty();
        let sq = self.ring.submission();
        backlog || !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
    }

    /// Hand the queued entries (backlog included, as far as the kernel takes them) to the kernel
    /// and flush overflowed completions into the ring. No wait.
    pub fn submit(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            self.refill();
            let n = self.ring.submit()?;
            total += n;
            if self.backlog.is_empty() || n == 0 {
                return Ok(total);
            }
        }
    }

    /// Entries waiting for room in the submission queue.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Move up to `max` completions into `out`; returns how many.
    pub fn reap(&mut self, max: usize, out: &mut Vec<Completion>) -> usize {
        let mut n = 0;
        for c in self.ring.completion().take(max) {
            out.push(Completion {
                tag: c.user_data(),
                result: c.result(),
                more: io_uring::cqueue::more(c.flags()),
            });
            n += 1;
        }
        n
    }

    /// Whether completions are waiting.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Turn the registered eventfd's notifications on or off.
    pub fn set_eventfd_enabled(&mut self, on: bool) {
        let cq = self.ring.completion();
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }
}

/// `N` random bytes from the kernel (`getrandom(2)`); zeros if it fails (never on Linux 3.17+).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: the kernel writes at most `N` bytes into `b`, which is `N` bytes long.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    b
}

/// A blocking eventfd (close-on-exec), as a `File`: 8-byte reads take the counter, writes add.
pub fn eventfd() -> io::Result<File> {
    // SAFETY: eventfd takes no pointers; a negative return is an error, checked below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; the File closes it.
    Ok(unsafe { File::from_raw_fd(fd) })
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
    fn a_full_ring_queues_entries_instead_of_spinning() {
        // 4 submission and 16 completion entries; 300 removals of polls that do not exist, each
        // completing with -ENOENT, pushed while the kernel refuses every submit: the old push
        // looped on submit() on the core's own thread and never returned.
        // The ring starts disabled, so every submit fails (EBADFD) as a busy kernel's would.
        let ring = IoUring::builder()
            .setup_cqsize(16)
            .setup_r_disabled()
            .build(4)
            .expect("ring");
        let mut ring = Ring {
            ring,
            backlog: VecDeque::new(),
            period: Box::new(types::Timespec::new()),
        };
        for i in 0..300u64 {
            ring.poll_remove(1_000_000 + i, i);
        }
        assert!(ring.submit().is_err(), "the kernel refuses while disabled");
        assert_eq!(
            ring.backlog(),
            296,
            "4 in the submission queue, the rest waiting in order"
        );
        assert!(ring.needs_enter());
        ring.ring
            .submitter()
            .register_enable_rings()
            .expect("enable");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 300 && std::time::Instant::now() < deadline {
            let _ = ring.submit();
            ring.reap(usize::MAX, &mut got);
        }
        assert_eq!(
            got.len(),
            300,
            "every entry reached the kernel and completed"
        );
        assert_eq!(ring.backlog(), 0);
        let mut tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..300).collect::<Vec<_>>());
        assert!(got.iter().all(|c| c.result == -libc::ENOENT));
    }

    #[test]
    fn a_multishot_timeout_completes_every_period() {
        let mut ring = Ring::new(8, 16).expect("ring");
        ring.timeout(std::time::Duration::from_millis(20), true, 7);
        ring.submit().expect("submit");
        let start = std::time::Instant::now();
        let mut seen = Vec::new();
        while seen.len() < 3 && start.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
            ring.reap(16, &mut seen);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        for c in &seen {
            assert_eq!((c.tag, c.result), (7, -libc::ETIME), "{c:?}");
            assert!(c.more, "a multishot timeout stays armed: {c:?}");
        }
        // Three periods of 20 ms passed (at least 60 ms, well before five seconds).
        assert!(start.elapsed() >= std::time::Duration::from_millis(60));
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
    }

    #[test]
    fn some_cpu_is_allowed() {
        assert!(!allowed_cpus().is_empty());
    }
}
