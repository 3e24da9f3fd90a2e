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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

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

/// Room an empty outbox keeps; a bigger queue is freed once it drains.
const OUTBOX_KEEP: usize = 256;

/// A bounded queue from this core's publishers to the forwarder task of one peer. It grows with
/// its backlog and gives the memory back when it drains: a queue allocated at its bound would
/// cost `mesh_outbox` x 32 B per peer per core (2 MiB each at the default; 3 GiB on a 40-core
/// box) and become resident as its head wrapped around.
struct Outbox {
    queue: RefCell<VecDeque<Envelope>>,
    capacity: usize,
    forwarder: RefCell<Option<Waker>>,
}

impl Outbox {
    fn try_push(&self, env: Envelope) -> bool {
        let mut q = self.queue.borrow_mut();
        if q.len() >= self.capacity {
            return false;
        }
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
}

/// One core's end of the mesh.
pub struct Bus {
    outboxes: Vec<Rc<Outbox>>,
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
            let outbox = Rc::new(Outbox {
                queue: RefCell::new(VecDeque::new()),
                capacity: outbox_capacity.max(1),
                forwarder: RefCell::new(None),
            });
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
        for outbox in &self.outboxes {
            if !outbox.try_push(env.clone()) {
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
        self.outboxes.iter().map(|o| o.len()).sum()
    }

    /// Envelopes waiting in the fullest outbox: a publisher that can wait keeps this under the
    /// outbox capacity and then never loses a message.
    pub fn fullest_outbox(&self) -> usize {
        self.outboxes.iter().map(|o| o.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: usize) -> Envelope {
        Envelope {
            topic: Arc::from("t"),
            frame: Arc::from(i.to_le_bytes().as_slice()),
        }
    }

    #[test]
    fn outbox_is_bounded_fifo_and_gives_memory_back() {
        let ex = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor");
        ex.run(async {
            let ob = Outbox {
                queue: RefCell::new(VecDeque::new()),
                capacity: 10_000,
                forwarder: RefCell::new(None),
            };
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
                assert_eq!(*ob.pop().await.frame, i.to_le_bytes(), "FIFO");
            }
            assert!(
                ob.queue.borrow().capacity() <= OUTBOX_KEEP,
                "memory kept after draining"
            );
        });
    }
}
