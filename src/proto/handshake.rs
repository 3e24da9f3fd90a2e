//! HTTP/1.1 request-head parsing, the RFC 6455 opening handshake, and response writing.
//!
//! Pure protocol: bytes in, values out. No sockets, no clock, no `unsafe`, and no panics on any
//! input. The connection code reads into a buffer, calls [`parse_request`] until it returns a
//! [`Request`], then either upgrades ([`check_upgrade`], [`accept_key`], [`write_switching`]) or
//! answers with plain HTTP ([`write_response`]).

use base64::Engine as _;
use base64::engine::general_purpose::{
    STANDARD, STANDARD_NO_PAD_INDIFFERENT, URL_SAFE_NO_PAD_INDIFFERENT,
};

/// A parsed HTTP/1.x request head, with the fields corecast needs.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Request method as sent, e.g. `"GET"` (methods are case-sensitive).
    pub method: String,
    /// Request target before `'?'`, e.g. `"/socket/websocket"`.
    pub path: String,
    /// Request target after `'?'`, without it (`""` if none).
    pub query: String,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version_minor: u8,
    /// `Host` header value, trimmed.
    pub host: Option<String>,
    /// An `Upgrade` header lists the token `websocket` (case-insensitive).
    pub upgrade_websocket: bool,
    /// A `Connection` header lists the token `upgrade` (case-insensitive).
    pub connection_upgrade: bool,
    /// A `Connection` header lists `close`: no further request on this connection.
    pub connection_close: bool,
    /// A `Connection` header lists `keep-alive` (what an HTTP/1.0 client must send to keep it).
    pub connection_keep_alive: bool,
    /// `Sec-WebSocket-Version` header value, trimmed.
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Key` header value, trimmed.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Protocol` tokens, split on `','` and trimmed, across repeated headers.
    pub protocols: Vec<String>,
    /// `Origin` header value, trimmed.
    pub origin: Option<String>,
    /// `Authorization` header value, trimmed.
    pub authorization: Option<String>,
    /// `X-Phoenix-AuthToken` header value, trimmed: where phoenix.js's long-poll transport puts
    /// its `authToken` (a WebSocket offers it as a subprotocol instead).
    pub phx_auth_token: Option<String>,
    /// `Content-Type` header value, trimmed (see [`media_type_is`]).
    pub content_type: Option<String>,
    /// An `Expect` header lists `100-continue` (case-insensitive): the client waits for an
    /// interim `100 Continue` (or a final answer) before it sends the body.
    pub expect_continue: bool,
    /// `Content-Length`, validated (digits only; repeated values must agree).
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` is present and its final coding is `chunked`.
    pub chunked: bool,
    /// Bytes of the request head, through the blank line; the body (if any) starts here.
    pub head_len: usize,
}

impl Request {
    /// The client lets the connection carry another request after this one's answer (RFC 9112
    /// 9.3): HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn wants_keep_alive(&self) -> bool {
        !self.connection_close && (self.version_minor >= 1 || self.connection_keep_alive)
    }

    /// The head announces a body: a `Content-Length` above 0, or chunked.
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

/// Why a request head could not be parsed. Answer with [`HttpError::status`] and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The bytes are not a valid HTTP/1.x request head.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head did not end within `max_head` bytes.
    #[error("request head too large")]
    TooLarge,
}

impl HttpError {
    /// The status code to answer with: 400 or 431.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::TooLarge => 431,
        }
    }
}

/// Maximum number of header lines accepted in one request head.
const MAX_HEADERS: usize = 64;

/// Parse a request head from `buf`.
///
/// Returns `Ok(None)` if the head is incomplete and more bytes should be read, unless
/// `buf.len() >= max_head`, which gives `Err(TooLarge)`; a complete head longer than `max_head`
/// is also `TooLarge`. Bytes after the head (a body or pipelined data) are left to the caller,
/// starting at [`Request::head_len`].
///
/// `Malformed` covers: httparse errors (including more than 64 headers); a non-UTF-8 value in any
/// header this function reads; a bad or conflicting `Content-Length`; a `Transfer-Encoding` whose
/// final coding is not `chunked`, or one sent together with `Content-Length` (request-smuggling
/// guards, RFC 9112 6.1/6.3); and a repeated `Host`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`,
/// `Origin`, `Authorization` or `Content-Type` header. A missing `Host` is not checked here.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request>, HttpError> {
    // Never look past `max_head` bytes: a head that has not ended by then is too large.
    let buf = buf.get(..max_head).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() == max_head => return Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let target = parsed.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: parsed.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        version_minor: parsed.version.unwrap_or(0),
        head_len,
        ..Request::default()
    };
    let mut transfer_encoding = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        let field = |n: &str| name.eq_ignore_ascii_case(n);
        if field("host") {
            set_once(&mut req.host, name, h.value)?;
        } else if field("upgrade") {
            req.upgrade_websocket |= has_token(utf8(name, h.value)?, "websocket");
        } else if field("connection") {
            let value = utf8(name, h.value)?;
            req.connection_upgrade |= has_token(value, "upgrade");
            req.connection_close |= has_token(value, "close");
            req.connection_keep_alive |= has_token(value, "keep-alive");
        } else if field("sec-websocket-version") {
            set_once(&mut req.ws_version, name, h.value)?;
        } else if field("sec-websocket-key") {
            set_once(&mut req.ws_key, name, h.value)?;
        } else if field("sec-websocket-protocol") {
            let tokens = utf8(name, h.value)?
                .split(',')
                .map(trim)
                .filter(|t| !t.is_empty());
            req.protocols.extend(tokens.map(str::to_owned));
        } else if field("origin") {
            set_once(&mut req.origin, name, h.value)?;
        } else if field("authorization") {
            set_once(&mut req.authorization, name, h.value)?;
        } else if field("x-phoenix-authtoken") {
            set_once(&mut req.phx_auth_token, name, h.value)?;
        } else if field("content-type") {
            set_once(&mut req.content_type, name, h.value)?;
        } else if field("expect") {
            req.expect_continue |= has_token(utf8(name, h.value)?, "100-continue");
        } else if field("content-length") {
            add_content_length(&mut req.content_length, h.value)?;
        } else if field("transfer-encoding") {
            // Codings accumulate across repeated headers; only the last one matters for framing.
            let value = utf8(name, h.value)?;
            if let Some(last) = value.split(',').map(trim).rfind(|t| !t.is_empty()) {
                req.chunked = last.eq_ignore_ascii_case("chunked");
            }
            transfer_encoding = true;
        }
    }
    if transfer_encoding {
        if !req.chunked {
            return Err(malformed("Transfer-Encoding must end with chunked"));
        }
        if req.content_length.is_some() {
            return Err(malformed("both Content-Length and Transfer-Encoding"));
        }
    }
    Ok(Some(req))
}

