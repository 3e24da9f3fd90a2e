//! uring-idle: the floor of corecast's readiness design (issue 5), measured.
//!
//! One thread, one io_uring, a multishot `POLL_ADD` armed per idle socket, no task, no topic
//! table: readiness completions carry the slab key. corecast does the same per core
//! (`src/reactor.rs`) with a glommio task, a slot and a Phoenix session per socket on top. It speaks just enough
//! Phoenix V2 for `corecast-bench connect` (upgrade, phx_join, heartbeat), reusing corecast's
//! `proto` code, so the same client measures it and corecast side by side.
//!
//! Usage: `cargo run --release -p corecast-bench --bin uring_idle -- 127.0.0.1:4700` (prints `listening on ADDR`). A measurement probe, not a
//! server: no timeouts, no broadcast, one core.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use corecast::proto::frame::{self, Decoder, Limits, Message, OpCode};
use corecast::proto::handshake;
use corecast::proto::phoenix::json;
use io_uring::{IoUring, opcode, types};
use slab::Slab;

const LISTENER: u64 = u64::MAX;

/// What one socket holds: the stream, its phase, the frame decoder (no heap while idle) and the
/// request bytes while the upgrade is incomplete.
struct Conn {
    stream: TcpStream,
    open: bool,
    decoder: Decoder,
    head: Vec<u8>,
}

fn arm(ring: &mut IoUring, fd: i32, key: u64) {
    let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(key);
    // SAFETY: the fd stays open until its poll is removed (see `close`), and the entry holds no
    // buffer.
    while unsafe { ring.submission().push(&sqe) }.is_err() {
        let _ = ring.submit();
    }
}

fn close(ring: &mut IoUring, conns: &mut Slab<Conn>, key: usize) {
    let sqe = opcode::PollRemove::new(key as u64)
        .build()
        .user_data(key as u64 | 1 << 62);
    // SAFETY: no buffers are referenced by a poll-remove entry.
    while unsafe { ring.submission().push(&sqe) }.is_err() {
        let _ = ring.submit();
    }
    let _ = ring.submit();
    conns.try_remove(key);
}

/// Handle what arrived on one socket; false if it should be closed.
fn on_readable(c: &mut Conn, scratch: &mut [u8]) -> bool {
    loop {
        let n = match c.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        };
        let mut out = Vec::new();
        if !c.open {
            c.head.extend_from_slice(&scratch[..n]);
            let Ok(Some(req)) = handshake::parse_request(&c.head, 8192) else {
                continue;
            };
            let Ok(key) = handshake::check_upgrade(&req) else {
                return false;
            };
            handshake::write_switching(&mut out, &handshake::accept_key(key), None, &[]);
            c.open = true;
            c.head = Vec::new();
        } else {
            let limits = Limits {
                max_frame: 1 << 20,
                max_message: 1 << 20,
                max_buffered: usize::MAX,
            };
            let mut ok = true;
            let r = c.decoder.feed(&mut scratch[..n], &limits, &mut |m| {
                let Message::Text(t) = m else {
                    ok = !matches!(m, Message::Close(_));
                    return;
                };
                let Ok(msg) = json::decode(t) else {
                    ok = false;
                    return;
                };
                let mut body = Vec::new();
                let _ = json::encode_reply(
                    &mut body,
                    msg.join_ref.as_deref(),
                    msg.msg_ref.as_deref(),
                    &msg.topic,
                    "ok",
                    "{}",
                );
                frame::encode_frame(&mut out, OpCode::Text, &body);
            });
            if r.is_err() || !ok {
                return false;
            }
        }
        if c.stream.write_all(&out).is_err() {
            return false;
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * 4)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4700".into());
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let mut ring = IoUring::new(4096)?;
    arm(&mut ring, listener.as_raw_fd(), LISTENER);
    let mut conns: Slab<Conn> = Slab::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut peak = 0;
    loop {
        ring.submit_and_wait(1)?;
        let done: Vec<(u64, i32, u32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, flags) in done {
            let more = io_uring::cqueue::more(flags);
            if ud == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    let key = conns.insert(Conn {
                        stream,
                        open: false,
                        decoder: Decoder::new(),
                        head: Vec::new(),
                    });
                    arm(&mut ring, fd, key as u64);
                }
                if !more {
                    arm(&mut ring, listener.as_raw_fd(), LISTENER);
                }
                continue;
            }
            if ud & (1 << 62) != 0 || res < 0 {
                continue; // a poll-remove completion, or a cancelled poll
            }
            let key = ud as usize;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if on_readable(c, &mut scratch) {
                if !more {
                    let fd = c.stream.as_raw_fd();
                    arm(&mut ring, fd, key as u64);
                }
            } else {
                close(&mut ring, &mut conns, key);
            }
        }
        if conns.len() > peak + 999 || (conns.is_empty() && peak > 0) {
            peak = conns.len();
            eprintln!("connections {} rss {} KiB", conns.len(), rss_kib());
        }
    }
}
