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
use crate::pubsub::encode::{self, Wire};
use crate::pubsub::publication::{Publication, Refused};
use crate::pubsub::topics::Topics;
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
}

/// What every core's hub shares: the handler and every core's counters (index = core id).
pub struct Shared {
    pub handler: Arc<dyn Handler>,
    pub counters: Vec<Arc<Counters>>,
}

impl Shared {
    pub fn new(handler: Arc<dyn Handler>, cores: usize) -> Shared {
        Shared {
            handler,
            counters: (0..cores).map(|_| Arc::new(Counters::default())).collect(),
        }
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
}

impl Hub {
    pub fn new(shard: Rc<Shard>, shared: Arc<Shared>) -> Rc<Hub> {
        Rc::new(Hub {
            counters: shared.counters[shard.id].clone(),
            shard,
            shared,
            topics: RefCell::new(Topics::new()),
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

    /// Publish a checked publication: to every other core through the mesh, and here.
    pub fn publish(&self, p: Publication) {
        Stats::bump(&self.counters.broadcasts);
        self.shard.send_to_peers(&p.envelope());
        self.deliver(&p);
    }

    /// Queue `p` on every subscriber of its topic on this core, encoded once per wire format
    /// (only for the formats that have subscribers). A subscriber whose queue would pass its
    /// bound gets nothing more and is told to close with 1013 (slow consumer).
    pub fn deliver(&self, p: &Publication) {
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
                encodes += 1;
                encode::broadcast(shard, wire, p)
            });
            if let Some(frame) = frame
                && slot.offer(frame, max_bytes, max_frames)
            {
                delivered += 1;
            }
        });
        Stats::add(&self.counters.encodes, encodes);
        Stats::add(&self.counters.deliveries, delivered);
        Stats::add(&shard.stats.frames_out, delivered);
    }

    /// Deliver an envelope another core sent (ignored if it is not a publication).
    pub fn deliver_envelope(&self, env: crate::runtime::mesh::Envelope) {
        if let Some(p) = Publication::from_envelope(env) {
            self.deliver(&p);
        }
    }
}
