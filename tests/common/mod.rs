//! Shared helpers for the integration tests: a real `corecast` process on real sockets. The one
//! place that writes config files ([`write_config`]), starts servers ([`TestServer`]) and opens
//! Phoenix sockets: raw ([`open_raw`], [`TestServer::open_phx`]) or with tungstenite
//! ([`ws_connect`], [`TestServer::phx_ws`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Where a Phoenix V2 client connects.
pub const PHX_PATH: &str = "/socket/websocket?vsn=2.0.0";

/// Write `config` (TOML text) to a file of its own (numbered: two configs never share a file)
/// and return its path.
pub fn write_config(config: &str) -> PathBuf {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("corecast-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{n}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

/// A `corecast serve` child process listening on an ephemeral loopback port.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl TestServer {
    /// Start `corecast serve --listen 127.0.0.1:0 <extra>` and wait for its "listening" line.
    pub fn start(extra: &[&str]) -> TestServer {
        TestServer::spawn("127.0.0.1:0", extra, "warn", Stdio::inherit())
    }

    /// Like [`TestServer::start`] with `config` (TOML text) written to a file of its own and
    /// passed as `--config`, before `extra`.
    pub fn start_with_config(config: &str, extra: &[&str]) -> TestServer {
        TestServer::start_on("127.0.0.1:0", config, extra)
    }

    /// Like [`TestServer::start_with_config`], listening on `listen` (e.g. `0.0.0.0:0`, to be
    /// reached from a non-loopback address); `addr` is then `0.0.0.0:PORT`, which connects
    /// over loopback.
    pub fn start_on(listen: &str, config: &str, extra: &[&str]) -> TestServer {
        TestServer::spawn_with_config(listen, config, extra, "warn", Stdio::inherit())
    }

    /// Like [`TestServer::start_with_config`] with logging at `level` written to `log`.
    pub fn start_logging(
        config: &str,
        extra: &[&str],
        level: &str,
        log: &std::path::Path,
    ) -> TestServer {
        let file = std::fs::File::create(log).expect("log file");
        TestServer::spawn_with_config("127.0.0.1:0", config, extra, level, Stdio::from(file))
    }

    /// Like [`TestServer::start_with_config`] with environment variables `env` set for the
    /// server (e.g. a fault injection).
    pub fn start_with_env(config: &str, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let path = write_config(config);
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        TestServer::spawn_env("127.0.0.1:0", &args, "warn", Stdio::inherit(), env)
    }

    fn spawn_with_config(
        listen: &str,
        config: &str,
        extra: &[&str],
        level: &str,
        stderr: Stdio,
    ) -> TestServer {
        let path = write_config(config);
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        TestServer::spawn(listen, &args, level, stderr)
    }

    fn spawn(listen: &str, extra: &[&str], level: &str, stderr: Stdio) -> TestServer {
        TestServer::spawn_env(listen, extra, level, stderr, &[])
    }

    fn spawn_env(
        listen: &str,
        extra: &[&str],
        level: &str,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> TestServer {
        // CORECAST_TEST_BIN runs a test against another build (e.g. an older release, to see
        // what the test catches); by default the one cargo just built.
        let bin = std::env::var_os("CORECAST_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_corecast").into());
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen])
            .args(extra)
            .env("RUST_LOG", level)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn corecast");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        TestServer { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn connect_tcp(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A raw socket upgraded on `GET /echo` (the server needs `--echo`).
    pub fn open_echo(&self) -> TcpStream {
        self.open("/echo", Open::default())
    }

    /// A raw Phoenix V2 socket (upgraded on [`PHX_PATH`]).
    pub fn open_phx(&self) -> TcpStream {
        self.open(PHX_PATH, Open::default())
    }

    /// A raw socket upgraded on `path`, opened as `how` says; any failure panics.
    pub fn open(&self, path: &str, how: Open) -> TcpStream {
        open_raw(self.addr, path, how).unwrap_or_else(|e| panic!("opening {path}: {e}"))
    }

    /// A tungstenite Phoenix V2 client with `read_timeout`, and the core that took it.
    pub fn phx_ws(&self, read_timeout: Duration) -> (Ws, u64) {
        ws_connect(&self.url(PHX_PATH), read_timeout)
    }

    /// A `/metrics` series summed over its labels (per-core series add up); 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        let mut s = self.connect_tcp();
        s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The server's resident set size, from /proc/PID/status (no request to the server).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM {pid} failed");
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP exchange: send `request`, read until the peer closes or the head is complete.
/// Returns (status, head text).
pub fn http_exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String) {
    stream.write_all(request).expect("write request");
    read_head(stream)
}

