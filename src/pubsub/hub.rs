//! The per-core hub: this core's topic table, its channel counters, and the two halves of a
//! broadcast. [`Hub::publish`] checks and packs a publication, hands it to the runtime's mesh
//! for every other core, and delivers it here; [`Hub::deliver`] (here, and on every other core
//! when the envelope arrives) looks the topic up in this core's own table, encodes the
//! publication once per wire format that has subscribers, lazily, and queues that one shared
//! buffer on each of them. No core touches another core's connections.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::handler::Handler;
use crate::proto::phoenix::Payload;

/// The event of a presence diff (Phoenix's name).
pub const EVENT_PRESENCE_DIFF: &str = "presence_diff";
/// The event of the state a joiner gets.
pub const EVENT_PRESENCE_STATE: &str = "presence_state";
use crate::cluster::bridge::{Down, Link};
use crate::pubsub::encode::{self, Wire};
use crate::pubsub::history::{History, Recovery, ReplayLimits};
use crate::pubsub::longpoll;
use crate::pubsub::presence::{OP_KIND, Op, Refs, Tracker, home_of};
use crate::pubsub::publication::{Publication, Refused};
use crate::pubsub::topics::{Sub, Subscription, Topics};
use crate::runtime::shard::{Shard, Stats};

/// Channel counters of one core (written by it, read by whichever core renders `/metrics`).
#[derive(Default)]
pub struct Counters {
    pub joins: AtomicU64,
    pub join_errors: AtomicU64,
    /// Joined channels (gauge).
    pub channels: AtomicU64,
    /// Broadcasts published from this core.
    pub broadcasts: AtomicU64,
    /// Broadcast frames queued on this core's subscribers.
    pub deliveries: AtomicU64,
    /// Broadcast frames encoded on this core: one per publication per wire format with
    /// subscribers here, whatever their number.
    pub encodes: AtomicU64,
    /// Panics caught in the handler, at any of its call sites.
    pub handler_panics: AtomicU64,
    /// Client pushes and broadcasts refused for a reserved event name.
    pub refused_events: AtomicU64,
    /// Broadcasts refused for a JSON payload that is not an object.
    pub refused_payloads: AtomicU64,
    /// `presence_diff`s this core published (as the home of their topics).
    pub presence_diffs: AtomicU64,
    /// Presences added and removed at this core (as the home of their topics).
    pub presence_tracks: AtomicU64,
    pub presence_untracks: AtomicU64,
    /// Tracks refused at the home (over `max_presences_per_topic`) and joins refused for it.
    pub presence_refused: AtomicU64,
    /// Sockets closed by `POST /api/disconnect`.
    pub disconnects: AtomicU64,
    /// Presence topics this core is home of, and their entries (gauges, every tick).
    pub presence_topics: AtomicU64,
    pub presence_entries: AtomicU64,
    /// Open dashboard sockets (`/dashboard/live`) on this core (gauge).
    pub dashboards: AtomicU64,
    /// Long-poll sessions on this core (gauge), sessions opened, closed for no poll in 1.5
    /// windows, new ones refused (`max_longpoll_sessions`), and requests this core sent to the
    /// core of their session.
    pub longpoll_sessions: AtomicU64,
    pub longpoll_opened: AtomicU64,
    pub longpoll_expired: AtomicU64,
    pub longpoll_refused: AtomicU64,
    pub longpoll_forwarded: AtomicU64,
    /// History topics, entries and bytes this core keeps (gauges, every tick).
    pub history_topics: AtomicU64,
    pub history_entries: AtomicU64,
    pub history_bytes: AtomicU64,
    /// Joins that asked to recover and did / could not, and the publications replayed.
    pub history_recovered: AtomicU64,
    pub history_unrecovered: AtomicU64,
    pub history_replayed: AtomicU64,
    /// This core's biggest topics by subscribers here, as of its last second while some
    /// dashboard was open (empty otherwise): written by this core once a second, read by the
    /// cores that send dashboard frames. The one lock of the pub/sub layer, off every
    /// connection's path (see ARCHITECTURE.md "Threads").
    pub top_topics: std::sync::Mutex<Vec<(Box<str>, u32)>>,
}

/// What every core's hub shares: the handler and every core's counters (index = core id).
pub struct Shared {
    pub handler: Arc<dyn Handler>,
    pub counters: Vec<Arc<Counters>>,
    /// Verifies connection tokens (none: no token key is configured).
    pub verifier: Option<Arc<crate::app::auth::Verifier>>,
}

impl Shared {
    pub fn new(handler: Arc<dyn Handler>, cores: usize) -> Shared {
        Shared {
            handler,
            counters: (0..cores).map(|_| Arc::new(Counters::default())).collect(),
            verifier: None,
        }
    }

    /// With this token verifier.
    pub fn with_verifier(mut self, v: Option<Arc<crate::app::auth::Verifier>>) -> Shared {
        self.verifier = v;
        self
    }