/// Why a request is not an acceptable WebSocket opening handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// No `Upgrade: websocket` or no `Connection: upgrade`: answer 426 with `Upgrade: websocket`.
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    /// An upgrade attempt with a method other than `GET`: answer 400.
    #[error("method must be GET")]
    BadMethod,
    /// An upgrade attempt over HTTP/1.0: answer 400.
    #[error("HTTP/1.1 required")]
    BadHttpVersion,
    /// `Sec-WebSocket-Version` missing or not 13: answer 426 with `Sec-WebSocket-Version: 13`.
    #[error("unsupported Sec-WebSocket-Version")]
    BadVersion,
    /// `Sec-WebSocket-Key` missing or not the base64 of exactly 16 bytes: answer 400.
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
}

impl UpgradeError {
    /// The status code to answer with (400 or 426).
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::NotUpgrade | UpgradeError::BadVersion => 426,
            UpgradeError::BadMethod | UpgradeError::BadHttpVersion | UpgradeError::BadKey => 400,
        }
    }

    /// Extra headers the error response must carry (RFC 9110 15.5.22, RFC 6455 4.4).
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            UpgradeError::NotUpgrade => &[("Upgrade", "websocket")],
            UpgradeError::BadVersion => &[("Sec-WebSocket-Version", "13")],
            _ => &[],
        }
    }
}