/// Read an HTTP response head (through the blank line).
pub fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!(
                "reading response head: {e}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// A well-formed upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Value of a response header (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Read one server frame (unmasked) from a raw stream: (opcode, payload).
pub fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

/// Read frames until a close frame arrives; return its code (None for an empty close body).
pub fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (op, payload) = read_frame(stream).expect("expected a close frame");
        if op == 8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// True once the peer has closed the TCP connection (read returns 0 or reset) within `limit`.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
    false
}

/// Mask used by the raw test clients.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Send one JSON value as a masked text frame (a raw Phoenix V2 client).
pub fn send_json(stream: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut out = Vec::new();
    corecast::proto::frame::encode_masked(
        &mut out,
        corecast::proto::frame::OpCode::Text,
        true,
        v.to_string().as_bytes(),
        MASK,
    );
    stream.write_all(&out)
}

/// What a raw client reads next: a JSON text message or the server's close.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Json(Value),
    Close(Option<u16>),
}

/// Read the next text message or close frame, skipping other control frames.
pub fn recv_incoming(stream: &mut TcpStream) -> std::io::Result<Incoming> {
    loop {
        let (op, payload) = read_frame(stream)?;
        match op {
            1 => {
                return serde_json::from_slice(&payload)
                    .map(Incoming::Json)
                    .map_err(std::io::Error::other);
            }
            8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Ok(Incoming::Close(code));
            }
            _ => continue,
        }
    }
}

/// Read the next JSON text message; a close frame is an error.
pub fn recv_json(stream: &mut TcpStream) -> std::io::Result<Value> {
    match recv_incoming(stream)? {
        Incoming::Json(v) => Ok(v),
        Incoming::Close(code) => Err(std::io::Error::other(format!("closed by server: {code:?}"))),
    }
}

/// How [`open_raw`] opens a socket. The default: any core, the kernel's buffers, any source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open {
    /// Open until the 101 says this core took the connection (the kernel spreads connections
    /// over the cores' listeners).
    pub core: Option<u64>,
    /// `SO_RCVBUF` set before connecting: a small one makes a peer that stops reading fill up
    /// (a subscriber that will stall).
    pub rcvbuf: Option<usize>,
    /// Bind to this local address first (to spread connections over source addresses).
    pub source: Option<[u8; 4]>,
}

/// A raw socket to `addr` upgraded on `path` (read timeout 10 s, no Nagle), opened as `how`
/// says. A refused connection or an answer other than 101 is an error.
pub fn open_raw(addr: SocketAddr, path: &str, how: Open) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    for _ in 0..200 {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if let Some(size) = how.rcvbuf {
            sock.set_recv_buffer_size(size)?;
        }
        if let Some(ip) = how.source {
            sock.bind(&SocketAddr::from((ip, 0)).into())?;
        }
        sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        let (status, head) = http_exchange(&mut s, upgrade_request(path).as_bytes());
        if status != 101 {
            return Err(std::io::Error::other(format!("upgrade: {status}: {head}")));
        }
        let core = header(&head, "x-corecast-core").and_then(|c| c.parse().ok());
        if how.core.is_none() || core == how.core {
            return Ok(s);
        }
    }
    Err(std::io::Error::other(format!(
        "no connection landed on core {:?}",
        how.core
    )))
}

/// A tungstenite client.
pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A tungstenite client on `url` with `read_timeout`, and the core that took it.
pub fn ws_connect(url: &str, read_timeout: Duration) -> (Ws, u64) {
    let (ws, resp) = tungstenite::connect(url).expect("connect");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(read_timeout)).unwrap();
    }
    let core = resp.headers()["x-corecast-core"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (ws, core)
}

/// Send one JSON value as a text message.
pub fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Read the next JSON text message, skipping pings and pongs; anything else panics.
pub fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}
