//! Long-poll sessions of one core (`/socket/longpoll`): the registry of the core's sessions,
//! the requests waiting for each, and the two mesh envelopes that carry a request to the core
//! that holds its session and the answer back.
//!
//! A session lives on the core that opened it, in a slot of its own (no socket: its outbound
//! queue is where its replies and broadcasts wait for the next poll) with a task that serves it
//! (`transport::longpoll`). Its token names that core. A poll or a POST that `SO_REUSEPORT`
//! gave to another core stays on the connection that received it: that core sends the request
//! over the mesh (a [`REQUEST_KIND`] envelope) and the session's core, once its task has served
//! it, sends back the whole HTTP answer (an [`ANSWER_KIND`] envelope), which the receiving core
//! queues on the waiting connection (`ready::AWAITING`). No lock, no shared state: the same
//! bounded SPSC rings as a broadcast, and when the session is on the connection's own core the
//! same two steps without the mesh.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The first byte of a long-poll request envelope on the mesh (after publications 0 and 1,
/// presence ops 2, disconnects 3).
pub const REQUEST_KIND: u8 = 10;
/// The first byte of a long-poll answer envelope.
pub const ANSWER_KIND: u8 = 11;

/// Requests one session may have waiting for its task; more are answered at once (500).
pub const MAX_INBOX: usize = 8;

/// Where an answer goes: the connection (core, slot, generation) that holds the request, and
/// whether it stays open after the answer (keep-alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    pub core: u16,
    pub key: u32,
    pub generation: u32,
    pub keep: bool,
}

/// What a request asks of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// `GET`: the messages waiting, or wait for some (up to the window).
    Poll,
    /// `POST`: handle these messages (one, or `ndjson` lines).
    Post { body: Vec<u8>, ndjson: bool },
}

/// A request for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub from: Responder,
    pub ask: Ask,
}

/// Which session a request is for (a token's fields but the core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub key: u32,
    pub generation: u32,
    pub secret: [u8; 16],
}

struct Entry {
    generation: u32,
    secret: [u8; 16],
    inbox: VecDeque<Request>,
}

/// This core's sessions, by slot key.
#[derive(Default)]
pub struct Sessions {
    map: HashMap<u32, Entry>,
}

/// Why a request found no session to wait in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missed {
    /// No such session (expired, closed, never was, or the wrong secret): answer 410.
    Gone(Request),
    /// The session has [`MAX_INBOX`] requests waiting: answer 500.
    Full(Request),
}

impl Sessions {
    /// Sessions on this core.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A new session in slot (`key`, `generation`) with this secret.
    pub fn open(&mut self, key: u32, generation: u32, secret: [u8; 16]) {
        self.map.insert(
            key,
            Entry {
                generation,
                secret,
                inbox: VecDeque::new(),
            },
        );
    }

    /// The session is gone; what waited for it is returned (to be answered 410).
    pub fn close(&mut self, key: u32, generation: u32) -> Vec<Request> {
        match self.map.get(&key) {
            Some(e) if e.generation == generation => self
                .map
                .remove(&key)
                .map_or_else(Vec::new, |e| e.inbox.into()),
            _ => Vec::new(),
        }
    }

    /// Queue a request for its session; the caller wakes the session's task.
    pub fn push(&mut self, to: Target, req: Request) -> Result<(), Missed> {
        let Some(e) = self
            .map
            .get_mut(&to.key)
            .filter(|e| e.generation == to.generation && secret_eq(&e.secret, &to.secret))
        else {
            return Err(Missed::Gone(req));
        };
        if e.inbox.len() >= MAX_INBOX {
            return Err(Missed::Full(req));
        }
        e.inbox.push_back(req);
        Ok(())
    }

    /// The secret of session (`key`, `generation`), to write its token into an answer.
    pub fn token_of(&self, key: u32, generation: u32) -> Option<[u8; 16]> {
        self.map
            .get(&key)
            .filter(|e| e.generation == generation)
            .map(|e| e.secret)
    }

    /// Whether the next request waiting for session (`key`, `generation`) is a POST.
    pub fn next_is_post(&self, key: u32, generation: u32) -> bool {
        self.map
            .get(&key)
            .filter(|e| e.generation == generation)
            .and_then(|e| e.inbox.front())
            .is_some_and(|r| matches!(r.ask, Ask::Post { .. }))
    }

    /// Take the next request waiting for session (`key`, `generation`).
    pub fn take(&mut self, key: u32, generation: u32) -> Option<Request> {
        self.map
            .get_mut(&key)
            .filter(|e| e.generation == generation)?
            .inbox
            .pop_front()
    }
}

/// The HTTP answer to a long-poll request: always 200 with the outcome in the JSON body (see
/// `proto::phoenix::longpoll`), `Access-Control-Allow-Origin: *` (as Phoenix: the session token
/// is the credential, never a cookie), kept alive for `keep` (the wait for the next request).
pub fn http_answer(body: &[u8], keep: Option<std::time::Duration>) -> Arc<[u8]> {
    let hint = crate::proto::handshake::keep_alive_hint(keep);
    let mut headers = vec![
        ("Access-Control-Allow-Origin", "*"),
        ("Cache-Control", "no-store"),
    ];
    if let Some(hint) = hint.as_deref() {
        headers.push(("Keep-Alive", hint));
    }
    let mut out = Vec::with_capacity(200 + body.len());
    crate::proto::handshake::write_response(
        &mut out,
        200,
        "application/json",
        body,
        &headers,
        keep.is_some(),
    );
    Arc::from(out)
}

