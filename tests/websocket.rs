//! The WebSocket side on real sockets: echo, cores, close handshake, ping/pong, error closes,
//! graceful stop. The client is tungstenite (an independent implementation) where it can be, and
//! raw frames where the test needs bytes a correct client would never send.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{
    MASK, TestServer, closed_within, header, http_exchange, read_close_code, read_frame,
    upgrade_request,
};
use corecast::proto::frame::{OpCode, encode_masked};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, connect};

fn send(s: &mut std::net::TcpStream, op: OpCode, fin: bool, payload: &[u8]) {
    let mut out = Vec::new();
    encode_masked(&mut out, op, fin, payload, MASK);
    s.write_all(&out).unwrap();
}

#[test]
fn echoes_text_and_binary_on_connections_spread_over_cores() {
    let srv = TestServer::start(&["--echo", "--cores", "2"]);
    let mut cores = HashSet::new();
    let mut clients = Vec::new();
    for i in 0..24 {
        let (ws, resp) = connect(srv.url("/echo")).expect("connect");
        let core = resp
            .headers()
            .get("x-corecast-core")
            .expect("core header")
            .to_str()
            .unwrap()
            .to_string();
        cores.insert(core);
        clients.push((i, ws));
    }
    for (i, ws) in clients.iter_mut() {
        let text = format!("hello {i} ünïcødé ✓");
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
        let bin: Vec<u8> = (0..=255u8).cycle().take(70_000 + *i).collect();
        ws.send(Message::binary(bin.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(bin));
    }
    assert!(
        cores.len() >= 2,
        "all 24 connections landed on one core: {cores:?}"
    );
}

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Text, false, "héllo ".as_bytes());
    send(&mut s, OpCode::Ping, true, b"p1");
    send(
        &mut s,
        OpCode::Continuation,
        false,
        &"wörld".as_bytes()[..2],
    );
    send(&mut s, OpCode::Continuation, true, &"wörld".as_bytes()[2..]);
    assert_eq!(read_frame(&mut s).unwrap(), (0xA, b"p1".to_vec()));
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (0x1, "héllo wörld".as_bytes().to_vec())
    );
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Ping, true, b"are you there?");
    assert_eq!(
        read_frame(&mut s).unwrap(),
        (0xA, b"are you there?".to_vec())
    );
}

#[test]
fn close_handshake_echoes_the_code_and_closes_tcp() {
    let srv = TestServer::start(&["--echo"]);
    let (mut ws, _) = connect(srv.url("/echo")).unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    // The server's answering close, with its code: None until one arrives, Some(None) for a
    // close without a code.
    let mut answer = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => answer = Some(f.map(|f| f.code)),
            Ok(_) => continue,
            // After the close handshake: the server closed the TCP connection.
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
    assert_eq!(
        answer,
        Some(Some(CloseCode::Normal)),
        "the server must answer the close with the same code"
    );
}

#[test]
fn protocol_errors_close_with_1002() {
    let srv = TestServer::start(&["--echo"]);
    // An unmasked client frame.
    let mut s = srv.open_echo();
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A reserved bit set.
    let mut s = srv.open_echo();
    let mut f = Vec::new();
    encode_masked(&mut f, OpCode::Text, true, b"x", MASK);
    f[0] |= 0x40;
    s.write_all(&f).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // A reserved opcode.
    let mut s = srv.open_echo();
    let mut f = Vec::new();
    encode_masked(&mut f, OpCode::Binary, true, b"x", MASK);
    f[0] = 0x80 | 0x3;
    s.write_all(&f).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
    // A continuation with no message started.
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Continuation, true, b"x");
    assert_eq!(read_close_code(&mut s), Some(1002));
    // A 64-bit length with the top bit set.
    let mut s = srv.open_echo();
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    f.extend_from_slice(&MASK);
    s.write_all(&f).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn invalid_utf8_closes_with_1007() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Text, true, &[b'o', b'k', 0xff, 0xfe]);
    assert_eq!(read_close_code(&mut s), Some(1007));
    // Invalid across fragments: a lead byte, then a non-continuation byte.
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Text, false, &[b'a', 0xe2]);
    send(&mut s, OpCode::Continuation, true, b"zz");
    assert_eq!(read_close_code(&mut s), Some(1007));
}

