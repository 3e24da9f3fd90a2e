//! Just enough of a WebSocket client (RFC 6455) and of HTTP/1.1 for this measurement: the
//! upgrade (with the Sec-WebSocket-Accept check), masked text frames out, unmasked frames in,
//! and one `POST /api/broadcast` response at a time.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;
/// Largest HTTP response head read.
const MAX_HEAD: usize = 16 * 1024;

/// Connect and upgrade. Returns the stream and any frame bytes that came with the 101.
pub async fn open(addr: SocketAddr, path: &str, seed: u64) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    let _ = stream.set_nodelay(true);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&seed.to_le_bytes());
    raw[8..].copy_from_slice(&0x6370_755f_6465_6c69u64.to_le_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .context("upgrade request")?;
    let mut buf = Vec::with_capacity(1024);
    let head_len = read_head(&mut stream, &mut buf).await?;
    let head = std::str::from_utf8(&buf[..head_len]).context("101 head is not UTF-8")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "101" {
        bail!("upgrade answered {status}");
    }
    let want = derive_accept_key(key.as_bytes());
    if header(head, "sec-websocket-accept") != Some(want.as_str()) {
        bail!("wrong or missing Sec-WebSocket-Accept");
    }
    buf.drain(..head_len);
    Ok((stream, buf))
}

/// Read until `buf` holds a whole HTTP head; returns its length (through the blank line).
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(i + 4);
        }
        if buf.len() > MAX_HEAD {
            bail!("HTTP head over {MAX_HEAD} bytes");
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await.context("reading HTTP head")? == 0 {
            bail!("EOF in the HTTP head");
        }
    }
}

/// The value of header `name` (lowercase) in a head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A masked text frame (every client frame is masked; the key need not be secret here).
pub fn masked_text(out: &mut Vec<u8>, text: &str, mask: [u8; 4]) {
    let n = text.len();
    out.push(0x81);
    match n {
        0..=125 => out.push(0x80 | n as u8),
        126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// One server frame at the start of `buf`: `(opcode, payload range, bytes on the wire)`, or
/// None while incomplete. Server frames are never masked.
pub fn parse(buf: &[u8]) -> anyhow::Result<Option<(u8, std::ops::Range<usize>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        bail!("masked frame from the server");
    }
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (
                usize::try_from(u64::from_be_bytes(b)).context("frame too long")?,
                10,
            )
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((buf[0] & 0x0f, head..head + len, head + len)))
}

/// One HTTP response: its status and whether the server said it will close.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    pub status: u16,
    pub close: bool,
}

/// Read one response (head and Content-Length body) from `stream`, keeping what follows in
/// `buf`. None: the server closed before sending a byte (a keep-alive connection it had ended).
pub async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<Option<Response>> {
    if buf.is_empty() {
        buf.reserve(4096);
        if stream.read_buf(buf).await.context("reading response")? == 0 {
            return Ok(None);
        }
    }
    let head_len = read_head(stream, buf).await?;
    let head = std::str::from_utf8(&buf[..head_len]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let close = header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let body: usize = header(head, "content-length")
        .map(|v| v.parse().context("bad Content-Length"))
        .transpose()?
        .unwrap_or(0);
    while buf.len() < head_len + body {
        buf.reserve(4096);
        if stream.read_buf(buf).await.context("reading body")? == 0 {
            bail!("EOF in the response body");
        }
    }
    buf.drain(..head_len + body);
    Ok(Some(Response { status, close }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_headers() {
        let mut f = vec![0x81, 3, b'a', b'b', b'c', 0x88];
        assert_eq!(parse(&f).unwrap(), Some((1, 2..5, 5)));
        f.truncate(4);
        assert_eq!(parse(&f).unwrap(), None);
        let mut long = vec![0x81, 126, 0, 200];
        long.extend(std::iter::repeat_n(b'x', 200));
        assert_eq!(parse(&long).unwrap(), Some((1, 4..204, 204)));
        assert!(parse(&[0x81, 0x81, 0, 0, 0, 0, 1]).is_err());
        let head = "HTTP/1.1 202 Accepted\r\nConnection: close\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(header(head, "connection"), Some("close"));
        assert_eq!(header(head, "content-length"), Some("12"));
        let mut out = Vec::new();
        masked_text(&mut out, "hi", [1, 2, 3, 4]);
        assert_eq!(out, vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    }
}
