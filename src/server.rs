//! Start one pinned glommio executor per core, each with its own SO_REUSEPORT listener; stop them
//! all on request with a bounded drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use glommio::{LocalExecutorBuilder, Placement};
use tracing::info;

use crate::app::handler::{DefaultHandler, Handler};
use crate::config::Config;
use crate::runtime::shard::{Shard, Shared, Stats};
use crate::runtime::sys;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start executor for core {core}: {reason}")]
    Executor { core: usize, reason: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// How long a core may take to come up before the start is declared failed.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A running server: one thread per core.
pub struct Server {
    local_addr: SocketAddr,
    cores: usize,
    shutdown: Arc<AtomicBool>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Server {
    /// Bind every core's listener and start the executors. Returns once all cores listen.
    pub fn start(cfg: Config) -> Result<Server, StartError> {
        Server::start_with_flag(cfg, Arc::new(AtomicBool::new(false)))
    }

    /// Like [`Server::start`], stopping when `shutdown` becomes true (e.g. set by a signal handler).
    pub fn start_with_flag(cfg: Config, shutdown: Arc<AtomicBool>) -> Result<Server, StartError> {
        Server::start_with_handler(cfg, Arc::new(DefaultHandler), shutdown)
    }

    /// Start with an embedder's channel [`Handler`].
    pub fn start_with_handler(
        cfg: Config,
        handler: Arc<dyn Handler>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Server, StartError> {
        cfg.validate()?;
        let cpus = sys::allowed_cpus();
        let cores = if cfg.cores == 0 {
            cpus.len()
        } else {
            cfg.cores
        };
        // Bind every listener up front, so a port in use fails the start and port 0 resolves to
        // one port shared by all cores.
        let mut sockets = Vec::with_capacity(cores);
        let mut addr = cfg.listen;
        for _ in 0..cores {
            let s = sys::bind_reuseport(addr, cfg.backlog)
                .map_err(|source| StartError::Bind { addr, source })?;
            if addr.port() == 0 {
                addr = s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| StartError::Bind {
                        addr,
                        source: std::io::Error::other("no local address"),
                    })?;
            }
            sockets.push(s);
        }
        let shared = Arc::new(Shared {
            cfg: Arc::new(cfg),
            handler,
            stats: (0..cores).map(|_| Arc::new(Stats::default())).collect(),
            started: std::time::Instant::now(),
        });
        let limits = crate::runtime::mesh::Limits {
            envelopes: shared.cfg.mesh_outbox,
            bytes: shared.cfg.mesh_outbox_bytes,
        };
        let mesh = (cores > 1).then(|| crate::runtime::mesh::mesh(cores, limits));
        // Each core reports once it is accepting, or why it cannot (its readiness ring); a core
        // whose executor cannot start (e.g. RLIMIT_MEMLOCK too low for glommio's io_uring) drops
        // its sender without a word.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
        let mut threads = Vec::with_capacity(cores);
        for (core, socket) in sockets.into_iter().enumerate() {
            // More cores than CPUs is allowed (e.g. tests); they share CPUs round-robin.
            let cpu = cpus[core % cpus.len()];
            let shared = shared.clone();
            let mesh = mesh.clone();
            let flag = shutdown.clone();
            let ready = ready_tx.clone();
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("corecast-{core}"))
                .spawn(move || async move {
                    let listener = std::net::TcpListener::from(socket);
                    Shard::new(core, shared)
                        .run(listener, mesh, flag, ready)
                        .await;
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    shutdown.store(true, Ordering::SeqCst);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(StartError::Executor {
                        core,
                        reason: e.to_string(),
                    });
                }
            }
        }
        drop(ready_tx);
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        for _ in 0..cores {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let failed = match ready_rx.recv_timeout(left) {
                Ok(Ok(_)) => None,
                Ok(Err(reason)) => Some(Some(reason)),
                Err(_) => Some(None),
            };
            if let Some(reason) = failed {
                shutdown.store(true, Ordering::SeqCst);
                let mut reasons: Vec<String> = reason.into_iter().collect();
                for (core, t) in threads.into_iter().enumerate() {
                    if let Err(e) = t.join() {
                        reasons.push(format!("core {core}: {e}"));
                    }
                }
                return Err(StartError::Executor {
                    core: 0,
                    reason: if reasons.is_empty() {
                        "a core did not come up in time".into()
                    } else {
                        reasons.join("; ")
                    },
                });
            }
        }
        info!(%addr, cores, "listening");
        Ok(Server {
            local_addr: addr,
            cores,
            shutdown,
            threads,
        })
    }

    /// The address every core listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of cores (executors) running.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// Ask every core to drain and stop.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    /// Wait until every core has stopped. An error names each core that died abnormally.
    pub fn join(self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (core, t) in self.threads.into_iter().enumerate() {
            if let Err(e) = t.join() {
                failed.push(format!("core {core}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}
