//! Stress test of the cross-core rings: several executors each publish a numbered sequence to all
//! the others at once; every core must receive every message of every other core, exactly once and
//! in each publisher's order. A second test fills an outbox past its bound and checks the drops
//! are counted rather than stored.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecast::mesh::{self, Bus, Envelope};
use glommio::{LocalExecutorBuilder, Placement};

const CORES: usize = 4;
const PER_CORE: u64 = 20_000;

fn envelope(origin: usize, seq: u64) -> Envelope {
    let mut frame = Vec::with_capacity(16);
    frame.extend_from_slice(&(origin as u64).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    Envelope {
        topic: Arc::from(format!("origin:{origin}")),
        frame: Arc::from(frame),
    }
}

fn decode(env: &Envelope) -> (usize, u64) {
    let o = u64::from_le_bytes(env.frame[..8].try_into().unwrap()) as usize;
    let s = u64::from_le_bytes(env.frame[8..16].try_into().unwrap());
    assert_eq!(&*env.topic, format!("origin:{o}"));
    (o, s)
}

#[test]
fn every_message_arrives_once_in_publisher_order() {
    let builder = mesh::mesh(CORES);
    let handles: Vec<_> = (0..CORES)
        .map(|_| {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    // next[o] = the sequence number expected next from core o.
                    let next = Rc::new(RefCell::new(vec![0u64; CORES]));
                    let n2 = next.clone();
                    let bus = Bus::join(builder, 256, move |env| {
                        let (o, s) = decode(&env);
                        let mut next = n2.borrow_mut();
                        assert_eq!(s, next[o], "from core {o}: got {s}, expected {}", next[o]);
                        next[o] += 1;
                    })
                    .await
                    .expect("join mesh");
                    let me = bus.peer_id();
                    for seq in 0..PER_CORE {
                        // A well-behaved publisher waits while its outbox is half full.
                        while bus.fullest_outbox() > 128 {
                            glommio::timer::sleep(Duration::from_micros(50)).await;
                        }
                        bus.publish(&envelope(me, seq));
                    }
                    // Wait (bounded) until everything from every peer has arrived.
                    let want = PER_CORE * (CORES as u64 - 1);
                    for _ in 0..20_000 {
                        if bus.received() == want && bus.backlog() == 0 && bus.sent() == want {
                            break;
                        }
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    let next = next.borrow().clone();
                    // Keep the tasks alive until every core is done receiving.
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    (me, next, bus.received(), bus.sent(), bus.dropped())
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        let (me, next, received, sent, dropped) = h.join().unwrap();
        assert_eq!(dropped, 0, "core {me} dropped");
        assert_eq!(
            received,
            PER_CORE * (CORES as u64 - 1),
            "core {me} received"
        );
        assert_eq!(sent, PER_CORE * (CORES as u64 - 1), "core {me} sent");
        for (o, n) in next.iter().enumerate() {
            let want = if o == me { 0 } else { PER_CORE };
            assert_eq!(*n, want, "core {me} from core {o}");
        }
    }
}

#[test]
fn a_full_outbox_drops_and_counts_instead_of_growing() {
    let builder = mesh::mesh(2);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let bus = Bus::join(builder, 8, |_env| {}).await.expect("join");
                    let me = bus.peer_id();
                    if me == 0 {
                        // Publish without yielding: the forwarder cannot run, so at most the
                        // outbox capacity (8) is held and the rest is counted as dropped.
                        for seq in 0..1000 {
                            bus.publish(&envelope(me, seq));
                        }
                        assert_eq!(bus.backlog(), 8);
                        assert_eq!(bus.dropped(), 992);
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    (me, bus.received())
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        let (me, received) = h.join().unwrap();
        if me == 1 {
            assert_eq!(received, 8, "the 8 queued envelopes are delivered");
        }
    }
}
