//! Opening one Phoenix V2 client connection: bind a source address, connect, upgrade, join.
//! Every failure is classified into a short, stable kind so runs can count them.

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::cli::Target;
use crate::proto::{self, Incoming};

pub type Ws = WebSocketStream<TcpStream>;

/// Why a connection did not get to "joined". `kind` is a short stable label for counting.
#[derive(Debug)]
pub struct OpenError {
    pub kind: String,
}

impl OpenError {
    fn new(kind: impl Into<String>) -> OpenError {
        OpenError { kind: kind.into() }
    }
}

fn io_kind(stage: &str, e: &std::io::Error) -> OpenError {
    let kind = match e.raw_os_error() {
        Some(111) => "refused".to_string(),     // ECONNREFUSED
        Some(99) => "addr_unavail".to_string(), // EADDRNOTAVAIL
        Some(98) => "addr_in_use".to_string(),  // EADDRINUSE
        Some(24) => "emfile".to_string(),       // EMFILE: this process is out of descriptors
        Some(110) => "timed_out".to_string(),   // ETIMEDOUT
        Some(104) => "reset".to_string(),       // ECONNRESET
        _ => format!("{:?}", e.kind()).to_lowercase(),
    };
    OpenError::new(format!("{stage}_{kind}"))
}

fn ws_kind(stage: &str, e: &tungstenite::Error) -> OpenError {
    use tungstenite::Error as E;
    match e {
        E::Http(resp) => OpenError::new(format!("{stage}_http_{}", resp.status().as_u16())),
        E::Io(io) => io_kind(stage, io),
        E::ConnectionClosed | E::AlreadyClosed => OpenError::new(format!("{stage}_closed")),
        E::Protocol(_) => OpenError::new(format!("{stage}_protocol")),
        E::Capacity(_) => OpenError::new(format!("{stage}_capacity")),
        _ => OpenError::new(format!("{stage}_other")),
    }
}

/// Small buffers: a generator holding tens of thousands of mostly idle sockets per process
/// cannot afford tungstenite's 128 KiB default read buffer each.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

/// An open, joined connection, and the server core that owns it (corecast's `x-corecast-core`
/// response header; None from servers that do not send it).
pub struct Opened {
    pub ws: Ws,
    pub core: Option<u32>,
}

/// Connect from `source` (any local address if None), upgrade, and join `topics` one after the
/// other with join refs 1, 2, ... Returns the open socket once every join is answered ok.
pub async fn open(
    target: &Target,
    source: Option<Ipv4Addr>,
    topics: &[String],
) -> Result<Opened, OpenError> {
    let Opened { mut ws, core } = upgrade(target, source).await?;
    for (i, topic) in topics.iter().enumerate() {
        let join_ref = i as u64 + 1;
        ws.send(Message::text(proto::join(join_ref, topic)))
            .await
            .map_err(|e| ws_kind("join_send", &e))?;
        await_reply(&mut ws, join_ref).await?;
    }
    Ok(Opened { ws, core })
}

/// Connect from `source` (any local address if None) and upgrade, joining nothing.
pub async fn upgrade(target: &Target, source: Option<Ipv4Addr>) -> Result<Opened, OpenError> {
    let sock = TcpSocket::new_v4().map_err(|e| io_kind("socket", &e))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip.into(), 0))
            .map_err(|e| io_kind("bind", &e))?;
    }
    let stream = sock
        .connect(target.addr)
        .await
        .map_err(|e| io_kind("connect", &e))?;
    let _ = stream.set_nodelay(true);
    let (ws, resp) = client_async_with_config(target.url.as_str(), stream, Some(ws_config()))
        .await
        .map_err(|e| ws_kind("upgrade", &e))?;
    let core = resp
        .headers()
        .get("x-corecast-core")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    Ok(Opened { ws, core })
}

/// Read until the reply to `msg_ref`; other messages are skipped.
async fn await_reply(ws: &mut Ws, msg_ref: u64) -> Result<(), OpenError> {
    let want = msg_ref.to_string();
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                let code = f.map_or(1005, |f| u16::from(f.code));
                return Err(OpenError::new(format!("join_close_{code}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_kind("join", &e)),
            None => return Err(OpenError::new("join_eof")),
        };
        match proto::parse(text.as_str()) {
            Ok(Incoming::Reply {
                msg_ref: Some(r),
                ok,
                ..
            }) if r == want => {
                return if ok {
                    Ok(())
                } else {
                    Err(OpenError::new("join_refused"))
                };
            }
            Ok(_) => continue,
            Err(_) => return Err(OpenError::new("join_malformed")),
        }
    }
}

/// Close like a browser does: send a close frame, then read until the server has answered it
/// and closed the connection (bounded by `limit`), so neither side sees a reset.
pub async fn close_politely(ws: &mut Ws, limit: std::time::Duration) {
    let _ = tokio::time::timeout(limit, async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A close code for counting: `close_1013`, `close_none`.
pub fn close_label(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close_{}", u16::from(f.code)),
        None => "close_none".to_string(),
    }
}

/// Label a read error for counting.
pub fn read_error_label(e: &tungstenite::Error) -> String {
    ws_kind("read", e).kind
}