/// Check a request is a valid RFC 6455 opening handshake (section 4.2.1); returns the
/// `Sec-WebSocket-Key`. Checks, in order: upgrade headers, method, HTTP version, WebSocket
/// version, key. `Host` and `Origin` are left to the caller's policy.
pub fn check_upgrade(req: &Request) -> Result<&str, UpgradeError> {
    if !(req.upgrade_websocket && req.connection_upgrade) {
        return Err(UpgradeError::NotUpgrade);
    }
    if req.method != "GET" {
        return Err(UpgradeError::BadMethod);
    }
    if req.version_minor < 1 {
        return Err(UpgradeError::BadHttpVersion);
    }
    if req.ws_version.as_deref() != Some("13") {
        return Err(UpgradeError::BadVersion);
    }
    let key = req.ws_key.as_deref().ok_or(UpgradeError::BadKey)?;
    // 16 bytes encode to exactly 24 characters ending in "==".
    match STANDARD.decode(key) {
        Ok(bytes) if key.len() == 24 && bytes.len() == 16 => Ok(key),
        _ => Err(UpgradeError::BadKey),
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
pub fn accept_key(key: &str) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(GUID);
    STANDARD.encode(sha1.digest().bytes())
}

/// Append a `101 Switching Protocols` response with `Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol` if `protocol` is `Some`, then the `extra`
/// headers (CR and LF dropped, as in every header written here).
pub fn write_switching(
    out: &mut Vec<u8>,
    accept: &str,
    protocol: Option<&str>,
    extra: &[(&str, &str)],
) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    push_header(out, "Upgrade", "websocket");
    push_header(out, "Connection", "Upgrade");
    push_header(out, "Sec-WebSocket-Accept", accept);
    if let Some(p) = protocol {
        push_header(out, "Sec-WebSocket-Protocol", p);
    }
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Keep-Alive` header's value for an answer whose connection is kept for `keep` (the wait
/// for the next request): `timeout=<seconds>`, from one second up (a hint for clients that drop
/// idle connections themselves); `None` for a connection that closes or a wait under a second.
pub fn keep_alive_hint(keep: Option<std::time::Duration>) -> Option<String> {
    keep.filter(|d| d.as_secs() >= 1)
        .map(|d| format!("timeout={}", d.as_secs()))
}

/// Append a complete non-upgrade response: status line with reason phrase, `Content-Type`,
/// `Content-Length`, `Connection: close` (or `keep-alive` when `keep_alive`), the `extra`
/// headers, then `body`.
///
/// `Content-Type` is left out when `content_type` is empty. For statuses that cannot carry a body
/// (1xx, 204, 304) `Content-Type`, `Content-Length` and `body` are all left out (RFC 9110 8.6).
/// CR and LF are dropped from header names and values, so no caller string can split the head.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) {
    write_response_head(out, status, content_type, body.len(), extra, keep_alive);
    if status_has_body(status) {
        out.extend_from_slice(body);
    }
}

/// Append the head alone of the response [`write_response`] would write for a body of
/// `body_len` bytes, `Content-Length` included: the answer to a `HEAD` request, which carries the
/// headers of the `GET` answer and no body (RFC 9110 9.3.2).
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body_len: usize,
    extra: &[(&str, &str)],
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if status_has_body(status) {
        if !content_type.is_empty() {
            push_header(out, "Content-Type", content_type);
        }
        push_header(out, "Content-Length", &body_len.to_string());
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    push_header(out, "Connection", connection);
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Statuses that cannot carry a body (RFC 9110 8.6): 1xx, 204, 304.
fn status_has_body(status: u16) -> bool {
    !matches!(status, 100..=199 | 204 | 304)
}

/// The interim response to a request with `Expect: 100-continue` whose body will be read.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Every status corecast sends, with its reason phrase (RFC 9110 section 15). One table: a
/// status added anywhere in the server belongs here (`tests/http.rs`
/// `reason_phrases_on_the_wire` checks the line of each one the server can be made to send).
pub const STATUSES: &[(u16, &str)] = &[
    (100, "Continue"),
    (101, "Switching Protocols"),
    (200, "OK"),
    (202, "Accepted"),
    (204, "No Content"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (403, "Forbidden"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (411, "Length Required"),
    (413, "Content Too Large"),
    (415, "Unsupported Media Type"),
    (426, "Upgrade Required"),
    (429, "Too Many Requests"),
    (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"),
    (503, "Service Unavailable"),
];

/// The reason phrase of `status` from [`STATUSES`]; a status outside the table gets its class's
/// name (`"Client Error"` for 4xx, ...), never a made-up phrase.
pub fn reason_phrase(status: u16) -> &'static str {
    match STATUSES.iter().find(|(s, _)| *s == status) {
        Some((_, phrase)) => phrase,
        None => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// Whether a `Content-Type` value names the media type `essence` (`type/subtype`): compared
/// ASCII case-insensitively, parameters after `';'` ignored (RFC 9110 8.3.1), so
/// `application/json; charset=utf-8` is `application/json`.
pub fn media_type_is(content_type: &str, essence: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("");
    trim(media).eq_ignore_ascii_case(essence)
}

/// The credentials of an `Authorization: Bearer <credentials>` value (the scheme name is
/// case-insensitive, RFC 9110 11.1); `None` for another scheme or no credentials.
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once([' ', '\t'])?;
    let credentials = trim(rest);
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// Value of query parameter `name`: percent-decoded (`'+'` as space), first occurrence.
///
/// Parameter names are decoded the same way before comparing. A parameter without `'='` has the
/// value `""`. A `'%'` not followed by two hex digits is kept as is. Returns `None` if the
/// parameter is absent or its value does not decode to UTF-8.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key).as_deref() == Some(name))
        .and_then(|(_, value)| percent_decode(value))
}

/// Value of query parameter `name` like [`query_param`], but its last occurrence (the one a
/// framework that reads parameters into a map keeps: phoenix.js's long-poll transport appends
/// its session `token` after the socket's own parameters).
pub fn query_param_last(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .rfind(|(key, _)| percent_decode(key).as_deref() == Some(name))
        .and_then(|(_, value)| percent_decode(value))
}

/// The prefix of the Phoenix token subprotocol offered by phoenix.js (`authToken` option).
pub const PHX_BEARER_PREFIX: &str = "base64url.bearer.phx.";

/// If the client offered a Phoenix token subprotocol `"base64url.bearer.phx.<token>"`, return
/// the decoded token (base64url without padding, decoded to a UTF-8 string).
///
/// phoenix.js actually encodes with `btoa` (standard alphabet, padding stripped), so the standard
/// alphabet is accepted too, and so is padding. The first offer that decodes to a non-empty UTF-8
/// string wins.
pub fn bearer_token_from_protocols(protocols: &[String]) -> Option<String> {
    protocols.iter().find_map(|p| {
        let encoded = p.strip_prefix(PHX_BEARER_PREFIX)?;
        let bytes = URL_SAFE_NO_PAD_INDIFFERENT
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD_INDIFFERENT.decode(encoded))
            .ok()?;
        String::from_utf8(bytes).ok().filter(|t| !t.is_empty())
    })
}

fn malformed(msg: &str) -> HttpError {
    HttpError::Malformed(msg.to_owned())
}

/// Trim optional whitespace (spaces and tabs, RFC 9110 5.6.3) around a value or list element.
fn trim(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn utf8<'a>(name: &str, value: &'a [u8]) -> Result<&'a str, HttpError> {
    std::str::from_utf8(value).map_err(|_| HttpError::Malformed(format!("{name} is not UTF-8")))
}

/// Store a single-valued header; a second occurrence is `Malformed`.
fn set_once(slot: &mut Option<String>, name: &str, value: &[u8]) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::Malformed(format!("duplicate {name} header")));
    }
    *slot = Some(trim(utf8(name, value)?).to_owned());
    Ok(())
}

/// Does a comma-separated header list contain `token` (ASCII case-insensitive)?
fn has_token(list: &str, token: &str) -> bool {
    list.split(',').any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Fold one `Content-Length` header (itself possibly a list of equal values) into `slot`.
fn add_content_length(slot: &mut Option<usize>, value: &[u8]) -> Result<(), HttpError> {
    let value = utf8("Content-Length", value)?;
    for part in value.split(',').map(trim) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("invalid Content-Length"));
        }
        let n = part
            .parse()
            .map_err(|_| malformed("Content-Length overflows"))?;
        match *slot {
            Some(prev) if prev != n => return Err(malformed("conflicting Content-Length")),
            _ => *slot = Some(n),
        }
    }
    Ok(())
}

/// Append `name: value\r\n`, dropping any CR or LF so the head cannot be split.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = |s: &str, out: &mut Vec<u8>| {
        out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
    };
    clean(name, out);
    out.extend_from_slice(b": ");
    clean(value, out);
    out.extend_from_slice(b"\r\n");
}

/// Percent-decode a query component (`'+'` as space). `None` if the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_val(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_val(b));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_alive_hint_is_whole_seconds_from_one_up() {
        use std::time::Duration;
        assert_eq!(keep_alive_hint(None), None);
        assert_eq!(keep_alive_hint(Some(Duration::from_millis(999))), None);
        assert_eq!(
            keep_alive_hint(Some(Duration::from_millis(1000))).as_deref(),
            Some("timeout=1")
        );
        assert_eq!(
            keep_alive_hint(Some(Duration::from_millis(5900))).as_deref(),
            Some("timeout=5")
        );
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const CHROME: &str = "GET /socket/websocket?vsn=2.0.0&token=a%2Bb HTTP/1.1\r\n\
        Host: localhost:4000\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0.0.0 Safari/537.36\r\n\
        Upgrade: websocket\r\nOrigin: http://localhost:4000\r\nSec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br, zstd\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn parse(raw: &[u8]) -> Result<Option<Request>, HttpError> {
        parse_request(raw, 8192)
    }

    /// `CHROME` with `old` replaced by `new`, parsed (must be complete and well-formed).
    fn chrome_with(old: &str, new: &str) -> Request {
        assert!(CHROME.contains(old), "{old}");
        parse(CHROME.replace(old, new).as_bytes()).unwrap().unwrap()
    }

    /// Parse an HTTP response written by this module; returns (status, reason, headers, body).
    fn parse_response(out: &[u8]) -> (u16, String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        let value = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let hs = resp
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), value(h.value)));
        let reason = resp.reason.unwrap().to_owned();
        (resp.code.unwrap(), reason, hs.collect(), out[n..].to_vec())
    }

    #[test]
    fn rfc6455_accept_key() {
        // RFC 6455 section 1.3; the second pair is a widely published example. Both were
        // cross-checked against Python's hashlib + base64.
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let key = "x3JJHMbDL1EzLkh9GBhXDw==";
        assert_eq!(accept_key(key), "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    }

    #[test]
    fn chrome_upgrade_parses_and_passes() {
        let req = chrome_with("", "");
        assert_eq!((req.method.as_str(), req.version_minor), ("GET", 1));
        assert_eq!(req.path, "/socket/websocket");
        assert_eq!(req.query, "vsn=2.0.0&token=a%2Bb");
        assert_eq!(req.host.as_deref(), Some("localhost:4000"));
        assert_eq!(req.origin.as_deref(), Some("http://localhost:4000"));
        assert!(req.upgrade_websocket && req.connection_upgrade && req.protocols.is_empty());
        assert_eq!(req.ws_version.as_deref(), Some("13"));
        assert_eq!((req.content_length, req.chunked), (None, false));
        assert!(req.authorization.is_none() && req.head_len == CHROME.len());
        assert_eq!(check_upgrade(&req), Ok(KEY));
        assert_eq!(query_param(&req.query, "token").as_deref(), Some("a+b"));
    }

    #[test]
    fn connection_keep_alive_upgrade() {
        let req = chrome_with("Connection: Upgrade", "Connection: keep-alive, Upgrade");
        assert_eq!(check_upgrade(&req), Ok(KEY));
        let req = chrome_with("Upgrade: websocket", "upgrade: h2c,  WebSocket");
        assert_eq!(check_upgrade(&req), Ok(KEY));
    }

    #[test]
    fn upgrade_errors() {
        use UpgradeError::*;
        let cases = [
            ("Upgrade: websocket\r\n", "", NotUpgrade),
            ("Connection: Upgrade", "Connection: keep-alive", NotUpgrade),
            ("GET /", "POST /", BadMethod),
            ("HTTP/1.1\r\n", "HTTP/1.0\r\n", BadHttpVersion),
            ("Version: 13", "Version: 8", BadVersion),
            ("Sec-WebSocket-Version: 13\r\n", "", BadVersion),
            ("Key: dGhlIHNhbXBsZSBub25jZQ==", "Nonce: x", BadKey),
            (KEY, "dGhlIHNhbXBsZSBub25j", BadKey), // valid base64 of 15 bytes
            (KEY, "not base64 at all!!!!!!!", BadKey),
            (KEY, "dGhlIHNhbXBsZSBub25jZR==", BadKey), // non-zero trailing bits
        ];
        for (old, new, want) in cases {
            assert_eq!(check_upgrade(&chrome_with(old, new)), Err(want), "{new}");
        }
        let statuses =
            [NotUpgrade, BadVersion, BadMethod, BadHttpVersion, BadKey].map(|e| e.status());
        assert_eq!(statuses, [426, 426, 400, 400, 400]);
        assert_eq!(NotUpgrade.headers(), [("Upgrade", "websocket")]);
        assert_eq!(BadVersion.headers(), [("Sec-WebSocket-Version", "13")]);
        assert!(BadKey.headers().is_empty());
        assert_eq!(HttpError::TooLarge.status(), 431);
        assert_eq!(HttpError::Malformed(String::new()).status(), 400);
    }

    #[test]
    fn repeated_protocol_headers() {
        let protocols = "Upgrade: websocket\r\nSec-WebSocket-Protocol: phoenix, ,x \r\n\
            Sec-WebSocket-Protocol:\tbase64url.bearer.phx.YWJj\r\n";
        let req = chrome_with("Upgrade: websocket\r\n", protocols);
        assert_eq!(req.protocols, ["phoenix", "x", "base64url.bearer.phx.YWJj"]);
        let token = bearer_token_from_protocols(&req.protocols);
        assert_eq!(token.as_deref(), Some("abc"));
    }

    #[test]
    fn partial_heads_and_too_large() {
        let raw = CHROME.as_bytes();
        for n in 0..raw.len() {
            assert!(parse(&raw[..n]).unwrap().is_none(), "prefix {n}");
        }
        let too_large = Err(HttpError::TooLarge);
        assert_eq!(parse_request(&raw[..100], 100).map(|_| ()), too_large);
        assert_eq!(parse_request(raw, raw.len() - 1).map(|_| ()), too_large);
        assert!(parse_request(&raw[..99], 100).unwrap().is_none());
        assert!(parse_request(raw, raw.len()).unwrap().is_some());
        // Bytes after the head (a body) are not part of it.
        let raw = b"POST /api/broadcast HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        let req = parse(raw).unwrap().unwrap();
        assert_eq!((req.head_len, req.content_length), (51, Some(2)));
    }

    #[test]
    fn malformed_inputs() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let cases: [&[u8]; 13] = [
            b"\x00\xff\x13garbage\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nOrigin: caf\xe9\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: \xff\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            &many,
        ];
        for raw in cases {
            let err = parse(raw).unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{raw:?}");
        }
    }

    #[test]
    fn lenient_but_valid_framing() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parse(raw).unwrap().unwrap().content_length, Some(5));
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
        assert!(parse(raw).unwrap().unwrap().chunked);
        // Non-UTF-8 values of headers we ignore are fine.
        let raw = b"GET /health HTTP/1.0\r\nX-Thing: \xff\xfe\r\n\r\n";
        let req = parse(raw).unwrap().unwrap();
        assert_eq!((req.path.as_str(), req.query.as_str()), ("/health", ""));
        assert_eq!(req.version_minor, 0);
        assert_eq!(check_upgrade(&req), Err(UpgradeError::NotUpgrade));
    }

    #[test]
    fn content_type_expect_and_bearer() {
        let raw =
            b"POST /api/broadcast HTTP/1.1\r\ncontent-type:  Application/JSON; charset=utf-8 \r\n\
            Expect: 100-Continue\r\nAuthorization: bearer  k1 \r\nContent-Length: 2\r\n\r\n{}";
        let req = parse(raw).unwrap().unwrap();
        let ct = req.content_type.as_deref().unwrap();
        assert_eq!(ct, "Application/JSON; charset=utf-8");
        assert!(media_type_is(ct, "application/json") && req.expect_continue);
        assert_eq!(
            bearer_credentials(req.authorization.as_deref().unwrap()),
            Some("k1")
        );
        for not_json in [
            "text/plain",
            "application/json-seq",
            "",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!media_type_is(not_json, "application/json"), "{not_json}");
        }
        assert!(media_type_is("application/json", "application/json"));
        for not_bearer in ["Basic azE=", "Bearer", "Bearer   ", "Bearerk1", ""] {
            assert_eq!(bearer_credentials(not_bearer), None, "{not_bearer}");
        }
        let twice = b"POST / HTTP/1.1\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n";
        assert!(matches!(parse(twice), Err(HttpError::Malformed(_))));
        let req = chrome_with("", "");
        assert!(req.content_type.is_none() && !req.expect_continue);
        assert_eq!(
            (reason_phrase(411), reason_phrase(415)),
            ("Length Required", "Unsupported Media Type")
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let req = |version: &str, connection: &str| {
            let raw = format!("GET /health HTTP/1.{version}\r\n{connection}\r\n");
            parse(raw.as_bytes()).unwrap().unwrap()
        };
        assert!(req("1", "").wants_keep_alive());
        assert!(req("1", "Connection: keep-alive\r\n").wants_keep_alive());
        assert!(!req("1", "Connection: close\r\n").wants_keep_alive());
        assert!(!req("1", "Connection: Keep-Alive, CLOSE\r\n").wants_keep_alive());
        assert!(!req("0", "").wants_keep_alive());
        assert!(req("0", "Connection: Keep-Alive\r\n").wants_keep_alive());
        assert!(!req("0", "Connection: close\r\n").wants_keep_alive());
        let upgrade = chrome_with("", "");
        assert!(upgrade.connection_upgrade && !upgrade.connection_close);
        assert!(!req("1", "").has_body());
        assert!(!req("1", "Content-Length: 0\r\n").has_body());
        assert!(req("1", "Content-Length: 1\r\n").has_body());
        assert!(req("1", "Transfer-Encoding: chunked\r\n").has_body());
    }

    #[test]
    fn status_table() {
        for (i, (status, phrase)) in STATUSES.iter().enumerate() {
            assert_eq!(reason_phrase(*status), *phrase);
            assert!(!phrase.is_empty() && !phrase.contains(['\r', '\n']));
            assert!(
                STATUSES[..i].iter().all(|(s, _)| s < status),
                "sorted, once"
            );
        }
    }

    #[test]
    fn query_params() {
        let q = "vsn=2.0.0&token=SFM%3D%2Fx+y&empty=&flag&user%5Bid%5D=7&token=2&bad=%ff&pct=%zz%4";
        let get = |name| query_param(q, name);
        assert_eq!(get("vsn").as_deref(), Some("2.0.0"));
        assert_eq!(get("token").as_deref(), Some("SFM=/x y"));
        assert_eq!(get("empty").as_deref(), Some(""));
        assert_eq!(get("flag").as_deref(), Some(""));
        assert_eq!(get("user[id]").as_deref(), Some("7"));
        assert_eq!(get("pct").as_deref(), Some("%zz%4"));
        assert_eq!((get("bad"), get("missing")), (None, None));
        assert_eq!(query_param("", "vsn"), None);
        let name = query_param("name=caf%C3%A9", "name");
        assert_eq!(name.as_deref(), Some("café"));
        assert_eq!(query_param_last(q, "token").as_deref(), Some("2"));
        assert_eq!(query_param_last(q, "vsn").as_deref(), Some("2.0.0"));
        assert_eq!(query_param_last(q, "missing"), None);
    }

    #[test]
    fn phoenix_auth_token_header() {
        let r = chrome_with("\r\n\r\n", "\r\nX-Phoenix-AuthToken:  abc.def \r\n\r\n");
        assert_eq!(r.phx_auth_token.as_deref(), Some("abc.def"));
    }

    #[test]
    fn bearer_token() {
        let b64 = URL_SAFE_NO_PAD_INDIFFERENT.encode("abc.def");
        let offer = format!("Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.{b64}\r\n\r\n");
        let protocols = chrome_with("\r\n\r\n", &format!("\r\n{offer}")).protocols;
        assert_eq!(protocols.len(), 2);
        let token = bearer_token_from_protocols(&protocols);
        assert_eq!(token.as_deref(), Some("abc.def"));

        let one = |p: &str| bearer_token_from_protocols(&[p.to_owned()]);
        // phoenix.js encodes with btoa(): standard alphabet, padding stripped. "??>" is "Pz8+".
        assert_eq!(one("base64url.bearer.phx.Pz8+").as_deref(), Some("??>"));
        assert_eq!(one("base64url.bearer.phx.Pz8-").as_deref(), Some("??>"));
        assert_eq!(one("phoenix"), None);
        for bad in ["!!", "_w", ""] {
            assert_eq!(one(&format!("base64url.bearer.phx.{bad}")), None); // "_w" is 0xff
        }
    }

    #[test]
    fn switching_response() {
        let mut out = Vec::new();
        write_switching(&mut out, &accept_key(KEY), Some("phoenix"), &[("x-a", "1")]);
        let (status, reason, headers, body) = parse_response(&out);
        assert_eq!((status, reason.as_str()), (101, "Switching Protocols"));
        assert!(body.is_empty());
        let want = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ("Sec-WebSocket-Protocol", "phoenix"),
            ("x-a", "1"),
        ];
        assert_eq!(headers, want.map(|(n, v)| (n.to_owned(), v.to_owned())));
    }

    #[test]
    fn plain_response_round_trips() {
        let mut out = b"leftover".to_vec();
        let extra = [("Upgrade", "websocket"), ("X-Evil", "a\r\nInjected: yes")];
        let body = b"upgrade required";
        write_response(&mut out, 426, "text/plain", body, &extra, false);
        let (status, reason, headers, body) = parse_response(&out[8..]);
        assert_eq!((status, reason.as_str()), (426, "Upgrade Required"));
        let want = [
            ("Content-Type", "text/plain"),
            ("Content-Length", "16"),
            ("Connection", "close"),
            ("Upgrade", "websocket"),
            ("X-Evil", "aInjected: yes"),
        ];
        assert_eq!(headers, want.map(|(n, v)| (n.to_owned(), v.to_owned())));
        assert_eq!(body, b"upgrade required");

        let mut out = Vec::new();
        write_response(&mut out, 204, "text/plain", b"ignored", &[], true);
        let want = "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(out, want.as_bytes());
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(202), "Accepted");
        assert_eq!(
            (reason_phrase(418), reason_phrase(599)),
            ("Client Error", "Server Error")
        );

        // HEAD: the same head with the GET body's length, and no body.
        let (mut get, mut head) = (Vec::new(), Vec::new());
        let extra = [("Allow", "GET, HEAD")];
        write_response(&mut get, 200, "application/json", b"{}\n", &extra, true);
        write_response_head(&mut head, 200, "application/json", 3, &extra, true);
        assert_eq!(get, [&head[..], b"{}\n"].concat());
        let (status, _, headers, body) = parse_response(&head);
        assert_eq!((status, body.len()), (200, 0));
        assert!(headers.contains(&("Content-Length".into(), "3".into())));
    }
}
