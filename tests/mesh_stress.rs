//! Stress test of the cross-core rings: several executors each publish a numbered sequence to all
//! the others at once; every core must receive every message of every other core, exactly once and
//! in each publisher's order. A second test fills an outbox past its bound and checks the drops
//! are counted rather than stored; a third holds a publisher back on bytes that are on the ring
//! (only the receiving core can end that hold) and checks nothing is lost.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corecast::runtime::mesh::{self, Bus, Envelope, Limits};
use glommio::{LocalExecutorBuilder, Placement};

const CORES: usize = 4;
const PER_CORE: u64 = 20_000;

fn envelope(origin: usize, seq: u64) -> Envelope {
    let mut frame = Vec::with_capacity(16);
    frame.extend_from_slice(&(origin as u64).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    Envelope(Arc::from(frame))
}

fn decode(env: &Envelope) -> (usize, u64) {
    let o = u64::from_le_bytes(env.0[..8].try_into().unwrap()) as usize;
    let s = u64::from_le_bytes(env.0[8..16].try_into().unwrap());
    (o, s)
}

#[test]
fn every_message_arrives_once_in_publisher_order() {
    let builder = mesh::mesh(
        CORES,
        Limits {
            envelopes: 256,
            bytes: usize::MAX,
        },
    );
    let handles: Vec<_> = (0..CORES)
        .map(|_| {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    // next[o] = the sequence number expected next from core o.
                    let next = Rc::new(RefCell::new(vec![0u64; CORES]));
                    let n2 = next.clone();
                    let deliver = move |env: Envelope| {
                        let (o, s) = decode(&env);
                        let mut next = n2.borrow_mut();
                        assert_eq!(s, next[o], "from core {o}: got {s}, expected {}", next[o]);
                        next[o] += 1;
                    };
                    let bus = Bus::join(builder, deliver, || {}).await.expect("join mesh");
                    let me = bus.peer_id();
                    for seq in 0..PER_CORE {
                        // A well-behaved publisher waits while the bus holds (an outbox reached
                        // half of its bound, until all are under a quarter).
                        while bus.holding() {
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
    let limits = Limits {
        envelopes: 8,
        bytes: usize::MAX,
    };
    let builder = mesh::mesh(2, limits);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let bus = Bus::join(builder, |_env| {}, || {}).await.expect("join");
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

#[test]
fn a_hold_on_bytes_on_the_ring_ends_when_the_peer_takes_them() {
    // 64 KiB per outbox in bytes; the ring alone (1,024 entries) could take 4 MiB of these
    // 4 KiB envelopes, so the publisher is held on bytes the forwarder has already moved to the
    // ring: only the receiving core, from its own thread, can end the hold.
    const TOTAL: u64 = 3000;
    let limits = Limits {
        envelopes: 65_536,
        bytes: 64 << 10,
    };
    let builder = mesh::mesh(2, limits);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let builder = builder.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .spawn(move || async move {
                    let next = Rc::new(Cell::new(0u64));
                    let n2 = next.clone();
                    let resumes = Rc::new(Cell::new(0u64));
                    let r2 = resumes.clone();
                    let deliver = move |env: Envelope| {
                        let seq = u64::from_le_bytes(env.0[..8].try_into().unwrap());
                        assert_eq!(seq, n2.get(), "lost or reordered");
                        n2.set(seq + 1);
                        // A slow consumer core: 20 us per envelope.
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_micros(20) {
                            std::hint::spin_loop();
                        }
                    };
                    let bus = Bus::join(builder, deliver, move || r2.set(r2.get() + 1))
                        .await
                        .expect("join");
                    let me = bus.peer_id();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    if me == 0 {
                        let mut peak = 0;
                        for seq in 0..TOTAL {
                            while bus.holding() {
                                assert!(Instant::now() < deadline, "the hold never ended");
                                glommio::timer::sleep(Duration::from_micros(100)).await;
                            }
                            let mut frame = seq.to_le_bytes().to_vec();
                            frame.resize(4096, 0);
                            bus.publish(&Envelope(Arc::from(frame)));
                            peak = peak.max(bus.backlog_bytes());
                        }
                        assert_eq!(bus.dropped(), 0, "a publisher that waits loses nothing");
                        assert!(bus.pauses() > 10, "held {} times", bus.pauses());
                        assert!(peak <= 64 << 10, "backlog reached {peak} bytes");
                        while bus.holding() || bus.backlog_bytes() > 0 {
                            assert!(Instant::now() < deadline, "never drained");
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                        assert_eq!(resumes.get(), bus.pauses(), "one resume per hold");
                    } else {
                        while next.get() < TOTAL {
                            assert!(Instant::now() < deadline, "got {} of {TOTAL}", next.get());
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    (me, next.get())
                })
                .unwrap()
        })
        .collect();
    for h in handles {
        let (me, got) = h.join().unwrap();
        if me == 1 {
            assert_eq!(got, TOTAL, "every envelope arrived");
        }
    }
}
