//! corecast-bench: the load generator of corecast. See `corecast-bench --help`.
//!
//! The parent process coordinates; connections live in worker processes (the same binary run
//! with `--worker`) so a run can exceed one process's descriptor limit.

use std::process::ExitCode;

use clap::Parser;

mod broadcast;
mod cli;
mod client;
mod connect;
mod hist;
mod http;
mod plot;
mod pool;
mod presence;
mod probe;
mod proto;
mod publish;
mod report;
mod session;
mod tally;
mod worker;

use cli::{Cli, Command};

/// Raise this process's soft descriptor limit to its hard limit.
pub fn raise_nofile() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("corecast-bench: cannot raise the descriptor limit: {e}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if cli.worker {
        worker::main()
    } else {
        match cli.command {
            None => {
                eprintln!("corecast-bench: a scenario is needed (see --help)");
                return ExitCode::from(2);
            }
            Some(Command::Table { dirs }) => report::table(&dirs),
            Some(cmd) => run(cmd),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corecast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            Command::Connect(a) => connect::run(a).await,
            Command::Broadcast(a) => broadcast::run(a).await,
            Command::Presence(a) => presence::run(a).await,
            Command::Table { dirs } => report::table(&dirs),
        }
    })
}
