//! Cross-core delivery: a full mesh of bounded SPSC rings between cores (glommio `channel_mesh`).
//!
//! A core that publishes puts one [`Envelope`] (topic + the already-framed bytes, both
//! reference-counted) in a bounded local outbox per peer core. One forwarder task per peer moves
//! envelopes from the outbox onto that peer's SPSC ring, waiting while the ring is full. On the
//! receiving side one task per peer drains its ring and hands each envelope to the core's local
//! fan-out. No core ever touches another core's connections.
//!
//! Policy when a peer is slow: the forwarder waits (bounded by the ring), the outbox absorbs up to
//! its capacity, and beyond that the envelope is dropped for that peer and counted in
//! [`Bus::dropped`]. Order: envelopes from one core to one peer are FIFO end to end, so messages
//! from one publisher on one topic arrive in order everywhere.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};

/// One broadcast on its way to another core.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub topic: Arc<str>,
    /// The complete WebSocket frame, encoded once by the publishing core.
    pub frame: Arc<[u8]>,
}

/// Capacity of each SPSC ring between two cores.
pub const RING_CAPACITY: usize = 1024;

/// A mesh for `cores` cores; clone it into every core and [`Bus::join`] there.
pub fn mesh(cores: usize) -> MeshBuilder<Envelope, Full> {
    MeshBuilder::full(cores, RING_CAPACITY)
}

/// One core's end of the mesh.
pub struct Bus {
    outboxes: Vec<LocalSender<Envelope>>,
    peer_id: usize,
    dropped: Rc<Cell<u64>>,
    sent: Rc<Cell<u64>>,
    received: Rc<Cell<u64>>,
}

impl Bus {
    /// Join the mesh (waits for every core to join) and start the forwarder and receiver tasks.
    /// `deliver` is called on this core for every envelope another core published.
    pub async fn join(
        mesh: MeshBuilder<Envelope, Full>,
        outbox_capacity: usize,
        deliver: impl Fn(Envelope) + 'static,
    ) -> Result<Bus, glommio::GlommioError<()>> {
        let (senders, mut receivers) = mesh.join().await?;
        let peer_id = senders.peer_id();
        let senders: Rc<Senders<Envelope>> = Rc::new(senders);
        let sent = Rc::new(Cell::new(0u64));
        let received = Rc::new(Cell::new(0u64));
        let mut outboxes = Vec::new();
        for peer in 0..senders.nr_consumers() {
            if peer == peer_id {
                continue;
            }
            let (tx, rx) = local_channel::new_bounded::<Envelope>(outbox_capacity.max(1));
            let senders = senders.clone();
            let sent = sent.clone();
            glommio::spawn_local(async move {
                while let Some(env) = rx.recv().await {
                    if senders.send_to(peer, env).await.is_err() {
                        break; // the peer is gone (shutdown)
                    }
                    sent.set(sent.get() + 1);
                }
            })
            .detach();
            outboxes.push(tx);
        }
        let deliver = Rc::new(deliver);
        for (_peer, stream) in receivers.streams() {
            let deliver = deliver.clone();
            let received = received.clone();
            glommio::spawn_local(async move {
                while let Some(env) = stream.recv().await {
                    received.set(received.get() + 1);
                    deliver(env);
                }
            })
            .detach();
        }
        Ok(Bus {
            outboxes,
            peer_id,
            dropped: Rc::new(Cell::new(0)),
            sent,
            received,
        })
    }

    /// This core's index in the mesh.
    pub fn peer_id(&self) -> usize {
        self.peer_id
    }

    /// Queue `env` for every other core. Never waits; a full outbox drops and counts.
    pub fn publish(&self, env: &Envelope) {
        for tx in &self.outboxes {
            if tx.try_send(env.clone()).is_err() {
                self.dropped.set(self.dropped.get() + 1);
            }
        }
    }

    /// Envelopes dropped because a peer's outbox was full.
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
        self.outboxes.iter().map(LocalSender::len).sum()
    }

    /// Envelopes waiting in the fullest outbox: a publisher that can wait keeps this under the
    /// outbox capacity and then never loses a message.
    pub fn fullest_outbox(&self) -> usize {
        self.outboxes
            .iter()
            .map(LocalSender::len)
            .max()
            .unwrap_or(0)
    }
}