#[test]
fn oversize_frame_and_message_close_with_1009() {
    let srv = TestServer::start(&["--echo", "--max-frame", "1024", "--max-message", "2048"]);
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Binary, true, &[7u8; 1025]);
    assert_eq!(read_close_code(&mut s), Some(1009));
    // A header announcing 2^40 bytes is refused from the header alone.
    let mut s = srv.open_echo();
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 40).to_be_bytes());
    f.extend_from_slice(&MASK);
    s.write_all(&f).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1009));
    // Fragments each under max_frame, together over max_message.
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Binary, false, &[1u8; 1000]);
    send(&mut s, OpCode::Continuation, false, &[1u8; 1000]);
    send(&mut s, OpCode::Continuation, true, &[1u8; 1000]);
    assert_eq!(read_close_code(&mut s), Some(1009));
}

#[test]
fn frames_sent_right_behind_the_request_are_not_lost() {
    let srv = TestServer::start(&["--echo"]);
    let mut s = srv.connect_tcp();
    let mut bytes = upgrade_request("/echo").into_bytes();
    encode_masked(&mut bytes, OpCode::Text, true, b"early", MASK);
    let (status, _) = http_exchange(&mut s, &bytes);
    assert_eq!(status, 101);
    assert_eq!(read_frame(&mut s).unwrap(), (0x1, b"early".to_vec()));
}

#[test]
fn sigterm_sends_1001_and_exits_in_bounded_time() {
    let mut srv = TestServer::start(&["--echo", "--cores", "2", "--shutdown-timeout-ms", "3000"]);
    let mut socks: Vec<_> = (0..6).map(|_| srv.open_echo()).collect();
    // Prove they are open.
    for s in socks.iter_mut() {
        send(s, OpCode::Text, true, b"x");
        assert_eq!(read_frame(s).unwrap(), (0x1, b"x".to_vec()));
    }
    srv.terminate();
    for s in socks.iter_mut() {
        assert_eq!(read_close_code(s), Some(1001));
        // Answer like a client would so the server can finish the handshake.
        let mut f = Vec::new();
        corecast::proto::frame::encode_masked(
            &mut f,
            OpCode::Close,
            true,
            &1001u16.to_be_bytes(),
            MASK,
        );
        let _ = s.write_all(&f);
    }
    let status = srv
        .wait_exit(Duration::from_secs(8))
        .expect("server did not exit");
    assert!(status.success(), "{status:?}");
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(srv.addr).is_err());
}

#[test]
fn many_connections_stay_independent_when_one_misbehaves() {
    let srv = TestServer::start(&["--echo", "--cores", "2"]);
    let (mut good, _) = connect(srv.url("/echo")).unwrap();
    let mut bad = srv.open_echo();
    bad.write_all(&[0x81, 0x05, 1, 2, 3, 4, 5]).unwrap(); // unmasked
    assert_eq!(read_close_code(&mut bad), Some(1002));
    good.send(Message::text("still here")).unwrap();
    assert_eq!(good.read().unwrap(), Message::text("still here"));
    let _ = header;
}

/// Read frames until the server's close; answer nothing. Returns (close code, pongs seen).
fn close_after_pongs(s: &mut std::net::TcpStream) -> (Option<u16>, usize) {
    let mut pongs = 0;
    loop {
        let (op, payload) = read_frame(s).expect("expected a close frame");
        match op {
            0xA => pongs += 1,
            8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (code, pongs);
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    }
}

/// Ping every 100 ms until the server closes (at most `limit`); returns the close code and how
/// long it took.
fn ping_until_closed(s: &mut std::net::TcpStream, limit: Duration) -> (Option<u16>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while start.elapsed() < limit {
        let mut ping = Vec::new();
        encode_masked(&mut ping, OpCode::Ping, true, b"still here", MASK);
        let _ = s.write_all(&ping); // fails once the server has gone
        loop {
            match read_frame(s) {
                Ok((0xA, _)) => continue,
                Ok((8, payload)) => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (code, start.elapsed());
                }
                Ok((op, _)) => panic!("unexpected frame {op:#x}"),
                Err(_) => break, // nothing more for now (read timeout)
            }
        }
    }
    panic!("still open after {limit:?} of pings");
}

