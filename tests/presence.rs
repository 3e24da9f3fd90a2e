//! Presence across the two cores of a real server (issue 12): every member's view, built from
//! `presence_state` and the `presence_diff`s as phoenix.js builds it, agrees, whichever core took
//! the member and whichever core owns the topic; every member sees the same diffs in the same
//! order; a cut connection is a leave; `GET /api/presence` shows the same state.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::time::{Duration, Instant};

use common::{TestServer, Ws, ws_send};
use serde_json::{Value, json};

const CONFIG: &str = "presence = [\"room:*\"]\npresence_anonymous = true\n";

/// One member: its socket, the core that took it, its view (key -> phx_refs) and every diff it
/// got, in order.
struct Member {
    ws: Ws,
    core: u64,
    view: BTreeMap<String, BTreeSet<String>>,
    diffs: Vec<Value>,
}

fn refs(v: &Value) -> impl Iterator<Item = (String, String)> + '_ {
    v.as_object().into_iter().flatten().flat_map(|(k, e)| {
        e["metas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |m| (k.clone(), m["phx_ref"].as_str().unwrap().to_string()))
    })
}

impl Member {
    fn join(srv: &TestServer, topic: &str, n: usize) -> Member {
        let (mut ws, core) = srv.phx_ws(Duration::from_millis(200));
        ws_send(
            &mut ws,
            json!(["1", "1", topic, "phx_join", {"meta": {"n": n}}]),
        );
        let mut m = Member {
            ws,
            core,
            view: BTreeMap::new(),
            diffs: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut joined = false;
        while Instant::now() < deadline {
            let Some(msg) = m.recv() else { continue };
            if msg[3] == "phx_reply" {
                assert_eq!(msg[4]["status"], "ok", "{msg}");
                joined = true;
            } else if msg[3] == "presence_state" {
                assert!(joined, "the state comes after the join reply");
                assert_eq!(msg[0], "1", "the state carries the join ref");
                for (k, r) in refs(&msg[4]) {
                    m.view.entry(k).or_default().insert(r);
                }
                return m;
            }
        }
        panic!("no presence_state");
    }

    fn recv(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(tungstenite::Message::Text(t)) => Some(serde_json::from_str(&t).unwrap()),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Take what has arrived (for about `for_`), applying diffs like phoenix.js's `syncDiff`.
    fn pump(&mut self, for_: Duration) {
        let until = Instant::now() + for_;
        while Instant::now() < until {
            let Some(msg) = self.recv() else { continue };
            if msg[3] != "presence_diff" {
                continue;
            }
            assert_eq!((&msg[0], &msg[1]), (&Value::Null, &Value::Null));
            let d = &msg[4];
            assert!(d["joins"].is_object() && d["leaves"].is_object(), "{d}");
            for (k, r) in refs(&d["joins"]) {
                self.view.entry(k).or_default().insert(r);
            }
            for (k, r) in refs(&d["leaves"]) {
                if let Some(set) = self.view.get_mut(&k) {
                    set.remove(&r);
                    if set.is_empty() {
                        self.view.remove(&k);
                    }
                }
            }
            self.diffs.push(d.clone());
        }
    }
}

fn pump_all(members: &mut [Member], for_: Duration) {
    let slice = for_ / 4 / members.len() as u32;
    for _ in 0..4 {
        for m in members.iter_mut() {
            m.pump(slice);
        }
    }
}

fn api_presence(srv: &TestServer, topic: &str) -> Value {
    let mut s = srv.connect_tcp();
    let req = format!("GET /api/presence?topic={topic} HTTP/1.1\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[test]
fn members_on_both_cores_agree_and_see_the_same_diffs() {
    let srv = TestServer::start_with_config(CONFIG, &["--cores", "2"]);
    // Two topics, so that (whatever the hash) each core is probably home of one; members on
    // both cores for each.
    for topic in ["room:a", "room:b"] {
        let mut members: Vec<Member> = Vec::new();
        let mut n = 0;
        while members.iter().filter(|m| m.core == 0).count() < 2
            || members.iter().filter(|m| m.core == 1).count() < 2
        {
            assert!(n < 40, "the kernel never spread sockets over both cores");
            members.push(Member::join(&srv, topic, n));
            n += 1;
        }
        pump_all(&mut members, Duration::from_millis(1200));
        let total: usize = members.len();
        for m in &members {
            assert_eq!(m.view.len(), total, "core {}: {:?}", m.core, m.view);
        }
        // Every member saw, from the diff it joined in on, the same diffs in the same order.
        let longest = members.iter().map(|m| m.diffs.len()).max().unwrap();
        let full = members.iter().find(|m| m.diffs.len() == longest).unwrap();
        for m in &members {
            let tail = &full.diffs[full.diffs.len() - m.diffs.len()..];
            assert_eq!(m.diffs, tail, "core {}", m.core);
        }
        let api: BTreeMap<String, BTreeSet<String>> =
            refs(&api_presence(&srv, topic)).fold(BTreeMap::new(), |mut acc, (k, r)| {
                acc.entry(k).or_default().insert(r);
                acc
            });
        assert_eq!(api, members[0].view, "the API's state");

        // Cut one member's connection on each core (no close frame, no leave): a leave for
        // everyone else.
        for core in [0, 1] {
            let i = members.iter().position(|m| m.core == core).unwrap();
            drop(members.remove(i)); // the TCP connection closes without a WebSocket close
        }
        pump_all(&mut members, Duration::from_millis(1200));
        for m in &members {
            assert_eq!(m.view.len(), total - 2, "core {}: {:?}", m.core, m.view);
        }
    }
    assert!(srv.metric("corecast_presence_diffs_total") >= 4);
    // Every member is gone now: the homes forget both topics.
    let deadline = Instant::now() + Duration::from_secs(3);
    while srv.metric("corecast_presence_entries") + srv.metric("corecast_presence_topics") > 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(srv.metric("corecast_presence_entries"), 0);
    assert_eq!(srv.metric("corecast_presence_topics"), 0);
}
