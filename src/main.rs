//! The `corecast` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use corecast::config::Config;
use corecast::server::Server;

/// corecast: a thread-per-core io_uring WebSocket server speaking Phoenix Channels.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (defaults work with no config file).
    Serve(ServeArgs),
    /// Mint a connection token (a JWT with expiry: HS256/384/512 with the server's `auth_secret`,
    /// RS256/ES256 with a private key file); prints it on stdout.
    Token(TokenArgs),
    /// Simulate N connections in this process without sockets (tables, state, subscriptions)
    /// and time one broadcast to all of them; prints JSON.
    Sim(SimArgs),
}

#[derive(Args)]
struct SimArgs {
    /// Virtual connections.
    #[arg(long, default_value_t = 2_000_000)]
    conns: usize,
    /// Cores (threads), each with its own shard.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Topics the connections are spread over; the broadcast goes to topic 0.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Every connection is tracked in its topic's presence (anonymous keys, a small meta).
    #[arg(long)]
    presence: bool,
}

#[derive(Args)]
struct TokenArgs {
    /// The server's `auth_secret` (HS256, HS384, HS512).
    #[arg(long, env = "CORECAST_AUTH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The JWT algorithm: HS256, HS384, HS512 (with --secret), RS256 or ES256 (with --key-file).
    #[arg(long, default_value = "HS256")]
    alg: String,
    /// PEM private key (RSA for RS256, EC P-256 for ES256).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// `kid` header (the key's id in the server's JWKS file).
    #[arg(long)]
    kid: Option<String>,
    /// `channels` claim: topic patterns the token may join, comma-separated (`room:*,lobby`).
    #[arg(long)]
    channels: Option<String>,
    /// `info` claim: JSON handed to the backend's hooks.
    #[arg(long)]
    info: Option<String>,
    /// `presence` claim: the socket's presence meta (a JSON object).
    #[arg(long)]
    presence: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    aud: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// Subject (user id) the token is issued to.
    #[arg(long, default_value = "anonymous")]
    sub: String,
    /// Lifetime in seconds from now.
    #[arg(long, default_value_t = 3600, conflicts_with = "exp_unix")]
    ttl_secs: u64,
    /// Absolute expiry, unix seconds (instead of --ttl-secs).
    #[arg(long)]
    exp_unix: Option<u64>,
    /// The server's `token_max_age_secs`: a token that would live longer is not minted (the
    /// server would refuse it) [default: the server's default, 86400].
    #[arg(long, value_name = "SECS")]
    max_age_secs: Option<u64>,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; any key it leaves out keeps its default, command-line options win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; every core binds it with SO_REUSEPORT [default: 0.0.0.0:4000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Number of cores, one pinned io_uring executor each [default: all CPUs this process may use].
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Also serve `GET /echo`, a plain RFC 6455 echo endpoint (for the Autobahn conformance suite).
    #[arg(long)]
    echo: bool,
    /// Largest frame payload accepted from a client, in bytes; larger closes with 1009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Largest reassembled message accepted from a client, in bytes; larger closes with 1009 [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message: Option<usize>,
    /// Close connections that have not sent a complete HTTP request within this time [default: 10000].
    #[arg(long, value_name = "MS")]
    handshake_timeout_ms: Option<u64>,
    /// Listen backlog of each core's socket [default: 4096].
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,
    /// On SIGTERM/SIGINT, how long connections get to close before exit [default: 10000].
    #[arg(long, value_name = "MS")]
    shutdown_timeout_ms: Option<u64>,
    /// Join a cluster over NATS: server URL(s), comma-separated (sets `[cluster] nats_url`).
    #[arg(
        long,
        value_name = "URLS",
        env = "CORECAST_NATS_URL",
        value_delimiter = ','
    )]
    nats_url: Option<Vec<String>>,
    /// This node's name in the cluster (sets `[cluster] node`) [default: hostname-pid].
    #[arg(long, value_name = "NAME", env = "CORECAST_NODE")]
    node: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Sim(args) => {
            let r = corecast::sim::run(args.conns, args.cores, args.topics, args.presence);
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            Ok(())
        }
        Command::Token(args) => token(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corecast: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `corecast token`: mint a token the server will accept (an expired one too, for tests), never
/// one that outlives `token_max_age_secs`.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let now = corecast::app::auth::now_unix();
    let max_age = args
        .max_age_secs
        .unwrap_or(Config::default().token_max_age_secs);
    let exp = match args.exp_unix {
        Some(exp) => exp,
        None => now.saturating_add(args.ttl_secs),
    };
    let lifetime = exp.saturating_sub(now);
    anyhow::ensure!(
        lifetime <= max_age,
        "a token living {lifetime} s would be refused by a server whose token_max_age_secs is          {max_age}; use a shorter --ttl-secs, or --max-age-secs with the server's setting"
    );
    use corecast::app::auth::{Claims, mint_claims};
    use jsonwebtoken::{Algorithm, EncodingKey};
    let alg: Algorithm = match args.alg.as_str() {
        a @ ("HS256" | "HS384" | "HS512" | "RS256" | "ES256") => a.parse()?,
        other => anyhow::bail!("--alg {other}: one of HS256, HS384, HS512, RS256, ES256"),
    };
    let key = match (alg, &args.secret, &args.key_file) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, Some(s), _) => {
            EncodingKey::from_secret(s.as_bytes())
        }
        (Algorithm::RS256, _, Some(p)) => EncodingKey::from_rsa_pem(&std::fs::read(p)?)?,
        (Algorithm::ES256, _, Some(p)) => EncodingKey::from_ec_pem(&std::fs::read(p)?)?,
        _ => anyhow::bail!("HS* needs --secret, RS256 and ES256 need --key-file"),
    };
    let json = |v: &Option<String>, what: &str| -> anyhow::Result<Option<serde_json::Value>> {
        v.as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--{what}: not JSON: {e}"))
    };
    let claims = Claims {
        sub: args.sub.clone(),
        exp,
        iat: Some(now),
        channels: args
            .channels
            .as_deref()
            .map(|c| c.split(',').map(str::to_string).collect()),
        info: json(&args.info, "info")?,
        presence: json(&args.presence, "presence")?,
        aud: args.aud.clone(),
        iss: args.iss.clone(),
        ..Claims::default()
    };
    println!("{}", mint_claims(alg, args.kid.as_deref(), &key, &claims)?);
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        cfg.listen = v;
    }
    if let Some(v) = args.cores {
        cfg.cores = v;
    }
    if args.echo {
        cfg.echo = true;
    }
    if let Some(v) = args.max_frame {
        cfg.max_frame = v;
    }
    if let Some(v) = args.max_message {
        cfg.max_message = v;
    }
    if let Some(v) = args.handshake_timeout_ms {
        cfg.handshake_timeout_ms = v;
    }
    if let Some(v) = args.backlog {
        cfg.backlog = v;
    }
    if let Some(v) = args.shutdown_timeout_ms {
        cfg.shutdown_timeout_ms = v;
    }
    if let Some(urls) = args.nats_url.filter(|u| !u.is_empty()) {
        cfg.cluster.get_or_insert_with(Default::default).nats_url = urls;
    }
    if let Some(node) = args.node {
        cfg.cluster.get_or_insert_with(Default::default).node = Some(node);
    }
    // SIGTERM/SIGINT: the handler sets the flag (all a handler may do), and a signal thread
    // then asks the cores to stop, waking each at once. A second signal exits without a drain.
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handler")?;
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).context("installing signal handler")?;
    }
    let server = Server::start_with_flag(cfg, shutdown)?;
    let stopper = server.stopper();
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    stopper.request();
                } else {
                    eprintln!("corecast: second signal ({sig}): exiting without a drain");
                    std::process::exit(128 + sig);
                }
            }
        })
        .context("starting the signal thread")?;
    // Tests and scripts read this line to learn the port.
    println!(
        "corecast listening on {} ({} cores)",
        server.local_addr(),
        server.cores()
    );
    server
        .join()
        .map_err(|e| anyhow::anyhow!("a core stopped abnormally: {e}"))?;
    eprintln!("corecast: stopped");
    Ok(())
}