    /// One counter summed over every core.
    pub fn total(&self, counter: fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters
            .iter()
            .map(|c| counter(c).load(Ordering::Relaxed))
            .sum()
    }
}

/// One core's pub/sub state, next to its runtime [`Shard`].
pub struct Hub {
    pub shard: Rc<Shard>,
    pub shared: Arc<Shared>,
    /// This core's counters.
    pub counters: Arc<Counters>,
    pub topics: RefCell<Topics>,
    /// This core's presence (see `pubsub::presence`).
    pub presence: RefCell<Tracker>,
    /// The time of the core's last tick: a presence change is stamped with it, so the tick after
    /// the window publishes it (a change is out within a window of the tick it came in).
    presence_clock: std::cell::Cell<std::time::Instant>,
    /// This core's end of the cluster bridge (a cluster node only).
    cluster: std::cell::OnceCell<Link>,
    /// This core's backend hooks (with `[hooks]` only).
    hooked: std::cell::OnceCell<Rc<crate::pubsub::pending::Hooked>>,
    /// Socket ids (`Handler::socket_id`) -> this core's sockets with that id, as (key,
    /// generation); entries of closed sockets are skipped and swept (`sweep_ids`).
    ids: RefCell<SocketIds>,
    /// Ticks since the last sweep of `ids`.
    ids_age: std::cell::Cell<u32>,
    /// This core's dashboard sockets and what it sends them (see `crate::http::dashboard`).
    pub live: crate::pubsub::live::Live,
    /// This core's long-poll sessions and the requests waiting for them.
    pub longpoll: RefCell<crate::pubsub::longpoll::Sessions>,
    /// This core's copy of every history topic's ring, and the sequencer of the topics it is
    /// home of (see `pubsub::history`).
    pub history: RefCell<History>,
}

/// Socket id -> this core's sockets with it, as (slot key, generation).
type SocketIds = std::collections::HashMap<Box<str>, Vec<(u32, u32)>>;

/// The first byte of a disconnect envelope on the mesh (publications 0 and 1, presence ops 2).
const DISCONNECT_KIND: u8 = 3;

impl Hub {
    pub fn new(shard: Rc<Shard>, shared: Arc<Shared>) -> Rc<Hub> {
        Rc::new(Hub {
            counters: shared.counters[shard.id].clone(),
            shard: shard.clone(),
            presence: RefCell::new(Tracker::new(Refs::new(
                crate::runtime::sys::random_bytes(),
                shard.id,
            ))),
            shared,
            topics: RefCell::new(Topics::new()),
            presence_clock: std::cell::Cell::new(std::time::Instant::now()),
            cluster: std::cell::OnceCell::new(),
            hooked: std::cell::OnceCell::new(),
            ids: RefCell::new(std::collections::HashMap::new()),
            ids_age: std::cell::Cell::new(0),
            longpoll: RefCell::new(Default::default()),
            live: Default::default(),
            history: RefCell::new(History::new(
                shard.cfg.history_max_bytes,
                u64::from_le_bytes(crate::runtime::sys::random_bytes()),
                std::time::Instant::now(),
            )),
        })
    }

    /// The embedder's handler.
    pub fn handler(&self) -> &dyn Handler {
        &*self.shared.handler
    }

    /// Run a handler callback; a panic is caught and counted, and gives `None`. Every call into
    /// the handler goes through here, so every panic is counted the same way.
    pub fn guard<R>(&self, f: impl FnOnce(&dyn Handler) -> R) -> Option<R> {
        let handler = self.handler();
        match catch_unwind(AssertUnwindSafe(|| f(handler))) {
            Ok(r) => Some(r),
            Err(_) => {
                Stats::bump(&self.counters.handler_panics);
                None
            }
        }
    }

