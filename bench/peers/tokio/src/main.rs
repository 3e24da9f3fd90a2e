//! peer-tokio: the Phoenix Channels V2 pub/sub server a Rust developer would write with tokio
//! and tokio-tungstenite, as a baseline for corecast.
//!
//! Design (the usual one): a tokio multi-thread runtime (one worker per core); one task reads
//! each socket and one task writes it, fed by a bounded per-connection mpsc queue; a hub of
//! `topic -> subscribers` behind a `std::sync::Mutex`. A broadcast is encoded once into a
//! `Utf8Bytes` (reference counted) and the same buffer is queued on every subscriber. A
//! subscriber whose queue is full is disconnected (like gorilla's chat hub).
//!
//! Speaks the minimal subset corecast-bench needs: `GET /socket/websocket` (join, leave,
//! heartbeat, push = broadcast to the topic, sender included, then ok reply) and
//! `POST /api/broadcast` with `{"topic","event","payload"}` -> 202.
//!
//! Usage: `peer-tokio [--listen] 127.0.0.1:4101`

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// Messages one connection may have queued before it counts as a slow consumer.
const QUEUE: usize = 1024;
/// Largest HTTP request (head + body) accepted on `POST /api/broadcast`.
const MAX_API_REQUEST: usize = 1 << 20;
const OK_REPLY: &str = r#"{"response":{},"status":"ok"}"#;
const UNMATCHED_REPLY: &str = r#"{"response":{"reason":"unmatched topic"},"status":"error"}"#;

/// One subscriber as the hub sees it: its outbound queue, and a way to make it hang up.
#[derive(Clone)]
struct Client {
    tx: mpsc::Sender<Message>,
    kick: Arc<Notify>,
}

#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<String, HashMap<u64, Client>>>,
    next_id: AtomicU64,
}

impl Hub {
    fn join(&self, topic: &str, id: u64, client: &Client) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic.to_string())
            .or_default()
            .insert(id, client.clone());
    }

    fn leave(&self, topic: &str, id: u64) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(subs) = topics.get_mut(topic) {
            subs.remove(&id);
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Encode `[null,null,topic,event,payload]` once and queue it on every subscriber.
    fn broadcast(&self, topic: &str, event: &str, payload: &RawValue) {
        let frame = Message::Text(
            format!(
                "[null,null,{},{},{}]",
                json_str(topic),
                json_str(event),
                payload.get()
            )
            .into(),
        );
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = topics.get_mut(topic) else {
            return;
        };
        subs.retain(|_, client| match client.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                client.kick.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if subs.is_empty() {
            topics.remove(topic);
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `[join_ref, ref, topic, event, payload]`, refs and payload kept as raw JSON.
#[derive(Deserialize)]
struct Frame<'a>(
    #[serde(borrow)] &'a RawValue,
    #[serde(borrow)] &'a RawValue,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] &'a RawValue,
);

#[derive(Deserialize)]
struct ApiBroadcast<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

fn reply(join_ref: &str, msg_ref: &str, topic: &str, body: &str) -> Message {
    Message::Text(
        format!(
            "[{join_ref},{msg_ref},{},\"phx_reply\",{body}]",
            json_str(topic)
        )
        .into(),
    )
}

/// Accept the upgrade only on `/socket/websocket` (any query string).
#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/socket/websocket" {
        return Ok(resp);
    }
    let mut err = ErrorResponse::new(Some("not found".to_string()));
    *err.status_mut() = StatusCode::NOT_FOUND;
    Err(err)
}

async fn serve_socket(stream: TcpStream, hub: Arc<Hub>) {
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check_path).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let client = Client {
        tx,
        kick: Arc::new(Notify::new()),
    };
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);

    // Writer: drain whatever is queued into the sink, then flush once.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    let mut joined: HashSet<String> = HashSet::new();
    loop {
        let msg = tokio::select! {
            msg = source.next() => msg,
            _ = client.kick.notified() => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let Ok(Frame(join_ref, msg_ref, topic, event, payload)) = serde_json::from_str(&text)
        else {
            continue;
        };
        let (jr, r) = (join_ref.get(), msg_ref.get());
        let answer = match (&*topic, &*event) {
            ("phoenix", "heartbeat") => reply("null", r, &topic, OK_REPLY),
            (_, "phx_join") => {
                if joined.insert(topic.to_string()) {
                    hub.join(&topic, id, &client);
                }
                reply(jr, r, &topic, OK_REPLY)
            }
            (_, "phx_leave") => {
                if joined.remove(&*topic) {
                    hub.leave(&topic, id);
                }
                reply(jr, r, &topic, OK_REPLY)
            }
            _ if joined.contains(&*topic) => {
                hub.broadcast(&topic, &event, payload);
                reply(jr, r, &topic, OK_REPLY)
            }
            _ => reply(jr, r, &topic, UNMATCHED_REPLY),
        };
        // The reply waits for room in the queue: it is this client's own backpressure.
        if client.tx.send(answer).await.is_err() {
            break;
        }
    }
    for topic in &joined {
        hub.leave(topic, id);
    }
    drop(client);
    let _ = writer.await;
}

/// Plain HTTP/1.1 with keep-alive, just enough for `POST /api/broadcast`.
async fn serve_api(mut stream: TcpStream, hub: Arc<Hub>) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Parse one request head from what is buffered; read more while it is partial.
        let (head_len, body_len, path_ok, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut len = 0usize;
                    let mut close = req.version == Some(0);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(usize::MAX);
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    let ok = req.method == Some("POST") && req.path == Some("/api/broadcast");
                    break (n, len, ok, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_API_REQUEST => {
                    if read_more(&mut stream, &mut buf).await == 0 {
                        return;
                    }
                }
                _ => {
                    let _ = stream.write_all(response(400)).await;
                    return;
                }
            }
        };
        if body_len > MAX_API_REQUEST {
            let _ = stream.write_all(response(413)).await;
            return;
        }
        while buf.len() < head_len + body_len {
            if read_more(&mut stream, &mut buf).await == 0 {
                return;
            }
        }
        let body = &buf[head_len..head_len + body_len];
        let status = match serde_json::from_slice::<ApiBroadcast<'_>>(body) {
            _ if !path_ok => 404,
            Ok(b) => {
                hub.broadcast(&b.topic, &b.event, b.payload);
                202
            }
            Err(_) => 400,
        };
        buf.drain(..head_len + body_len);
        if stream.write_all(response(status)).await.is_err() || close {
            return;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

fn response(status: u16) -> &'static [u8] {
    match status {
        202 => b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        413 => b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        _ => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    }
}

/// `GET` goes to the WebSocket path, `POST` to the API.
async fn route(stream: TcpStream, hub: Arc<Hub>) {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == b'P' => serve_api(stream, hub).await,
        Ok(1) => serve_socket(stream, hub).await,
        _ => {}
    }
}

fn listen_addr() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr, ..] if flag == "--listen" => addr.clone(),
        [addr, ..] => addr.clone(),
        [] => "127.0.0.1:4101".to_string(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind(listen_addr()).await?;
    println!("listening on {}", listener.local_addr()?);
    let hub = Arc::new(Hub::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(route(stream, hub.clone()));
    }
}
