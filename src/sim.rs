//! The 2 M simulation: the per-core tables, connection state and subscriptions of N virtual
//! connections in one process, without sockets, driven through the real code paths.
//!
//! Each core runs on its own thread with its own [`Shard`] and [`Hub`]. Every virtual connection
//! gets a slot, its protocol state (frame decoder + Phoenix session, as an open socket holds them)
//! and joins a topic by feeding a real `phx_join` text through [`Session::on_frame`]; its `ok`
//! reply is written to a null sink. Then every core delivers one publication ([`Hub::deliver`],
//! as each does when the mesh brings it: encoded once per core, queued on every subscriber), and
//! every queue is drained into the null sink. What this leaves out, and the socket-level measurement covers: the glommio socket and
//! task of each connection and the kernel's socket memory.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::app::handler::DefaultHandler;
use crate::config::Config;
use crate::proto::frame::Decoder;
use crate::proto::phoenix::{Frame, Payload};
use crate::pubsub::hub::{self, Hub};
use crate::pubsub::publication::Publication;
use crate::pubsub::session::{Ctx, Session};
use crate::runtime::shard::{Shard, Shared, Stats};

/// What a virtual connection holds besides its slot: the same state an open socket's task holds.
struct VirtualConn {
    decoder: Decoder,
    session: Session,
}

/// Figures of one simulation run.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub connections: usize,
    pub cores: usize,
    pub topics: usize,
    /// Every connection tracked in its topic's presence (`--presence`).
    pub presence: bool,
    /// Presence entries held after every diff went out (home state on each core).
    pub presence_entries: u64,
    /// Process RSS growth per connection after every connection joined (allocator included).
    pub rss_bytes_per_conn: f64,
    /// Static sizes: slot + connection state + topic entry, before heap.
    pub slot_bytes: usize,
    pub conn_state_bytes: usize,
    pub setup_secs: f64,
    /// Wall time to queue one broadcast on every subscriber (all cores in parallel).
    pub fanout_secs: f64,
    /// Wall time to drain every queue into the null sink.
    pub drain_secs: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub frame_bytes: usize,
}

/// Run the simulation: `connections` spread evenly over `cores`, joined round-robin to `topics`
/// topics; the broadcast goes to topic 0 (with `topics == 1`, to everybody). With `presence`,
/// every join is tracked (anonymous key, meta `{"n": i}`) and each core publishes its diffs
/// before RSS is read, so the figure holds the presence state as it stays: the home's state and
/// the core's replica. (Without a mesh each core is the home of its own members' presences; a
/// real server with C cores keeps one home copy and C replica copies of each entry.)
pub fn run(connections: usize, cores: usize, topics: usize, presence: bool) -> SimReport {
    let cores = cores.max(1);
    let topics = topics.max(1);
    let cfg = Config {
        max_channels: 1,
        presence: if presence {
            vec!["room:*".into()]
        } else {
            Vec::new()
        },
        presence_anonymous: true,
        presence_diff_window_ms: 1,
        max_presences_per_topic: usize::MAX,
        ..Config::default()
    };
    let shared = Arc::new(Shared {
        cfg: Arc::new(cfg),
        stats: (0..cores).map(|_| Arc::new(Stats::default())).collect(),
        started: Instant::now(),
    });
    let channels = Arc::new(hub::Shared::new(Arc::new(DefaultHandler), cores));
    let rss0 = crate::runtime::sys::rss_bytes().unwrap_or(0);
    let setup = Instant::now();
    // Phase 1 on every core: build, then report; phase 2 waits for the go signal so the fan-out
    // is measured with all cores at once, as with the mesh.
    let barrier = Arc::new(std::sync::Barrier::new(cores + 1));
    let handles: Vec<_> = (0..cores)
        .map(|core| {
            let (shared, channels) = (shared.clone(), channels.clone());
            let barrier = barrier.clone();
            let n = connections / cores + usize::from(core < connections % cores);
            std::thread::spawn(move || core_sim(core, n, topics, shared, channels, &barrier))
        })
        .collect();
    barrier.wait(); // everybody joined
    let setup_secs = setup.elapsed().as_secs_f64();
    let rss1 = crate::runtime::sys::rss_bytes().unwrap_or(0);
    barrier.wait(); // go: fan out
    let t = Instant::now();
    barrier.wait(); // everybody queued
    let fanout_secs = t.elapsed().as_secs_f64();
    barrier.wait(); // everybody drained
    let drain_secs = t.elapsed().as_secs_f64() - fanout_secs;
    let mut deliveries = 0;
    let mut frame_bytes = 0;
    for h in handles {
        let (d, f) = h.join().unwrap_or((0, 0));
        deliveries += d;
        frame_bytes = frame_bytes.max(f);
    }
    let presence_entries = channels.total(|c| &c.presence_entries);
    SimReport {
        connections,
        cores,
        topics,
        presence,
        presence_entries,
        rss_bytes_per_conn: (rss1.saturating_sub(rss0)) as f64 / connections.max(1) as f64,
        slot_bytes: std::mem::size_of::<crate::runtime::shard::Slot>(),
        conn_state_bytes: std::mem::size_of::<VirtualConn>(),
        setup_secs,
        fanout_secs,
        drain_secs,
        deliveries,
        deliveries_per_sec: deliveries as f64 / fanout_secs.max(1e-9),
        frame_bytes,
    }
}