/// Compare secrets without an early exit (the secret is the session's only credential).
fn secret_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Request envelope: kind, responder (core 2, key 4, generation 4, keep 1), target (key 4,
/// generation 4, secret 16), ask (0 poll, 1 post, 2 ndjson post), then the body.
pub fn encode_request(to: Target, req: &Request) -> Arc<[u8]> {
    let body: &[u8] = match &req.ask {
        Ask::Poll => &[],
        Ask::Post { body, .. } => body,
    };
    let mut out = Vec::with_capacity(37 + body.len());
    out.push(REQUEST_KIND);
    out.extend_from_slice(&req.from.core.to_be_bytes());
    out.extend_from_slice(&req.from.key.to_be_bytes());
    out.extend_from_slice(&req.from.generation.to_be_bytes());
    out.push(u8::from(req.from.keep));
    out.extend_from_slice(&to.key.to_be_bytes());
    out.extend_from_slice(&to.generation.to_be_bytes());
    out.extend_from_slice(&to.secret);
    out.push(match &req.ask {
        Ask::Poll => 0,
        Ask::Post { ndjson: false, .. } => 1,
        Ask::Post { ndjson: true, .. } => 2,
    });
    out.extend_from_slice(body);
    Arc::from(out)
}

/// The target and request of a request envelope (`None`: not one).
pub fn decode_request(env: &[u8]) -> Option<(Target, Request)> {
    if env.first() != Some(&REQUEST_KIND) || env.len() < 37 {
        return None;
    }
    let from = Responder {
        core: u16_at(env, 1)?,
        key: u32_at(env, 3)?,
        generation: u32_at(env, 7)?,
        keep: env[11] != 0,
    };
    let mut secret = [0u8; 16];
    secret.copy_from_slice(&env[20..36]);
    let to = Target {
        key: u32_at(env, 12)?,
        generation: u32_at(env, 16)?,
        secret,
    };
    let ask = match env[36] {
        0 => Ask::Poll,
        k @ (1 | 2) => Ask::Post {
            body: env[37..].to_vec(),
            ndjson: k == 2,
        },
        _ => return None,
    };
    Some((to, Request { from, ask }))
}

/// Answer envelope: kind, the waiting connection's key and generation, the answer's bytes.
pub fn encode_answer(to: Responder, bytes: &[u8]) -> Arc<[u8]> {
    let mut out = Vec::with_capacity(9 + bytes.len());
    out.push(ANSWER_KIND);
    out.extend_from_slice(&to.key.to_be_bytes());
    out.extend_from_slice(&to.generation.to_be_bytes());
    out.extend_from_slice(bytes);
    Arc::from(out)
}

/// (key, generation, answer bytes) of an answer envelope.
pub fn decode_answer(env: &[u8]) -> Option<(u32, u32, &[u8])> {
    if env.first() != Some(&ANSWER_KIND) {
        return None;
    }
    Some((u32_at(env, 1)?, u32_at(env, 5)?, env.get(9..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ask: Ask) -> Request {
        Request {
            from: Responder {
                core: 1,
                key: 77,
                generation: 9,
                keep: true,
            },
            ask,
        }
    }

    const T: Target = Target {
        key: 5,
        generation: 6,
        secret: [3; 16],
    };

    #[test]
    fn envelopes_round_trip_and_junk_is_refused() {
        for ask in [
            Ask::Poll,
            Ask::Post {
                body: b"[1]".to_vec(),
                ndjson: false,
            },
            Ask::Post {
                body: b"a\nb".to_vec(),
                ndjson: true,
            },
        ] {
            let r = req(ask);
            let env = encode_request(T, &r);
            assert_eq!(decode_request(&env), Some((T, r)));
            assert_eq!(decode_request(&env[..36]), None);
        }
        let mut bad = encode_request(T, &req(Ask::Poll)).to_vec();
        bad[36] = 7;
        assert_eq!(decode_request(&bad), None);
        let a = encode_answer(req(Ask::Poll).from, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            decode_answer(&a),
            Some((77, 9, &b"HTTP/1.1 200 OK\r\n"[..]))
        );
        assert_eq!(decode_answer(&a[..5]), None);
        assert_eq!(decode_answer(&[ANSWER_KIND + 1]), None);
    }

    #[test]
    fn a_request_needs_the_right_generation_and_secret_and_room() {
        let mut s = Sessions::default();
        s.open(5, 6, [3; 16]);
        let wrong_secret = Target {
            secret: [4; 16],
            ..T
        };
        assert!(matches!(
            s.push(wrong_secret, req(Ask::Poll)),
            Err(Missed::Gone(_))
        ));
        let old = Target { generation: 5, ..T };
        assert!(matches!(s.push(old, req(Ask::Poll)), Err(Missed::Gone(_))));
        for _ in 0..MAX_INBOX {
            s.push(T, req(Ask::Poll)).unwrap();
        }
        assert!(matches!(s.push(T, req(Ask::Poll)), Err(Missed::Full(_))));
        assert!(!s.next_is_post(5, 6));
        assert_eq!(s.take(5, 6), Some(req(Ask::Poll)));
        assert_eq!(s.take(5, 7), None, "another generation's");
        assert_eq!(s.close(5, 6).len(), MAX_INBOX - 1);
        assert!(s.is_empty());
        assert!(matches!(s.push(T, req(Ask::Poll)), Err(Missed::Gone(_))));
    }
}
