//! Does glommio's `timer::sleep` ever fail to wake an idle executor on this machine? (issue 17)
//!
//! Runs `--executors` glommio executors, each doing nothing but `timer::sleep(--sleep-us)` in a
//! loop (the shape of a quiet corecast core: one timer, no I/O), and a watchdog thread that
//! reports every executor whose loop has not moved for `--stall-ms`. Bounded by `--secs`.
//!
//! ```text
//! cargo run --release --example glommio_timer_loss -- --executors 2 --sleep-us 1000 --secs 600
//! ```
//!
//! Prints one line per stall seen (executor, how long, sleeps done before) and a summary line;
//! exits 1 if any executor stalled. A stalled executor is woken by the watchdog through a foreign
//! waker (the way corecast's bell thread wakes a core), so the run goes on and counts them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

struct Probe {
    /// Sleeps completed.
    sleeps: AtomicU64,
    /// Nanoseconds since the start at the last completed sleep.
    last: AtomicU64,
    /// The loop's waker while it sleeps, for the watchdog's rescue.
    waker: Mutex<Option<Waker>>,
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let executors = arg(&args, "--executors", 2) as usize;
    let sleep = Duration::from_micros(arg(&args, "--sleep-us", 1000));
    let secs = arg(&args, "--secs", 60);
    let stall = Duration::from_millis(arg(&args, "--stall-ms", 2000));
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut probes = Vec::new();
    let mut threads = Vec::new();
    for i in 0..executors {
        let p = Arc::new(Probe {
            sleeps: AtomicU64::new(0),
            last: AtomicU64::new(0),
            waker: Mutex::new(None),
        });
        probes.push(p.clone());
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&format!("probe-{i}"))
                .make()
                .expect("executor")
                .run(async move {
                    while !stop.load(Ordering::Relaxed) {
                        sleep_reachable(glommio::timer::Timer::new(sleep), &p).await;
                        p.sleeps.fetch_add(1, Ordering::Relaxed);
                        p.last
                            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                })
        }));
    }
    let mut stalls = 0u64;
    let mut stalled = vec![false; executors];
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100));
        let now = start.elapsed().as_nanos() as u64;
        for (i, p) in probes.iter().enumerate() {
            let gap = Duration::from_nanos(now.saturating_sub(p.last.load(Ordering::Relaxed)));
            if gap > stall && !stalled[i] {
                stalled[i] = true;
                stalls += 1;
                println!(
                    "STALL executor={i} at={:.1}s gap={:.1}s sleeps_before={}",
                    start.elapsed().as_secs_f64(),
                    gap.as_secs_f64(),
                    p.sleeps.load(Ordering::Relaxed)
                );
                if let Some(w) = p.waker.lock().unwrap().take() {
                    w.wake(); // rescue: a foreign wake, as corecast's bell does
                }
            } else if gap <= stall {
                stalled[i] = false;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in &probes {
        if let Some(w) = p.waker.lock().unwrap().take() {
            w.wake();
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let total: u64 = probes
        .iter()
        .map(|p| p.sleeps.load(Ordering::Relaxed))
        .sum();
    println!(
        "summary executors={executors} sleep_us={} secs={secs} sleeps={total} stalls={stalls}",
        sleep.as_micros()
    );
    std::process::exit(if stalls > 0 { 1 } else { 0 });
}

/// Await `timer`, keeping the task's waker where the watchdog can reach it; a rescue wake polls
/// the timer again (it completes once glommio has noticed that its time passed).
async fn sleep_reachable(timer: glommio::timer::Timer, p: &Probe) {
    let mut timer = std::pin::pin!(timer);
    std::future::poll_fn(|cx| {
        *p.waker.lock().unwrap() = Some(cx.waker().clone());
        timer.as_mut().poll(cx)
    })
    .await;
}

use std::future::Future;
