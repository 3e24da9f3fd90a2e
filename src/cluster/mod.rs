//! Several nodes as one server, over NATS (issue 13). Knows nothing of Phoenix: it carries
//! opaque publication bytes between nodes and the topics the cores are interested in.
//!
//! One bridge thread per node runs the official client (`async-nats`) on a current-thread tokio
//! runtime. The cores talk to it through queues that never block a core: up, one bounded MPSC
//! (a publication that finds it full is dropped and counted; interest changes go on an unbounded
//! one, at most a few per topic), and down, one bounded queue per core whose consumer task the
//! bridge wakes with the core's waker (`runtime::inbox`, glommio's foreign wake, as the reactor's bell does). When
//! a core's down queue is full the bridge waits for room (FIFO kept), which backs up into the
//! NATS subscription's buffer (and at its end NATS counts a slow consumer). See ARCHITECTURE.md
//! "Cluster".

pub mod bridge;
pub mod subject;
