//! The ways of sending the broadcasts of one measurement, each timed by the coordinator
//! between two CPU samples of the server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::msg;
use crate::ws::{self, OP_TEXT};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    /// `POST /api/broadcast`, a new TCP connection for every request (`Connection: close`).
    ApiPerRequest,
    /// One joined socket pushes every message back to back (one write each, no wait).
    Socket,
    /// `POST /api/broadcast` over one keep-alive connection, request after request; a new
    /// connection only when the server closes the one it had (counted).
    ApiKeepalive,
    /// C floor: one write() per delivery, message by message.
    CWrite,
    /// C floor: all messages in one write() per socket.
    CBatch,
}

/// What the publishing side saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Publish {
    pub requests: u64,
    /// TCP connections the publisher opened.
    pub connections: u64,
    /// HTTP statuses answered, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Responses that said `Connection: close`.
    pub close_headers: u64,
    /// Keep-alive connections found closed by the server on reuse (the request was re-sent).
    pub reused_closed: u64,
    /// Socket way: ok replies and the publisher's own copies of its broadcasts.
    pub replies_ok: u64,
    pub own_copies: u64,
    /// C floor: its own report (getrusage around its write loop).
    pub c_floor: Option<String>,
}

fn api_request(addr: SocketAddr, body: &str, keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn connect(addr: SocketAddr, p: &mut Publish) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr).await.context("API connect")?;
    let _ = s.set_nodelay(true);
    p.connections += 1;
    Ok(s)
}

/// Way 1: one connection per request; read each response, then to EOF, before the next.
pub async fn api_per_request(addr: SocketAddr, payloads: &[String]) -> anyhow::Result<Publish> {
    let mut p = Publish::default();
    for payload in payloads {
        let mut s = connect(addr, &mut p).await?;
        s.write_all(&api_request(addr, &msg::api_body(payload), false))
            .await?;
        let mut buf = Vec::new();
        let r = ws::read_response(&mut s, &mut buf)
            .await?
            .context("closed without a response")?;
        p.requests += 1;
        *p.statuses.entry(r.status).or_default() += 1;
        p.close_headers += u64::from(r.close);
        let mut rest = [0u8; 256];
        while s.read(&mut rest).await? > 0 {}
    }
    Ok(p)
}

/// Way 3: one keep-alive connection, request after request, reconnecting only when the server
/// says `Connection: close` or has closed it.
pub async fn api_keepalive(addr: SocketAddr, payloads: &[String]) -> anyhow::Result<Publish> {
    let mut p = Publish::default();
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    for payload in payloads {
        let req = api_request(addr, &msg::api_body(payload), true);
        let r = loop {
            let reused = conn.is_some();
            let (s, buf) = match &mut conn {
                Some(c) => c,
                None => conn.insert((connect(addr, &mut p).await?, Vec::new())),
            };
            let outcome = match s.write_all(&req).await {
                Ok(()) => ws::read_response(s, buf).await,
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(Some(r)) => break r,
                // A kept connection the server had closed: send again on a new one (a new
                // connection that fails is an error, so this loop ends).
                Ok(None) | Err(_) if reused => {
                    p.reused_closed += 1;
                    conn = None;
                }
                Ok(None) => bail!("server closed a new connection without a response"),
                Err(e) => return Err(e),
            }
        };
        p.requests += 1;
        *p.statuses.entry(r.status).or_default() += 1;
        if r.close {
            p.close_headers += 1;
            if let Some((mut s, _)) = conn.take() {
                let mut rest = [0u8; 256];
                while s.read(&mut rest).await? > 0 {}
            }
        }
    }
    Ok(p)
}

/// The publisher socket of way 2, joined before the measurement starts.
pub struct Pusher {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Pusher {
    pub async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<Pusher> {
        let (mut stream, mut buf) = ws::open(addr, path, u64::MAX).await?;
        let mut out = Vec::new();
        ws::masked_text(&mut out, &msg::join(), [1, 2, 3, 4]);
        stream.write_all(&out).await?;
        loop {
            if let Some((_, range, len)) = ws::parse(&buf)? {
                anyhow::ensure!(msg::is_ok_reply(&buf[range], "1"), "publisher join refused");
                buf.drain(..len);
                return Ok(Pusher { stream, buf });
            }
            buf.reserve(4096);
            anyhow::ensure!(
                self_read(&mut stream, &mut buf).await? > 0,
                "EOF before join reply"
            );
        }
    }

