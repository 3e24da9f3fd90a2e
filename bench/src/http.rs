//! A minimal HTTP/1.1 client for the server's plain endpoints (`/metrics`, `/api/broadcast`):
//! one-shot requests ([`request`]: `Connection: close`, read to EOF) and a keep-alive
//! connection ([`KeepAlive`]: requests one after another on one connection, responses read by
//! their `Content-Length`, reconnecting when the server has closed it). Bounded in time and
//! size.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response read (a /metrics page of a many-core server is well under this).
const MAX_RESPONSE: u64 = 4 << 20;
/// Largest response head read on a keep-alive connection.
const MAX_HEAD: usize = 16 << 10;

/// Send one request on a connection of its own; returns the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, body))
        .await
        .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let bytes = encode(addr, method, path, body, false);
    stream.write_all(&bytes).await.context("sending request")?;
    let mut resp = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut resp)
        .await
        .context("reading response")?;
    parse_response(&resp)
}

/// The bytes of a request (`Content-Type: application/json` when it has a body).
fn encode(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    keep_alive: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// One HTTP/1.1 keep-alive connection to `addr`, opened on first use. Requests go one after
/// another (each answered before the next is sent), so the server handles them in their order
/// on one core. When the server has closed the connection (its keep-alive wait, a drain, an
/// answer with `Connection: close`), the next request opens a new one; a request that found
/// the old connection closed before any byte of its answer is sent again on a new one (the
/// server did not read it).
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened after the first.
    pub reconnects: u64,
    opened: u64,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            conn: None,
            reconnects: 0,
            opened: 0,
        }
    }

    /// Send one request, with the body `make_body` makes once a connection is up (so a
    /// timestamp in it does not include a TCP connect); returns the status and the body.
    pub async fn request_with(
        &mut self,
        method: &str,
        path: &str,
        make_body: impl FnOnce() -> Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let work = async {
            let reused = self.conn.is_some();
            self.connect().await?;
            let bytes = encode(self.addr, method, path, make_body().as_deref(), true);
            match self.exchange(&bytes).await {
                Err(Failed::BeforeAnswer(_)) if reused => {
                    self.conn = None;
                    self.connect().await?;
                    self.exchange(&bytes).await.map_err(Failed::into_error)
                }
                other => other.map_err(Failed::into_error),
            }
        };
        let result = tokio::time::timeout(timeout, work)
            .await
            .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))
            .and_then(|r| r);
        if result.is_err() {
            self.conn = None; // the stream is in an unknown state
        }
        result
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        let _ = stream.set_nodelay(true);
        if self.opened > 0 {
            self.reconnects += 1;
        }
        self.opened += 1;
        self.conn = Some(BufReader::new(stream));
        Ok(())
    }

    /// Write `bytes` and read one response.
    async fn exchange(&mut self, bytes: &[u8]) -> Result<(u16, Vec<u8>), Failed> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failed::BeforeAnswer(anyhow::anyhow!("not connected")));
        };
        let before = |e: std::io::Error, what: &'static str| {
            Failed::BeforeAnswer(anyhow::Error::new(e).context(what))
        };
        conn.get_mut()
            .write_all(bytes)
            .await
            .map_err(|e| before(e, "sending request"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && head.len() <= MAX_HEAD {
            let n = conn.read_until(b'\n', &mut head).await;
            match n {
                Ok(0) if head.is_empty() => {
                    let e = anyhow::anyhow!("connection closed by the server");
                    return Err(Failed::BeforeAnswer(e));
                }
                Ok(0) => return Err(Failed::During(anyhow::anyhow!("closed mid-response"))),
                Ok(_) => {}
                Err(e) if head.is_empty() => return Err(before(e, "reading response")),
                Err(e) => return Err(Failed::During(e.into())),
            }
        }
        let (code, close, len) = response_head(&head).map_err(Failed::During)?;
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| Failed::During(anyhow::Error::new(e).context("reading body")))?;
        if close {
            self.conn = None;
        }
        Ok((code, body))
    }
}

/// Where an exchange on a keep-alive connection failed.
enum Failed {
    /// Before any byte of the answer: the server closed the connection without reading the
    /// request (its keep-alive wait was over), so it may be sent again on a new one.
    BeforeAnswer(anyhow::Error),
    /// In the middle of the answer.
    During(anyhow::Error),
}

impl Failed {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failed::BeforeAnswer(e) | Failed::During(e) => e,
        }
    }
}

/// Status, whether the server closes after it, and the body length of a response head.
fn response_head(head: &[u8]) -> anyhow::Result<(u16, bool, usize)> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("incomplete HTTP response head ({} bytes)", head.len());
    };
    let (code, _) = parse_response(&head[..end + 4])?;
    let text = std::str::from_utf8(&head[..end]).context("response head is not UTF-8")?;
    let value = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let len = match value("content-length") {
        Some(v) => v
            .parse()
            .with_context(|| format!("bad Content-Length {v:?}"))?,
        None => bail!("no Content-Length on a keep-alive response"),
    };
    if len as u64 > MAX_RESPONSE {
        bail!("response body of {len} bytes");
    }
    Ok((code, close, len))
}

/// Split a complete response into status and body.
pub fn parse_response(resp: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("incomplete HTTP response ({} bytes)", resp.len());
    };
    let head = std::str::from_utf8(&resp[..end]).context("response head is not UTF-8")?;
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("bad status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok((code, resp[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let (c, b) =
            parse_response(b"HTTP/1.1 202 Accepted\r\nA: b\r\n\r\n{\"ok\":true}\n").unwrap();
        assert_eq!((c, b.as_slice()), (202, b"{\"ok\":true}\n".as_slice()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        let head = b"HTTP/1.1 202 Accepted\r\nconnection: Close\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(response_head(head).unwrap(), (202, true, 12));
        assert!(
            response_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err(),
            "no length"
        );
    }

    /// A server that answers `per_conn` requests on each connection, then closes it.
    async fn server(per_conn: usize) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut conns = 0;
            while let Ok((s, _)) = listener.accept().await {
                conns += 1;
                let mut s = BufReader::new(s);
                for i in 0..per_conn {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read_until(b'\n', &mut head).await.unwrap_or(0) == 0 {
                            break;
                        }
                    }
                    let body = format!("{conns}.{i}");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.get_mut().write_all(resp.as_bytes()).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn keep_alive_reuses_and_reconnects() {
        let addr = server(2).await;
        let mut c = KeepAlive::new(addr);
        let limit = Duration::from_secs(5);
        let mut got = Vec::new();
        for _ in 0..5 {
            let (code, body) = c.request_with("GET", "/", || None, limit).await.unwrap();
            assert_eq!(code, 200);
            got.push(String::from_utf8(body).unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await; // let the close arrive
        }
        // Two per connection; the request that found a connection closed went on a new one.
        assert_eq!(got, ["1.0", "1.1", "2.0", "2.1", "3.0"]);
        assert_eq!(c.reconnects, 2);
    }
}