    /// Broadcast `event` with `payload` to every subscriber of `topic` on every core: the one
    /// way into the fan-out, for client pushes and the HTTP API alike (refusals are counted).
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload<'_>) -> Result<(), Refused> {
        self.check(topic, event, payload).map(|p| self.publish(p))
    }

    /// [`Publication::new`], with its refusals counted.
    pub fn check(
        &self,
        topic: &str,
        event: &str,
        payload: Payload<'_>,
    ) -> Result<Publication, Refused> {
        Publication::new(topic, event, payload).inspect_err(|why| match why {
            Refused::ReservedEvent => Stats::bump(&self.counters.refused_events),
            Refused::NotAnObject => Stats::bump(&self.counters.refused_payloads),
            Refused::TooLong => {}
        })
    }

    /// Publish a checked publication: to every other core through the mesh, here, and (on a
    /// cluster node) once to the cluster, for the other nodes.
    pub fn publish(&self, p: Publication) {
        Stats::bump(&self.counters.broadcasts);
        if self.is_history(&p) {
            return self.to_sequencer(p);
        }
        self.shard.send_to_peers(&p.envelope());
        if let Some(link) = self.cluster.get() {
            link.publish(p.topic(), p.envelope().0);
        }
        self.deliver(&p);
    }

    /// Add a subscriber to this core's table; the first of a topic tells the cluster bridge
    /// (a node subscribes to a topic's subject only while it has local subscribers).
    pub fn subscribe(&self, topic: &str, sub: Sub) -> Subscription {
        let mut topics = self.topics.borrow_mut();
        let first = topics.count(topic) == 0;
        let s = topics.subscribe(topic, sub);
        if first && let Some(link) = self.cluster.get() {
            link.interest(topic, true, self.shard.cfg.presence_topic(topic));
        }
        s
    }

    /// Remove a subscription; the last of a topic tells the cluster bridge.
    pub fn unsubscribe(&self, s: &Subscription) {
        let mut topics = self.topics.borrow_mut();
        let had = topics.count(&s.topic) > 0;
        topics.unsubscribe(s);
        if had
            && topics.count(&s.topic) == 0
            && let Some(link) = self.cluster.get()
        {
            link.interest(&s.topic, false, false);
        }
    }

    /// Become a cluster node's core: publications go to the cluster too, and what other nodes
    /// publish is delivered here (a task of this core takes it off the bridge's queue).
    pub fn join_cluster(self: &Rc<Self>, link: Link) {
        if self.cluster.set(link).is_err() {
            return;
        }
        let hub = self.clone();
        glommio::spawn_local(async move {
            loop {
                let link = hub.cluster.get().expect("set above");
                let bytes = std::future::poll_fn(|cx| link.poll_recv(cx)).await;
                hub.from_cluster(bytes);
            }
        })
        .detach();
    }

    /// Use the backend hooks (`[hooks]`) through this core's end of the hooks thread.
    pub fn join_hooks(&self, link: crate::hooks::client::Link, cfg: crate::config::Hooks) {
        let h = crate::pubsub::pending::Hooked::new(link, cfg);
        h.spawn(self.shard.clone());
        let _ = self.hooked.set(h);
    }

    /// This core's backend hooks, when configured.
    pub fn hooks(&self) -> Option<&Rc<crate::pubsub::pending::Hooked>> {
        self.hooked.get()
    }

    /// What the cluster bridge handed this core. A publication another node sent is delivered
    /// on this core only (the bridge hands every core its own copy) and never published again;
    /// the rest is presence across nodes (see ARCHITECTURE.md "Cluster").
    pub fn from_cluster(&self, down: Down) {
        match down {
            Down::Publication { bytes, origin } => {
                let Some(p) = Publication::from_envelope(crate::runtime::mesh::Envelope(bytes))
                else {
                    return;
                };
                if self.is_history(&p) {
                    // Sequenced on this node by the topic's home here (each node's order).
                    let (home, me) = self.presence_home(p.topic());
                    if home == me {
                        self.sequence(p, false);
                    }
                    return;
                }
                let (topic, event, payload) = p.parts();
                if let (EVENT_PRESENCE_DIFF, Payload::Json(diff)) = (event, payload)
                    && self.shard.cfg.presence_topic(topic)
                {
                    let mut tracker = self.presence.borrow_mut();
                    let origin = tracker.origin(&origin);
                    tracker.apply_from(topic, diff, origin);
                } else if crate::proto::phoenix::is_reserved_event(event) {
                    // The only reserved event a node publishes is a presence topic's diff: any
                    // other (a `phx_close` from a faulty or hostile peer) reaches nobody.
                    Stats::bump(&self.counters.refused_events);
                    return;
                }
                self.fan_out(&p);
            }
            Down::StateRequest { topic, reply } => {
                let (home, me) = self.presence_home(&topic);
                if !self.shard.cfg.presence_topic(&topic) || home != me {
                    return; // only the topic's home answers
                }
                if let Some(link) = self.cluster.get() {
                    let state = self.presence.borrow().published_state(&topic);
                    link.reply(&reply, &topic, &state);
                }
            }
            Down::Seed {
                topic,
                origin,
                diff,
            } => {
                let fresh = {
                    let mut tracker = self.presence.borrow_mut();
                    let origin = tracker.origin(&origin);
                    tracker.seed(&topic, &diff, origin)
                };
                if let Some(diff) = fresh {
                    self.fan_out(&Publication::system(&topic, EVENT_PRESENCE_DIFF, &diff));
                }
            }
            Down::Disconnect(id) => {
                self.disconnect_here(&id);
            }
            Down::NodeDown(origin) => {
                let leaves = self.presence.borrow_mut().drop_origin(&origin);
                for (topic, diff) in leaves {
                    self.fan_out(&Publication::system(&topic, EVENT_PRESENCE_DIFF, &diff));
                }
            }
        }
    }

    /// The cluster's state, on a cluster node.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::bridge::State>> {
        self.cluster.get().map(|l| &l.state)
    }

    /// Queue `p` on every subscriber of its topic on this core, encoded once per wire format
    /// (only for the formats that have subscribers). A subscriber whose queue would pass its
    /// bound gets nothing more and is told to close with 1013 (slow consumer).
    pub fn deliver(&self, p: &Publication) {
        if p.position().is_some()
            && let Some(rule) = self.shard.cfg.history_rule(p.topic())
        {
            let now = self.presence_clock.get();
            self.history.borrow_mut().append(p, rule, now);
        }
        if let (_, EVENT_PRESENCE_DIFF, Payload::Json(diff)) = p.parts()
            && self.shard.cfg.presence_topic(p.topic())
        {
            // Only a topic's home publishes this event (clients and the API may not): this
            // core's copy of the state takes it before its subscribers do.
            self.presence.borrow_mut().apply_published(p.topic(), diff);
        }
        self.fan_out(p);
    }

    /// Queue `p` on this core's subscribers of its topic (see [`Hub::deliver`]).
    fn fan_out(&self, p: &Publication) {
        let shard = &*self.shard;
        let (max_bytes, max_frames) = (
            shard.cfg.out_queue_max_bytes,
            shard.cfg.out_queue_max_frames,
        );
        let topics = self.topics.borrow();
        let mut slots = shard.slots.borrow_mut();
        // Per format: not encoded yet (None), or the frame (Some(None) if it cannot be encoded).
        let mut frames: [Option<Option<Arc<[u8]>>>; Wire::COUNT] = Default::default();
        let (mut delivered, mut encodes) = (0u64, 0u64);
        topics.for_each_subscriber(p.topic(), |sub| {
            let Some(slot) = slots.get_mut(sub.key()) else {
                return;
            };
            if slot.generation != sub.generation {
                return;
            }
            let Some(wire) = Wire::from_number(sub.wire()) else {
                return;
            };
            let frame = frames[wire.number() as usize].get_or_insert_with(|| {
                // None: no form in this format (a binary payload for V1); not an encode.
                let frame = encode::broadcast(shard, wire, p);
                encodes += u64::from(frame.is_some());
                frame
            });
            if let Some(frame) = frame
                && slot.offer(frame, max_bytes, max_frames)
            {
                shard.wake_deferred(slot);
                delivered += 1;
            }
        });
        Stats::add(&self.counters.encodes, encodes);
        Stats::add(&self.counters.deliveries, delivered);
        Stats::add(&shard.stats.frames_out, delivered);
    }

    /// Note that the socket in slot `key` of `generation` has socket id `id`.
    pub fn register_id(&self, id: &str, key: usize, generation: u32) {
        let mut ids = self.ids.borrow_mut();
        match ids.get_mut(id) {
            Some(v) => v.push((key as u32, generation)),
            None => {
                ids.insert(id.into(), vec![(key as u32, generation)]);
            }
        }
    }

    /// Close every socket with id `id` on every core and, on a cluster node, every node.
    /// Returns how many this core closed.
    pub fn disconnect(&self, id: &str) -> usize {
        let mut env = Vec::with_capacity(1 + id.len());
        env.push(DISCONNECT_KIND);
        env.extend_from_slice(id.as_bytes());
        self.shard
            .send_to_peers(&crate::runtime::mesh::Envelope(Arc::from(env)));
        if let Some(link) = self.cluster.get() {
            link.disconnect(id);
        }
        self.disconnect_here(id)
    }

    /// Close this core's sockets with id `id` (1000 "disconnected": phoenix.js reconnects and
    /// authenticates again).
    fn disconnect_here(&self, id: &str) -> usize {
        let Some(socks) = self.ids.borrow_mut().remove(id) else {
            return 0;
        };
        let mut slots = self.shard.slots.borrow_mut();
        let mut n = 0;
        for (key, generation) in socks {
            if let Some(slot) = slots.get_mut(key as usize)
                && slot.generation == generation
            {
                slot.signals |= crate::runtime::shard::signal::KICK;
                slot.wake();
                n += 1;
            }
        }
        Stats::add(&self.counters.disconnects, n as u64);
        n
    }

    /// Forget ids of sockets that have closed (every ten seconds, from the tick).
    fn sweep_ids(&self) {
        let slots = self.shard.slots.borrow();
        self.ids.borrow_mut().retain(|_, socks| {
            socks.retain(|&(key, generation)| {
                slots
                    .get(key as usize)
                    .is_some_and(|s| s.generation == generation)
            });
            !socks.is_empty()
        });
    }

    /// Deliver an envelope another core sent: a publication, a presence op for a topic this
    /// core is home of, or a disconnect (anything else is ignored).
    pub fn deliver_envelope(&self, env: crate::runtime::mesh::Envelope) {
        if env.0.first() == Some(&longpoll::REQUEST_KIND) {
            if let Some((to, req)) = longpoll::decode_request(&env.0) {
                self.longpoll_here(to, req);
            }
        } else if env.0.first() == Some(&longpoll::ANSWER_KIND) {
            if let Some((key, generation, bytes)) = longpoll::decode_answer(&env.0) {
                self.longpoll_queue_answer(key, generation, Arc::from(bytes));
            }
        } else if env.0.first() == Some(&DISCONNECT_KIND) {
            if let Ok(id) = std::str::from_utf8(&env.0[1..]) {
                self.disconnect_here(id);
            }
        } else if env.0.first() == Some(&OP_KIND) {
            if let Some(op) = Op::decode(&env.0) {
                self.presence_at_home(op);
            }
        } else if let Some(p) = Publication::from_envelope(env) {
            if self.is_history(&p) {
                self.to_sequencer(p); // another core's, for this core to sequence
            } else {
                self.deliver(&p);
            }
        }
    }

    /// This core's index in the mesh (0 alone).
    pub fn mesh_index(&self) -> u16 {
        self.shard.mesh_peer_id().unwrap_or(0) as u16
    }

    /// Hand a long-poll request to its session on core `core` (this one: at once; another:
    /// over the mesh, bounded like a broadcast: a request dropped at the hard bound is answered
    /// by the waiting connection's own deadline).
    pub fn longpoll_send(&self, core: u16, to: longpoll::Target, req: longpoll::Request) {
        if core == self.mesh_index() || self.shard.mesh_peer_id().is_none() {
            self.longpoll_here(to, req);
        } else {
            Stats::bump(&self.counters.longpoll_forwarded);
            let env = crate::runtime::mesh::Envelope(longpoll::encode_request(to, &req));
            self.shard.send_to_core(usize::from(core), env);
        }
    }

    /// A long-poll request for a session of this core: queued for its task (woken), or answered
    /// at once when there is no such session (410) or it has too many waiting (500).
    fn longpoll_here(&self, to: longpoll::Target, req: longpoll::Request) {
        let pushed = self.longpoll.borrow_mut().push(to, req);
        let (req, status) = match pushed {
            Ok(()) => {
                if let Some(slot) = self.shard.slots.borrow_mut().get_mut(to.key as usize) {
                    slot.wake();
                }
                return;
            }
            Err(longpoll::Missed::Gone(req)) => (req, 410),
            Err(longpoll::Missed::Full(req)) => (req, 500),
        };
        let body = crate::proto::phoenix::longpoll::status_body(status);
        let keep = self.shard.cfg.http_keepalive().filter(|_| req.from.keep);
        self.longpoll_answer(req.from, longpoll::http_answer(&body, keep));
    }

    /// Send the answer to a long-poll request to the connection that waits for it.
    pub fn longpoll_answer(&self, to: longpoll::Responder, bytes: Arc<[u8]>) {
        if to.core == self.mesh_index() || self.shard.mesh_peer_id().is_none() {
            self.longpoll_queue_answer(to.key, to.generation, bytes);
        } else {
            let env = crate::runtime::mesh::Envelope(longpoll::encode_answer(to, &bytes));
            self.shard.send_to_core(usize::from(to.core), env);
        }
    }

    /// Queue an answer on the connection of this core that waits for it (only while it does:
    /// `ready::AWAITING`), and wake it.
    fn longpoll_queue_answer(&self, key: u32, generation: u32, bytes: Arc<[u8]>) {
        use crate::runtime::reactor::ready;
        use crate::runtime::shard::signal;
        let mut slots = self.shard.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(key as usize)
            && slot.generation == generation
            && slot.io & ready::AWAITING != 0
        {
            slot.io &= !ready::AWAITING;
            slot.push(bytes);
            slot.signals |= signal::ANSWER;
            slot.wake();
        }
    }

    /// Whether `p` is a publication of a history topic that has not been sequenced yet. Without
    /// `[[history]]` one length check, so ordinary topics take no extra hop and no lookup.
    fn is_history(&self, p: &Publication) -> bool {
        let cfg = &self.shard.cfg;
        !cfg.history.is_empty()
            && p.position().is_none()
            && !crate::proto::phoenix::is_reserved_event(p.event())
            && cfg.history_rule(p.topic()).is_some()
    }

    /// Hand a history topic's publication to its sequencer, its home core (taken at once when
    /// that is this core).
    fn to_sequencer(&self, p: Publication) {
        let (home, me) = self.presence_home(p.topic());
        if home == me || self.shard.mesh_peer_id().is_none() {
            self.sequence(p, true);
        } else {
            self.shard.send_to_core(home, p.into_envelope());
        }
    }

    /// As a history topic's home: give `p` the topic's next offset and publish it to every
    /// core, this one included (every core keeps it in its ring as it delivers it). The plain
    /// publication goes to the cluster when it was published on this node (`to_cluster`): other
    /// nodes sequence it for themselves (order and offsets are per node, see README "History").
    fn sequence(&self, p: Publication, to_cluster: bool) {
        let cfg = &self.shard.cfg;
        let Some(rule) = cfg.history_rule(p.topic()) else {
            return;
        };
        let now = self.presence_clock.get();
        let pos = self.history.borrow_mut().next(p.topic(), rule, now);
        let s = p.sequenced(pos.offset, pos.epoch, &cfg.history_pos_key);
        self.shard.send_to_peers(&s.envelope());
        if to_cluster && let Some(link) = self.cluster.get() {
            link.publish(p.topic(), p.envelope().0);
        }
        self.deliver(&s);
    }

    /// A join on `topic`, a history topic: its position on this core and, if the join's params
    /// ask to recover (`{"recover": {"epoch": E, "offset": N}}`), what it missed, to be pushed
    /// right after the join reply. `None` off history topics. Everything delivered on this core
    /// so far is in its ring and everything after goes to the new subscriber, so the two meet
    /// with no gap and no duplicate.
    /// `since`: what the join's params asked to recover ([`crate::pubsub::history::recover_of`]).
    pub fn history_join(
        &self,
        topic: &str,
        since: Option<Option<crate::pubsub::history::Position>>,
    ) -> Option<Recovery> {
        let cfg = &self.shard.cfg;
        let rule = cfg.history_rule(topic)?;
        let limits = ReplayLimits {
            publications: cfg.history_max_replay,
            bytes: cfg.out_queue_max_bytes / 2,
        };
        let now = self.presence_clock.get();
        let r = self
            .history
            .borrow_mut()
            .recover(topic, rule, since, limits, now);
        match r.recovered {
            Some(true) => {
                Stats::bump(&self.counters.history_recovered);
                Stats::add(&self.counters.history_replayed, r.replay.len() as u64);
            }
            Some(false) => Stats::bump(&self.counters.history_unrecovered),
            None => {}
        }
        Some(r)
    }

    /// The index of the core that owns `topic`'s presence, and this core's, in the mesh.
    fn presence_home(&self, topic: &str) -> (usize, usize) {
        let me = self.shard.mesh_peer_id().unwrap_or(0);
        (home_of(topic, self.shard.cores()), me)
    }

    /// Send a presence change to its topic's home (taken at once when that is this core).
    pub fn presence_send(&self, op: Op) {
        let (home, me) = self.presence_home(op.topic());
        if home == me || self.shard.mesh_peer_id().is_none() {
            self.presence_at_home(op);
        } else {
            let env = crate::runtime::mesh::Envelope(Arc::from(op.encode()));
            self.shard.send_to_core(home, env);
        }
    }

    /// Take a presence change as the topic's home.
    fn presence_at_home(&self, op: Op) {
        let track = matches!(op, Op::Track { .. });
        let max = self.shard.cfg.max_presences_per_topic;
        let changed = self
            .presence
            .borrow_mut()
            .on_op(op, max, self.presence_clock.get());
        match (changed, track) {
            (true, true) => Stats::bump(&self.counters.presence_tracks),
            (true, false) => Stats::bump(&self.counters.presence_untracks),
            (false, true) => Stats::bump(&self.counters.presence_refused),
            (false, false) => {}
        }
    }

    /// Every tick: publish the presence diffs whose window has passed (as their topics' home),
    /// and refresh the presence gauges. True while changes wait to be published.
    pub fn on_tick(&self) -> bool {
        let age = self.ids_age.get() + 1;
        if age >= 100 {
            self.sweep_ids();
            self.ids_age.set(0);
        } else {
            self.ids_age.set(age);
        }
        let now = std::time::Instant::now();
        self.presence_clock.set(now);
        // Ticks come every 100 ms, give or take: half a tick of slack, so that a 100 ms window
        // is one tick, not sometimes two.
        let window = std::time::Duration::from_millis(self.shard.cfg.presence_diff_window_ms)
            .saturating_sub(crate::runtime::wheel::TICK / 2);
        // What one tick may send a topic's members stays small next to their queue bound
        // (1/16 of it, 256 KiB by default, in frames of at most 64 KiB), whatever the storm: a
        // bigger one is paced over the next ticks and its members' queues drain in between.
        let budget = self.shard.cfg.out_queue_max_bytes / 16;
        let frame = budget.clamp(4 << 10, 64 << 10);
        let due = self.presence.borrow_mut().due(now, window, budget, frame);
        for (topic, diff) in due {
            Stats::bump(&self.counters.presence_diffs);
            self.publish(Publication::system(&topic, EVENT_PRESENCE_DIFF, &diff));
        }
        let c = &self.counters;
        if !self.shard.cfg.history.is_empty() {
            let mut history = self.history.borrow_mut();
            if age.is_multiple_of(10) {
                let cfg = &self.shard.cfg;
                history.sweep(now, |t| cfg.history_rule(t));
            }
            let (topics, entries, bytes) = history.totals();
            c.history_topics.store(topics as u64, Ordering::Relaxed);
            c.history_entries.store(entries as u64, Ordering::Relaxed);
            c.history_bytes.store(bytes as u64, Ordering::Relaxed);
        }
        let tracker = self.presence.borrow();
        let (topics, entries) = tracker.home_totals();
        c.presence_topics.store(topics as u64, Ordering::Relaxed);
        c.presence_entries.store(entries as u64, Ordering::Relaxed);
        tracker.has_pending()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The hub on cores built without sockets (as `crate::sim` builds them): what one broadcast
    //! costs a core, and who gets it. The builders are shared with `pubsub::session`'s tests.

    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use crate::app::handler::DefaultHandler;
    use crate::config::Config;
    use crate::pubsub::topics::Sub;
    use crate::runtime::shard::{self, signal};

    /// `n` cores (hubs) with `cfg` and `handler`, as `crate::sim` builds them: no sockets, no
    /// reactor, no mesh.
    pub(crate) fn cores(n: usize, cfg: Config, handler: Arc<dyn Handler>) -> Vec<Rc<Hub>> {
        let shared = Arc::new(shard::Shared {
            cfg: Arc::new(cfg),
            stats: (0..n).map(|_| Arc::new(Stats::default())).collect(),
            started: Instant::now(),
        });
        let channels = Arc::new(Shared::new(handler, n));
        (0..n)
            .map(|id| Hub::new(Shard::new(id, shared.clone()), channels.clone()))
            .collect()
    }

    /// One core with `cfg` and `handler`.
    pub(crate) fn core(cfg: Config, handler: Arc<dyn Handler>) -> Rc<Hub> {
        cores(1, cfg, handler).remove(0)
    }

    /// One complete server text frame (FIN, unmasked) parsed as JSON.
    pub(crate) fn json_of(frame: &[u8]) -> Value {
        assert_eq!(frame[0], 0x81, "a final text frame");
        let (len, header) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => panic!("a test frame over 64 KiB"),
            n => (usize::from(n), 2),
        };
        assert_eq!(frame.len(), header + len, "one whole frame");
        serde_json::from_slice(&frame[header..]).expect("a JSON message")
    }

    /// Take what is queued on `key` as JSON messages.
    pub(crate) fn queued(hub: &Hub, key: usize) -> Vec<Value> {
        let mut out = Vec::new();
        hub.shard.drain_queue(key, |f| out.push(json_of(f)));
        out
    }

    fn counter(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// A connection subscribed to `topic` straight in the table (V2), as a join leaves it.
    fn subscriber(hub: &Hub, topic: &str) -> usize {
        let (key, generation) = hub.shard.open_slot();
        let sub = Sub::new(key, generation, Wire::V2.number());
        hub.topics.borrow_mut().subscribe(topic, sub);
        key
    }

    fn json(s: &str) -> Payload<'_> {
        Payload::Json(s)
    }

    #[test]
    fn a_thousand_subscribers_cost_one_encode_and_share_one_buffer() {
        let hub = core(Config::default(), Arc::new(DefaultHandler));
        let big: Vec<usize> = (0..1000).map(|_| subscriber(&hub, "room:big")).collect();
        let other: Vec<usize> = (0..50).map(|_| subscriber(&hub, "room:other")).collect();
        let c = &hub.counters;
        let out_before = counter(&hub.shard.stats.frames_out);
        hub.broadcast("room:big", "new_msg", json(r#"{"n":1}"#))
            .unwrap();
        assert_eq!(counter(&c.broadcasts), 1);
        assert_eq!(counter(&c.encodes), 1, "one encode for 1,000 subscribers");
        assert_eq!(counter(&c.deliveries), 1000);
        assert_eq!(counter(&hub.shard.stats.frames_out) - out_before, 1000);
        {
            let slots = hub.shard.slots.borrow();
            let first = slots[big[0]].outq[0].clone();
            for &key in &big {
                let q = &slots[key].outq;
                assert_eq!(q.len(), 1, "exactly once");
                assert!(Arc::ptr_eq(&q[0], &first), "the same shared buffer");
                assert_eq!(slots[key].out_bytes as usize, first.len());
            }
            for &key in &other {
                assert!(slots[key].outq.is_empty(), "another topic's subscriber");
            }
            assert_eq!(
                json_of(&first),
                serde_json::json!([null, null, "room:big", "new_msg", {"n": 1}])
            );
        }
        // A second broadcast: one more encode, not one per subscriber.
        hub.broadcast("room:big", "new_msg", json(r#"{"n":2}"#))
            .unwrap();
        assert_eq!((counter(&c.encodes), counter(&c.deliveries)), (2, 2000));
    }

    #[test]
    fn a_topic_without_subscribers_here_is_never_encoded() {
        let hub = core(Config::default(), Arc::new(DefaultHandler));
        let key = subscriber(&hub, "room:elsewhere");
        hub.broadcast("room:empty", "new_msg", json("{}")).unwrap();
        let c = &hub.counters;
        assert_eq!(counter(&c.broadcasts), 1, "published all the same");
        assert_eq!((counter(&c.encodes), counter(&c.deliveries)), (0, 0));
        // Nor a topic whose only subscriber's connection has gone (its slot reused since).
        let gone = subscriber(&hub, "room:gone");
        hub.shard.close_slot(gone);
        let (reused, _) = hub.shard.open_slot();
        assert_eq!(reused, gone, "the slab hands the key out again");
        hub.broadcast("room:gone", "new_msg", json("{}")).unwrap();
        assert_eq!((counter(&c.encodes), counter(&c.deliveries)), (0, 0));
        assert!(
            queued(&hub, reused).is_empty(),
            "not for the slot's next user"
        );
        assert!(queued(&hub, key).is_empty());
    }

    #[test]
    fn each_core_encodes_once_for_its_own_subscribers() {
        let hubs = cores(2, Config::default(), Arc::new(DefaultHandler));
        let here: Vec<usize> = (0..10).map(|_| subscriber(&hubs[0], "room:1")).collect();
        let there: Vec<usize> = (0..20).map(|_| subscriber(&hubs[1], "room:1")).collect();
        // What the mesh carries from core 0 to core 1 (no mesh here: handed over by hand).
        let p = hubs[0]
            .check("room:1", "new_msg", json(r#"{"a":1}"#))
            .unwrap();
        hubs[0].publish(p.clone());
        hubs[1].deliver_envelope(p.into_envelope());
        for (hub, keys) in [(&hubs[0], &here), (&hubs[1], &there)] {
            let c = &hub.counters;
            assert_eq!(counter(&c.encodes), 1, "core {}", hub.shard.id);
            assert_eq!(counter(&c.deliveries), keys.len() as u64);
            for &key in keys.iter() {
                assert_eq!(queued(hub, key).len(), 1);
            }
        }
        assert_eq!(hubs[0].shared.total(|c| &c.broadcasts), 1, "published once");
    }

    #[test]
    fn a_subscriber_over_its_bound_gets_overflow_and_the_others_lose_nothing() {
        let cfg = Config {
            out_queue_max_frames: 4,
            ..Config::default()
        };
        let hub = core(cfg, Arc::new(DefaultHandler));
        let slow = subscriber(&hub, "room:1");
        let fast: Vec<usize> = (0..3).map(|_| subscriber(&hub, "room:1")).collect();
        let mut got = vec![Vec::new(); fast.len()];
        for n in 0..10 {
            let payload = format!(r#"{{"n":{n}}}"#);
            hub.broadcast("room:1", "m", json(&payload)).unwrap();
            for (i, &key) in fast.iter().enumerate() {
                got[i].extend(queued(&hub, key).into_iter().map(|m| m[4]["n"].clone()));
            }
            let signals = hub.shard.slots.borrow()[slow].signals;
            assert_eq!(signals & signal::OVERFLOW != 0, n >= 4, "after {n}");
        }
        assert_eq!(hub.shard.take_signals(slow), signal::OVERFLOW);
        let kept: Vec<Value> = queued(&hub, slow)
            .into_iter()
            .map(|m| m[4]["n"].clone())
            .collect();
        assert_eq!(
            kept,
            (0..4).map(Value::from).collect::<Vec<_>>(),
            "nothing past the bound"
        );
        for g in &got {
            assert_eq!(*g, (0..10).map(Value::from).collect::<Vec<_>>());
        }
        let c = &hub.counters;
        assert_eq!(counter(&c.encodes), 10);
        assert_eq!(counter(&c.deliveries), 30 + 4);
    }

    #[test]
    fn the_byte_bound_counts_like_the_frame_bound() {
        let body = "x".repeat(1000);
        let payload = format!(r#"{{"b":"{body}"}}"#);
        let cfg = Config {
            out_queue_max_bytes: 2500, // room for two of these frames, not three
            ..Config::default()
        };
        let hub = core(cfg, Arc::new(DefaultHandler));
        let (slow, fast) = (subscriber(&hub, "room:1"), subscriber(&hub, "room:1"));
        for _ in 0..3 {
            hub.broadcast("room:1", "m", json(&payload)).unwrap();
            assert_eq!(queued(&hub, fast).len(), 1);
        }
        assert_eq!(hub.shard.take_signals(slow), signal::OVERFLOW);
        assert_eq!(queued(&hub, slow).len(), 2);
    }
}
