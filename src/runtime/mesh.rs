//! Cross-core delivery: a full mesh of bounded SPSC rings between cores (glommio `channel_mesh`).
//!
//! A core that publishes puts one [`Envelope`] (the publication's bytes, reference-counted) in a
//! local outbox per peer core. One forwarder task per peer moves
//! envelopes from the outbox onto that peer's SPSC ring, waiting while the ring is full. On the
//! receiving side one task per peer drains its ring and hands each envelope to the core's local
//! fan-out. No core ever touches another core's connections.
//!
//! Bounds. Each outbox is bounded in envelopes ([`Limits::envelopes`], `mesh_outbox`) and in
//! bytes ([`Limits::bytes`], `mesh_outbox_bytes`). Bytes are counted with [`Envelope::cost`] from
//! the moment an envelope is queued until the peer has taken it off the ring, so they cover the
//! ring too: what one core holds for one peer never passes the byte bound. An envelope that
//! would pass either bound is dropped for that peer and counted in [`Bus::dropped`].
//!
//! Pushback, so that honest load never reaches those bounds. Once any outbox of a core reaches
//! half of either bound the core *holds* ([`Bus::holding`]): its connections stop reading (their
//! messages wait in the kernel, their senders slow down) until every outbox is under a quarter
//! of both bounds again; then the `resume` callback given to [`Bus::join`] runs once. A watcher
//! task per core notices the end of a hold: a forwarder wakes it when its outbox's length drops
//! under the low mark, and a peer's receiver (from the peer's thread: glommio queues a foreign
//! wake) when the bytes it has taken bring its link under the low mark. Only those crossings
//! wake it, never every envelope.
//!
//! Order: envelopes from one core to one peer are FIFO end to end, so messages from one publisher
//! on one topic arrive in order everywhere.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

/// One publication on its way to another core: its bytes, shared (reference-counted), never
/// copied or re-encoded on the way. Opaque to the runtime: the pub/sub layer's `Publication`
/// writes and reads them (topic, event, payload; each core then frames it per wire format).
#[derive(Debug, Clone)]
pub struct Envelope(pub Arc<[u8]>);

impl Envelope {
    /// What this envelope costs while it waits for a peer, in bytes: its slot in the outbox and
    /// the reference-counted allocation it keeps alive (counts and contents). Every byte bound
    /// and mark of the mesh is counted with this one method; the bytes are counted whole in
    /// every outbox, even though they are shared with the publishing core.
    pub fn cost(&self) -> usize {
        /// The strong and weak counts in front of an `Arc`'s contents.
        const ARC_COUNTS: usize = 2 * size_of::<usize>();
        size_of::<Envelope>() + ARC_COUNTS + self.0.len()
    }
}

/// Capacity of each SPSC ring between two cores.
pub const RING_CAPACITY: usize = 1024;

/// Bounds of each outbox (one per peer core). A core holds its publishers back from half of
/// either bound to a quarter of both (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Envelopes waiting in the outbox.
    pub envelopes: usize,
    /// Bytes ([`Envelope::cost`]) waiting in the outbox or on the ring to the peer.
    pub bytes: usize,
}

/// The rings and the per-pair byte counts of a mesh of `cores` cores; clone it into every core
/// and [`Bus::join`] there.
#[derive(Clone)]
pub struct Mesh {
    rings: MeshBuilder<Envelope, Full>,
    /// `links[from * cores + to]`, indexed by mesh peer ids.
    links: Vec<Arc<Link>>,
    cores: usize,
    limits: Limits,
}

/// A mesh for `cores` cores whose outboxes have `limits`.
pub fn mesh(cores: usize, limits: Limits) -> Mesh {
    let low = low_mark(limits.bytes) as u64;
    Mesh {
        rings: MeshBuilder::full(cores, RING_CAPACITY),
        links: (0..cores * cores)
            .map(|_| Arc::new(Link::new(low)))
            .collect(),
        cores,
        limits,
    }
}

/// Where a hold starts: half of a bound (at least 1).
fn high_mark(bound: usize) -> usize {
    (bound / 2).max(1)
}