#[test]
fn echo_sockets_have_an_idle_timeout() {
    let srv = TestServer::start_with_config("idle_timeout_ms = 400\n", &["--echo"]);
    let mut s = srv.open_echo();
    let start = Instant::now();
    assert_eq!(close_after_pongs(&mut s), (Some(1008), 0));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn a_message_left_incomplete_is_closed_at_its_deadline_though_the_peer_pings() {
    let srv = TestServer::start_with_config("message_timeout_ms = 1000\n", &["--echo"]);
    let mut s = srv.open_echo();
    send(&mut s, OpCode::Binary, false, &[1; 1000]);
    let (code, took) = ping_until_closed(&mut s, Duration::from_secs(8));
    assert_eq!(code, Some(1008));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(srv.metric("corecast_message_timeouts_total"), 1);
    // A message that completes in time is echoed, pings between its fragments or not.
    let mut s = srv.open_echo();
    for part in 0..5u8 {
        let op = if part == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        send(&mut s, op, part == 4, &[b'a' + part; 10]);
        send(&mut s, OpCode::Ping, true, b"");
        std::thread::sleep(Duration::from_millis(100));
    }
    let frames: Vec<_> = (0..6).map(|_| read_frame(&mut s).unwrap()).collect();
    assert_eq!(frames.iter().filter(|f| f.0 == 0xA).count(), 5);
    assert!(frames.contains(&(
        1,
        b"aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeee".to_vec()
    )));
}

#[test]
fn pings_do_not_keep_a_socket_whose_message_is_incomplete() {
    let srv =
        TestServer::start_with_config("idle_timeout_ms = 600\nmessage_timeout_ms = 60000\n", &[]);
    let mut s = srv.open_phx();
    // With no message pending, pings are activity: 1.5 s of them keeps the socket.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        send(&mut s, OpCode::Ping, true, b"p");
        assert_eq!(read_frame(&mut s).unwrap(), (0xA, b"p".to_vec()));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once a message is started and left incomplete, they are not.
    send(&mut s, OpCode::Text, false, b"never finished");
    let (code, took) = ping_until_closed(&mut s, Duration::from_secs(8));
    assert_eq!(code, Some(1008));
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(srv.metric("corecast_idle_timeouts_total"), 1);
}

#[test]
fn continuation_frames_count_against_the_rate_limit() {
    let srv = TestServer::start_with_config("max_messages_per_sec = 10\n", &["--echo"]);
    // 1 + 50 fragments of a message that never ends: closed after the bucket's 10.
    let mut s = srv.open_echo();
    let mut out = Vec::new();
    encode_masked(&mut out, OpCode::Binary, false, b"a", MASK);
    for _ in 0..50 {
        encode_masked(&mut out, OpCode::Continuation, false, b"b", MASK);
    }
    s.write_all(&out).unwrap();
    assert_eq!(close_after_pongs(&mut s), (Some(1008), 0));
    // Within the bucket: 8 fragments and a ping are fine.
    let mut s = srv.open_echo();
    let mut out = Vec::new();
    encode_masked(&mut out, OpCode::Binary, false, b"0", MASK);
    encode_masked(&mut out, OpCode::Ping, true, b"", MASK);
    for i in 1..8u8 {
        encode_masked(&mut out, OpCode::Continuation, i == 7, &[b'0' + i], MASK);
    }
    s.write_all(&out).unwrap();
    assert_eq!(read_frame(&mut s).unwrap(), (0xA, vec![]));
    assert_eq!(read_frame(&mut s).unwrap(), (2, b"01234567".to_vec()));
}
