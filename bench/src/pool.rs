//! The parent's side of the worker processes: start them, follow their events, print progress,
//! stop them, and collect their reports. Every wait is bounded; a worker that does not finish
//! in time is killed.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep};

use crate::cli::{Common, parse_source_ips, split, workers_needed};
use crate::connect::topic_names;
use crate::session::lock;
use crate::worker::{Event, Progress, Ready, Report, Spec};

/// What both scenarios start: `n` sockets over `topics` topics, opened at `rate` per second in
/// total, split over enough worker processes, each told how long it may live.
pub struct Fleet {
    pub workers: usize,
    pub source_ips: usize,
    pub topics: Vec<String>,
    pub specs: Vec<Spec>,
    /// How long the ramp may take before the parent stops waiting for it.
    pub ramp_limit: Duration,
}

/// Plan a fleet. `busy_secs` is how long the scenario keeps the sockets after the ramp.
pub fn plan(
    c: &Common,
    n: usize,
    rate: f64,
    topics: usize,
    busy_secs: u64,
    progress_ms: u64,
) -> anyhow::Result<Fleet> {
    let ips = parse_source_ips(&c.source_ips)?;
    let workers = workers_needed(n, c.workers, c.per_process);
    let topics = topic_names(&c.topic_prefix, topics);
    let ramp_limit = Duration::from_secs_f64(n as f64 / rate * 2.0 + 30.0)
        + Duration::from_millis(c.connect_timeout_ms);
    let lifetime = ramp_limit.as_secs() + busy_secs + 120;
    let specs = split(n, workers)
        .into_iter()
        .enumerate()
        .map(|(index, (first, count))| Spec {
            index,
            url: c.url.clone(),
            source_ips: ips.clone(),
            first,
            count,
            topics: topics.clone(),
            rate: rate * count as f64 / n as f64,
            max_inflight: (c.max_inflight / workers).max(1),
            connect_timeout_ms: c.connect_timeout_ms,
            heartbeat_secs: c.heartbeat_secs,
            progress_ms,
            lifetime_secs: lifetime,
        })
        .collect();
    Ok(Fleet {
        workers,
        source_ips: ips.len(),
        topics,
        specs,
        ramp_limit,
    })
}

#[derive(Default)]
struct State {
    progress: Vec<Progress>,
    ready: Vec<Option<Ready>>,
    done: Vec<Option<Report>>,
    ended: Vec<bool>,
}

pub struct Pool {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    state: Arc<Mutex<State>>,
    total: u64,
    label: String,
}

impl Pool {
    /// Start one worker per spec.
    pub async fn spawn(label: &str, specs: Vec<Spec>) -> anyhow::Result<Pool> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let n = specs.len();
        let state = Arc::new(Mutex::new(State {
            progress: vec![Progress::default(); n],
            ready: vec![None; n],
            done: vec![None; n],
            ended: vec![false; n],
        }));
        let mut pool = Pool {
            children: Vec::new(),
            stdins: Vec::new(),
            state: state.clone(),
            total: specs.iter().map(|s| s.count as u64).sum(),
            label: label.to_string(),
        };
        for (i, spec) in specs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("--worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting worker {i}"))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(spec)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            let st = state.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut s = lock(&st);
                    match serde_json::from_str::<Event>(&l) {
                        Ok(Event::Progress(p)) => s.progress[i] = p,
                        Ok(Event::Ready(r)) => {
                            s.progress[i] = r.progress;
                            s.ready[i] = Some(r);
                        }
                        Ok(Event::Done(r)) => {
                            s.progress[i] = r.progress;
                            s.done[i] = Some(*r);
                        }
                        Err(e) => eprintln!("corecast-bench: worker {i} said {l:?}: {e}"),
                    }
                }
                lock(&st).ended[i] = true;
            });
            pool.children.push(child);
            pool.stdins.push(Some(stdin));
        }
        Ok(pool)
    }

    /// Progress summed over workers.
    pub fn totals(&self) -> Progress {
        let mut t = Progress::default();
        for p in &lock(&self.state).progress {
            t.add(p);
        }
        t
    }

    fn all(&self, f: impl Fn(&State, usize) -> bool) -> bool {
        let s = lock(&self.state);
        (0..s.ended.len()).all(|i| f(&s, i))
    }

    /// Wait until every worker has opened its connections (or ended), printing progress each
    /// second. Returns the ready reports (workers that ended without one are left out).
    pub async fn wait_ready(&self, limit: Duration) -> Vec<Ready> {
        let start = Instant::now();
        let mut last_print = start;
        loop {
            if self.all(|s, i| s.ready[i].is_some() || s.ended[i]) {
                break;
            }
            if start.elapsed() > limit {
                eprintln!("[{}] ramp did not finish within {limit:?}", self.label);
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                self.print_progress(start);
            }
            sleep(Duration::from_millis(50)).await;
        }
        self.print_progress(start);
        lock(&self.state).ready.iter().flatten().cloned().collect()
    }

    pub fn print_progress(&self, since: Instant) {
        let t = self.totals();
        let secs = since.elapsed().as_secs_f64();
        eprintln!(
            "[{}] {secs:6.1}s  attempted {}/{}  joined {}  failed {}  open {}  ({:.0} joins/s)",
            self.label,
            t.attempted,
            self.total,
            t.joined,
            t.failed,
            t.open,
            t.joined as f64 / secs.max(1e-3)
        );
    }

    /// Tell every worker to stop, wait for their reports (bounded), reap or kill them.
    pub async fn finish(mut self, limit: Duration) -> Vec<Report> {
        for stdin in &mut self.stdins {
            if let Some(mut s) = stdin.take() {
                let _ = s.write_all(b"stop\n").await;
                let _ = s.flush().await;
            }
        }
        let start = Instant::now();
        while !self.all(|s, i| s.done[i].is_some() || s.ended[i]) && start.elapsed() < limit {
            sleep(Duration::from_millis(20)).await;
        }
        for (i, child) in self.children.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(3), child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    eprintln!("[{}] worker {i} exited with {status}", self.label)
                }
                Ok(_) => {}
                Err(_) => {
                    eprintln!("[{}] worker {i} did not exit: killing it", self.label);
                    let _ = child.kill().await;
                }
            }
        }
        let s = lock(&self.state);
        for (i, d) in s.done.iter().enumerate() {
            if d.is_none() {
                eprintln!("[{}] worker {i} sent no report", self.label);
            }
        }
        s.done.iter().flatten().cloned().collect()
    }
}
