//! A minimal HTTP/1.1 client for the server's plain endpoints (`/metrics`, `/api/broadcast`):
//! one request per connection, `Connection: close`, read to EOF. Bounded in time and size.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read (a /metrics page of a many-core server is well under this).
const MAX_RESPONSE: u64 = 4 << 20;

/// Send one request; returns the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let body = body.map(<[u8]>::to_vec);
    request_with(addr, method, path, move || body, timeout).await
}

/// Like [`request`], with the body made once the connection is up (so a timestamp in it does
/// not include the TCP connect).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    make_body: impl FnOnce() -> Option<Vec<u8>>,
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    tokio::time::timeout(timeout, request_inner(addr, method, path, make_body))
        .await
        .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    make_body: impl FnOnce() -> Option<Vec<u8>>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let body = make_body();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = &body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.as_deref().unwrap_or_default());
    stream.write_all(&bytes).await.context("sending request")?;
    let mut resp = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut resp)
        .await
        .context("reading response")?;
    parse_response(&resp)
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
    }
}
