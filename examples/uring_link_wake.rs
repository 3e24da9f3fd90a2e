//! glommio's way of sleeping, without glommio (issue 17): does a timeout on one io_uring always
//! wake a thread that waits on a second ring which polls the first ring's descriptor?
//!
//! glommio keeps timers on its "latency" ring and, to sleep, waits on its main ring for one
//! completion: a poll on the latency ring's descriptor. Each thread here does exactly that in a
//! loop (`link`), or waits for a timeout on the ring it waits on (`direct`, the shape of
//! corecast's clock), and a watchdog reports every wait that takes over `--stall-ms`, then
//! rescues it through an eventfd the waiting ring also polls.
//!
//! ```text
//! cargo run --release --example uring_link_wake -- --mode link --threads 2 --sleep-us 1000 --secs 600
//! ```
//! Exits 1 if any wait stalled.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

const TIMEOUT: u64 = 1;
const LINK: u64 = 2;
const RESCUE: u64 = 3;

fn arg<'a>(args: &'a [String], name: &str, default: &'a str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default)
}

struct Probe {
    waits: AtomicU64,
    /// Nanoseconds since the start when the current wait began (0: not waiting).
    since: AtomicU64,
    rescue: std::fs::File,
}

fn eventfd() -> std::fs::File {
    // An eventfd through /proc is not possible; use the libc call.
    #[allow(unsafe_code)]
    // SAFETY: eventfd takes no pointers; the descriptor is checked and owned by the File.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        assert!(fd >= 0, "eventfd");
        std::os::fd::FromRawFd::from_raw_fd(fd)
    }
}

fn run(mode: &str, sleep: Duration, p: &Probe, start: Instant, stop: &AtomicBool) {
    let mut main = IoUring::new(64).expect("main ring");
    let mut lat = IoUring::new(64).expect("latency ring");
    let ts = types::Timespec::from(sleep);
    // The rescue eventfd: a multishot poll on the ring this thread waits on.
    let rescue = opcode::PollAdd::new(types::Fd(p.rescue.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(RESCUE);
    #[allow(unsafe_code)]
    // SAFETY: the entries point at `ts`, alive for the whole loop, and at no other memory.
    unsafe {
        main.submission().push(&rescue).unwrap();
    }
    while !stop.load(Ordering::Relaxed) {
        let timeout = opcode::Timeout::new(&ts).build().user_data(TIMEOUT);
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            if mode == "link" {
                lat.submission().push(&timeout).unwrap();
                lat.submit().unwrap();
                let poll = opcode::PollAdd::new(types::Fd(lat.as_raw_fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(LINK);
                main.submission().push(&poll).unwrap();
            } else {
                main.submission().push(&timeout).unwrap();
            }
        }
        p.since
            .store(start.elapsed().as_nanos() as u64 | 1, Ordering::SeqCst);
        // Wait until the timer's completion is seen (directly, or through the link's poll).
        let mut done = false;
        while !done {
            main.submit_and_wait(1)
                .or_else(|e| {
                    if e.raw_os_error() == Some(libc::EINTR) {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                })
                .unwrap();
            for c in main.completion() {
                match c.user_data() {
                    TIMEOUT | LINK => done = true,
                    _ => {
                        let mut b = [0u8; 8];
                        let _ = std::io::Read::read(&mut &p.rescue, &mut b);
                        done = true; // rescued: the link's poll may still complete later
                    }
                }
            }
        }
        for _ in lat.completion() {}
        p.since.store(0, Ordering::SeqCst);
        p.waits.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = arg(&args, "--mode", "link").to_string();
    let threads: usize = arg(&args, "--threads", "2").parse().unwrap();
    let sleep = Duration::from_micros(arg(&args, "--sleep-us", "1000").parse().unwrap());
    let secs: u64 = arg(&args, "--secs", "60").parse().unwrap();
    let stall = Duration::from_millis(arg(&args, "--stall-ms", "2000").parse().unwrap());
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let probes: Vec<Arc<Probe>> = (0..threads)
        .map(|_| {
            Arc::new(Probe {
                waits: AtomicU64::new(0),
                since: AtomicU64::new(0),
                rescue: eventfd(),
            })
        })
        .collect();
    let handles: Vec<_> = probes
        .iter()
        .map(|p| {
            let (p, stop, mode) = (p.clone(), stop.clone(), mode.clone());
            std::thread::spawn(move || run(&mode, sleep, &p, start, &stop))
        })
        .collect();
    let mut stalls = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        let now = start.elapsed().as_nanos() as u64;
        for (i, p) in probes.iter().enumerate() {
            let since = p.since.load(Ordering::SeqCst);
            if since != 0 && Duration::from_nanos(now.saturating_sub(since)) > stall {
                stalls += 1;
                println!(
                    "STALL thread={i} at={:.1}s waits_before={}",
                    start.elapsed().as_secs_f64(),
                    p.waits.load(Ordering::Relaxed)
                );
                let _ = std::io::Write::write(&mut &p.rescue, &1u64.to_ne_bytes());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in &probes {
        let _ = std::io::Write::write(&mut &p.rescue, &1u64.to_ne_bytes());
    }
    for h in handles {
        let _ = h.join();
    }
    let waits: u64 = probes.iter().map(|p| p.waits.load(Ordering::Relaxed)).sum();
    println!(
        "summary mode={mode} threads={threads} sleep_us={} secs={secs} waits={waits} stalls={stalls}",
        sleep.as_micros()
    );
    std::process::exit(if stalls > 0 { 1 } else { 0 });
}