    /// Way 2: push every message, one write each, back to back; then read until every push is
    /// answered and every own copy is back.
    pub async fn push_all(&mut self, payloads: &[String]) -> anyhow::Result<Publish> {
        let mut p = Publish::default();
        let mut out = Vec::with_capacity(128);
        for (k, payload) in payloads.iter().enumerate() {
            out.clear();
            ws::masked_text(&mut out, &msg::push(k, payload), [9, 8, 7, 6]);
            self.stream.write_all(&out).await?;
            p.requests += 1;
        }
        let want = payloads.len() as u64;
        while p.replies_ok < want || p.own_copies < want {
            while let Some((op, range, len)) = ws::parse(&self.buf)? {
                let text = &self.buf[range];
                if op == OP_TEXT && msg::parse_id(text).is_some() {
                    p.own_copies += 1;
                } else if op == OP_TEXT && text.starts_with(br#"["1",""#) {
                    if msg::contains(text, br#""status":"ok""#) {
                        p.replies_ok += 1;
                    } else {
                        bail!("push refused: {}", String::from_utf8_lossy(text));
                    }
                }
                self.buf.drain(..len);
            }
            if p.replies_ok >= want && p.own_copies >= want {
                break;
            }
            self.buf.reserve(8192);
            anyhow::ensure!(
                self_read(&mut self.stream, &mut self.buf).await? > 0,
                "publisher closed by the server"
            );
        }
        Ok(p)
    }
}

async fn self_read(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    s.read_buf(buf).await
}

/// Make the C floor close the sockets of an earlier client (it never reads them again, so it
/// would go on writing to them).
pub async fn c_floor_reset(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await.context("C floor connect")?;
    s.write_all(b"RESET\n").await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .context("the C floor did not answer RESET within 10 s")??;
    anyhow::ensure!(answer.starts_with("ok "), "C floor: {answer:?}");
    Ok(answer.trim().to_string())
}

/// The C floor's ways: one control connection says go, carrying the texts.
pub async fn c_floor(
    addr: SocketAddr,
    payloads: &[String],
    batch: usize,
) -> anyhow::Result<Publish> {
    let mut p = Publish::default();
    let mut s = connect(addr, &mut p).await?;
    let mut line = format!("GO {batch} {}\n", payloads.len());
    for payload in payloads {
        line.push_str(&msg::broadcast_text(payload));
        line.push('\n');
    }
    s.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut answer))
        .await
        .context("the C floor did not answer within 60 s")??;
    let answer = answer.trim().to_string();
    anyhow::ensure!(answer.starts_with("ok "), "C floor: {answer:?}");
    // Writes that failed (a socket gone) would be cost without a delivery.
    anyhow::ensure!(answer.ends_with(" errors=0"), "C floor: {answer:?}");
    p.requests = payloads.len() as u64;
    p.c_floor = Some(answer);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A stand-in API server: answers every request 202, with `header`, and closes the
    /// connection after each answer when `close` (whether or not it said so).
    fn api_server(header: &'static str, close: bool) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: head, then Content-Length bytes.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let len: usize = head
                                .split("content-length:")
                                .nth(1)
                                .and_then(|v| v.lines().next())
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            buf.drain(..end + 4 + len);
                            let resp = format!(
                                "HTTP/1.1 202 Accepted\r\n{header}content-length: 0\r\n\r\n"
                            );
                            if s.write_all(resp.as_bytes()).is_err() || close {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    async fn keepalive(addr: SocketAddr) -> Publish {
        let payloads: Vec<String> = (0..5).map(|k| msg::payload(1, k)).collect();
        api_keepalive(addr, &payloads).await.unwrap()
    }

    #[tokio::test]
    async fn keepalive_counts_the_connections_a_server_makes_it_open() {
        let kept = keepalive(api_server("", false)).await;
        assert_eq!(
            (kept.requests, kept.connections, kept.close_headers),
            (5, 1, 0)
        );
        assert_eq!(kept.statuses.get(&202), Some(&5));

        let said = keepalive(api_server("Connection: close\r\n", true)).await;
        assert_eq!(
            (said.connections, said.close_headers, said.reused_closed),
            (5, 5, 0)
        );

        // Closed without a word: found on reuse, the request sent again on a new connection.
        let silent = keepalive(api_server("", true)).await;
        assert_eq!((silent.requests, silent.connections), (5, 5));
        assert_eq!(silent.reused_closed, 4);
        assert_eq!(silent.statuses.get(&202), Some(&5));
    }
}