fn core_sim(
    core: usize,
    n: usize,
    topics: usize,
    shared: Arc<Shared>,
    channels: Arc<hub::Shared>,
    barrier: &std::sync::Barrier,
) -> (u64, usize) {
    let shard = Shard::new(core, shared);
    let hub = Hub::new(shard.clone(), channels);
    let mut conns = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let (key, generation) = shard.open_slot();
        let mut vc = VirtualConn {
            decoder: Decoder::new(),
            session: Session::new(None),
        };
        let join = format!(
            r#"["{i}","{i}","room:{}","phx_join",{{"meta":{{"n":{i}}}}}]"#,
            i % topics
        );
        let ctx = Ctx {
            hub: &hub,
            key,
            generation,
            wire: crate::pubsub::encode::Wire::V2,
        };
        let _ = vc.session.on_frame(ctx, Frame::Text(&join));
        shard.drain_queue(key, |_| {}); // the join reply goes to the null sink
        conns.push(vc);
        keys.push(key);
    }
    if shard.cfg.presence_topic("room:0") {
        // The window passes; the diffs go out (queued on the members, drained to the sink).
        loop {
            std::thread::sleep(std::time::Duration::from_millis(2));
            hub.on_tick();
            for &key in &keys {
                shard.drain_queue(key, |_| {});
            }
            if !hub.presence.borrow().has_pending() {
                break;
            }
        }
        crate::runtime::sys::release_free_memory();
    }
    barrier.wait(); // joined
    barrier.wait(); // go
    let payload = r#"{"body":"hello everybody","at":1700000000000}"#;
    // Every core delivers the same publication, as each does when the mesh brings it: encoded
    // once per core, queued on each of its subscribers.
    if let Ok(p) = Publication::new("room:0", "new_msg", Payload::Json(payload)) {
        hub.deliver(&p);
    }
    barrier.wait(); // queued
    let (mut delivered, mut frame_len) = (0u64, 0);
    for &key in &keys {
        shard.drain_queue(key, |f| {
            delivered += 1;
            frame_len = f.len();
        });
    }
    barrier.wait(); // drained
    debug_assert!(conns.iter().all(|c| c.decoder.is_idle()));
    drop(conns);
    (delivered, frame_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_the_broadcast_once() {
        let r = run(10_000, 2, 1, false);
        assert_eq!(r.deliveries, 10_000);
        let r = run(10_000, 2, 4, false);
        assert_eq!(r.deliveries, 2_500, "only topic 0's subscribers");
        assert!(r.frame_bytes > 40);
    }

    #[test]
    fn with_presence_every_connection_is_one_entry_and_still_gets_the_broadcast() {
        let r = run(10_000, 2, 10, true);
        assert_eq!(r.presence_entries, 10_000);
        assert_eq!(r.deliveries, 1_000, "topic 0's members");
    }
}
