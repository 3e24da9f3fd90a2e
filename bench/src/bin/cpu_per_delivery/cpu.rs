//! The server's CPU, read from outside: `utime + stime` of `/proc/PID/stat` (clock ticks, 10 ms
//! here), and the same total at nanosecond resolution, summed over the threads'
//! `/proc/PID/task/TID/schedstat` (the kernel's per-thread run time, which it also scales
//! `utime + stime` to). Plus the whole machine's busy time from `/proc/stat`, to tell how much
//! else ran during a measurement.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;

pub struct Sample {
    utime: u64,
    stime: u64,
    threads: BTreeMap<u32, u64>,
    machine_busy: u64,
    self_ns: u64,
}

/// What a process used between two samples, in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    /// utime + stime (tick resolution).
    pub ticks_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    /// Sum of the threads' run time (ns resolution): the figure per delivery is made of this.
    pub exec_s: f64,
    /// Threads that ended between the samples (their run time since the first is missing).
    pub threads_gone: usize,
    /// All processes on the machine, busy (not idle or iowait) CPU seconds.
    pub machine_busy_s: f64,
    /// This client's own CPU.
    pub client_s: f64,
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is the server running?)"))?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3)
            .context("short /proc/PID/stat")?
            .parse()
            .context("bad /proc/PID/stat field")
    };
    let (utime, stime) = (num(14)?, num(15)?);
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread may end between the listing and the read: skip it.
        if let Ok(s) = std::fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok())
        {
            threads.insert(tid, ns);
        }
    }
    Ok(Sample {
        utime,
        stime,
        threads,
        machine_busy: machine_busy()?,
        self_ns: self_cpu_ns(),
    })
}

pub fn delta(a: &Sample, b: &Sample) -> Delta {
    let hz = ticks_per_s();
    let exec_ns: u64 = b
        .threads
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(a.threads.get(tid).copied().unwrap_or(0)))
        .sum();
    let threads_gone = a
        .threads
        .keys()
        .filter(|t| !b.threads.contains_key(t))
        .count();
    let user = b.utime.saturating_sub(a.utime) as f64 / hz;
    let sys = b.stime.saturating_sub(a.stime) as f64 / hz;
    Delta {
        ticks_s: user + sys,
        user_s: user,
        sys_s: sys,
        exec_s: exec_ns as f64 / 1e9,
        threads_gone,
        machine_busy_s: b.machine_busy.saturating_sub(a.machine_busy) as f64 / hz,
        client_s: b.self_ns.saturating_sub(a.self_ns) as f64 / 1e9,
    }
}

/// Busy ticks of all CPUs: the first line of /proc/stat less idle and iowait.
fn machine_busy() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy = v.iter().take(8).sum::<u64>()
        - v.get(3).copied().unwrap_or(0)
        - v.get(4).copied().unwrap_or(0);
    Ok(busy)
}

fn self_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF needs nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}