/// Where a hold may end: a quarter of a bound (at least 1, so an empty outbox is always under).
fn low_mark(bound: usize) -> usize {
    (bound / 4).max(1)
}

/// What a sending core and one receiving core share: the bytes between them. `Arc`, both threads.
struct Link {
    /// Cost of the envelopes queued for the receiver that it has not yet taken off the ring: the
    /// sender adds when it queues, the receiver subtracts when it has delivered.
    bytes: AtomicU64,
    /// The low mark in bytes: the receiver wakes `watcher` when it brings `bytes` under it.
    low: u64,
    /// The sending core's watcher task, while that core holds.
    watcher: Mutex<Option<Waker>>,
}

impl Link {
    fn new(low: u64) -> Link {
        Link {
            bytes: AtomicU64::new(0),
            low,
            watcher: Mutex::new(None),
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The receiver has taken (and delivered) an envelope of `cost`: wake the sender's watcher if
    /// that brought the link under its low mark.
    fn taken(&self, cost: u64) {
        let before = self.bytes.fetch_sub(cost, Ordering::AcqRel);
        if before >= self.low
            && before - cost < self.low
            && let Some(w) = self.watcher.lock().ok().and_then(|mut w| w.take())
        {
            w.wake(); // usually from the receiving core's thread: glommio queues it for the owner
        }
    }

    /// Register the sending core's watcher; set before the watcher reads `bytes`, so a receiver
    /// that brings the link under the mark afterwards finds it.
    fn watch(&self, waker: Option<&Waker>) {
        if let Ok(mut w) = self.watcher.lock() {
            match (waker, w.as_ref()) {
                (Some(new), Some(old)) if old.will_wake(new) => {}
                (new, _) => *w = new.cloned(),
            }
        }
    }
}

/// Whether a core holds its publishers back, and the watcher that ends the hold. One per core.
#[derive(Default)]
struct Hold {
    on: Cell<bool>,
    /// Holds started so far.
    pauses: Cell<u64>,
    watcher: RefCell<Option<Waker>>,
}

impl Hold {
    fn wake_watcher(&self) {
        if let Some(w) = self.watcher.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A queue from this core's publishers to the forwarder task of one peer. It grows with its
/// backlog and gives the memory back when it drains: a queue allocated at its bound would cost
/// `mesh_outbox` x 32 B per peer per core (2 MiB each at the default; 3 GiB on a 40-core box)
/// and become resident as its head wrapped around.
struct Outbox {
    queue: RefCell<VecDeque<Envelope>>,
    link: Arc<Link>,
    limits: Limits,
    hold: Rc<Hold>,
    forwarder: RefCell<Option<Waker>>,
}

/// Room an empty outbox keeps; a bigger queue is freed once it drains.
const OUTBOX_KEEP: usize = 256;

impl Outbox {
    fn new(limits: Limits, link: Arc<Link>, hold: Rc<Hold>) -> Outbox {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            link,
            limits,
            hold,
            forwarder: RefCell::new(None),
        }
    }

    /// Queue `env`, unless that would pass a bound (then false: the caller drops and counts it).
    fn try_push(&self, env: Envelope) -> bool {
        let cost = env.cost() as u64;
        let mut q = self.queue.borrow_mut();
        if q.len() >= self.limits.envelopes || self.link.bytes() + cost > self.limits.bytes as u64 {
            return false;
        }
        self.link.bytes.fetch_add(cost, Ordering::AcqRel);
        q.push_back(env);
        drop(q);
        if let Some(w) = self.forwarder.borrow_mut().take() {
            w.wake();
        }
        true
    }

    async fn pop(&self) -> Envelope {
        std::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            match q.pop_front() {
                Some(env) => {
                    if q.is_empty() && q.capacity() > OUTBOX_KEEP {
                        *q = VecDeque::new();
                    }
                    if self.hold.on.get() && q.len() + 1 == low_mark(self.limits.envelopes) {
                        self.hold.wake_watcher(); // just went under the low mark
                    }
                    Poll::Ready(env)
                }
                None => {
                    *self.forwarder.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// At or over half of either bound: the core should hold.
    fn over_high(&self) -> bool {
        self.len() >= high_mark(self.limits.envelopes)
            || self.link.bytes() >= high_mark(self.limits.bytes) as u64
    }

    /// Under a quarter of both bounds: a hold may end.
    fn under_low(&self) -> bool {
        self.len() < low_mark(self.limits.envelopes) && self.link.bytes() < self.link.low
    }
}

/// One core's end of the mesh.
pub struct Bus {
    outboxes: Vec<Rc<Outbox>>,
    hold: Rc<Hold>,
    peer_id: usize,
    dropped: Rc<Cell<u64>>,
    sent: Rc<Cell<u64>>,
    received: Rc<Cell<u64>>,
}

impl Bus {
    /// Join the mesh (waits for every core to join) and start the forwarder, receiver and watcher
    /// tasks. `deliver` is called on this core for every envelope another core published;
    /// `resume` once each time a hold ends (see [`Bus::holding`]).
    pub async fn join(
        mesh: Mesh,
        deliver: impl Fn(Envelope) + 'static,
        resume: impl Fn() + 'static,
    ) -> Result<Bus, glommio::GlommioError<()>> {
        let Mesh {
            rings,
            links,
            cores,
            limits,
        } = mesh;
        let limits = Limits {
            envelopes: limits.envelopes.max(1),
            bytes: limits.bytes.max(1),
        };
        let (senders, mut receivers) = rings.join().await?;
        let me = senders.peer_id();
        let senders: Rc<Senders<Envelope>> = Rc::new(senders);
        let sent = Rc::new(Cell::new(0u64));
        let received = Rc::new(Cell::new(0u64));
        let hold = Rc::new(Hold::default());
        let mut outboxes = Vec::new();
        for peer in 0..senders.nr_consumers() {
            if peer == me {
                continue;
            }
            let link = links[me * cores + peer].clone();
            let outbox = Rc::new(Outbox::new(limits, link, hold.clone()));
            let rx = outbox.clone();
            let senders = senders.clone();
            let sent = sent.clone();
            glommio::spawn_local(async move {
                loop {
                    let env = rx.pop().await;
                    if senders.send_to(peer, env).await.is_err() {
                        break; // the peer is gone (shutdown)
                    }
                    sent.set(sent.get() + 1);
                }
            })
            .detach();
            outboxes.push(outbox);
        }
        let deliver = Rc::new(deliver);
        for (peer, stream) in receivers.streams() {
            let deliver = deliver.clone();
            let received = received.clone();
            let link = links[peer * cores + me].clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    received.set(received.get() + 1);
                    let cost = env.cost() as u64;
                    deliver(env);
                    link.taken(cost);
                }
            })
            .detach();
        }
        glommio::spawn_local(watch(hold.clone(), outboxes.clone(), resume)).detach();
        Ok(Bus {
            outboxes,
            hold,
            peer_id: me,
            dropped: Rc::new(Cell::new(0)),
            sent,
            received,
        })
    }

    /// This core's index in the mesh.
    pub fn peer_id(&self) -> usize {
        self.peer_id
    }

    /// Queue `env` for every other core. Never waits; an outbox at its bound drops and counts.
    /// Starts a hold when an outbox reaches its high mark.
    pub fn publish(&self, env: &Envelope) {
        for outbox in &self.outboxes {
            if !outbox.try_push(env.clone()) {
                self.dropped.set(self.dropped.get() + 1);
            }
            if !self.hold.on.get() && outbox.over_high() {
                self.hold.on.set(true);
                self.hold.pauses.set(self.hold.pauses.get() + 1);
                self.hold.wake_watcher();
            }
        }
    }

    /// Queue `env` for core `peer` only (nothing if `peer` is this core or not in the mesh),
    /// under the same bounds and hold as [`Bus::publish`].
    pub fn send_to(&self, peer: usize, env: Envelope) {
        if peer == self.peer_id {
            return;
        }
        let i = if peer < self.peer_id { peer } else { peer - 1 };
        let Some(outbox) = self.outboxes.get(i) else {
            return;
        };
        if !outbox.try_push(env) {
            self.dropped.set(self.dropped.get() + 1);
        }
        if !self.hold.on.get() && outbox.over_high() {
            self.hold.on.set(true);
            self.hold.pauses.set(self.hold.pauses.get() + 1);
            self.hold.wake_watcher();
        }
    }

    /// True while this core holds its publishers back: from the moment an outbox reached half of
    /// one of its bounds until every outbox is under a quarter of both. A publisher that waits
    /// while this is true never loses a message to a bound.
    pub fn holding(&self) -> bool {
        self.hold.on.get()
    }

    /// Holds started (times this core began to hold its publishers back).
    pub fn pauses(&self) -> u64 {
        self.hold.pauses.get()
    }

    /// Envelopes dropped because a peer's outbox was at its bound.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Envelopes put on rings to other cores.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Envelopes received from other cores.
    pub fn received(&self) -> u64 {
        self.received.get()
    }

    /// Envelopes waiting in this core's outboxes (ring occupancy is bounded by RING_CAPACITY).
    pub fn backlog(&self) -> usize {
        self.outboxes.iter().map(|o| o.len()).sum()
    }

    /// Bytes ([`Envelope::cost`]) this core has queued for other cores that they have not yet
    /// taken off their rings.
    pub fn backlog_bytes(&self) -> u64 {
        self.outboxes.iter().map(|o| o.link.bytes()).sum()
    }
}

/// The watcher of a core's hold: waits for a hold to start, then until every outbox is under its
/// low marks, ends the hold and calls `resume`; forever.
async fn watch(hold: Rc<Hold>, outboxes: Vec<Rc<Outbox>>, resume: impl Fn()) {
    loop {
        std::future::poll_fn(|cx| {
            *hold.watcher.borrow_mut() = Some(cx.waker().clone());
            if !hold.on.get() {
                return Poll::Pending;
            }
            for o in &outboxes {
                o.link.watch(Some(cx.waker()));
            }
            if outboxes.iter().all(|o| o.under_low()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        for o in &outboxes {
            o.link.watch(None); // receivers need not wake us until the next hold
        }
        hold.on.set(false);
        resume();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: usize) -> Envelope {
        Envelope(Arc::from(i.to_le_bytes().as_slice()))
    }

    fn outbox(envelopes: usize, bytes: usize) -> Outbox {
        let limits = Limits { envelopes, bytes };
        let link = Arc::new(Link::new(low_mark(bytes) as u64));
        Outbox::new(limits, link, Rc::new(Hold::default()))
    }

    #[test]
    fn outbox_is_bounded_fifo_and_gives_memory_back() {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor");
        ex.run(async {
            let ob = outbox(10_000, usize::MAX);
            assert_eq!(
                ob.queue.borrow().capacity(),
                0,
                "nothing allocated up front"
            );
            for i in 0..10_000 {
                assert!(ob.try_push(env(i)));
            }
            assert!(!ob.try_push(env(10_000)), "over the bound");
            assert_eq!(ob.len(), 10_000);
            for i in 0..10_000usize {
                assert_eq!(*ob.pop().await.0, i.to_le_bytes(), "FIFO");
            }
            assert!(
                ob.queue.borrow().capacity() <= OUTBOX_KEEP,
                "memory kept after draining"
            );
        });
    }

    #[test]
    fn outbox_refuses_past_its_byte_bound_and_counts_the_ring() {
        let big = |n: usize| Envelope(Arc::from(vec![7u8; n]));
        let cost = big(60_000).cost();
        assert!(cost > 60_000 && cost < 60_200, "cost {cost}");
        // Room for 10 such envelopes in bytes, far more in count.
        let ob = outbox(65_536, 10 * cost + cost / 2);
        for i in 0..10 {
            assert!(ob.try_push(big(60_000)), "envelope {i} fits");
        }
        assert!(!ob.try_push(big(60_000)), "the 11th passes the byte bound");
        assert!(ob.try_push(big(cost / 2 - 200)), "a smaller one still fits");
        assert!(ob.over_high() && !ob.under_low());
        // Taken off the queue (now on the ring) still counts; taken by the peer no longer does.
        ob.queue.borrow_mut().clear();
        assert!(!ob.try_push(big(60_000)), "the ring's bytes count too");
        ob.link.taken(cost as u64);
        assert!(ob.try_push(big(60_000)), "the peer took one: room for one");
    }
}
