//! One core's machinery, below Phoenix: connection slots and their outbound queues, the timer
//! wheel, the readiness reactor on the core's own io_uring, the cross-core mesh, counters.
//! Nothing here knows what a channel or a topic is.

pub mod inbox;
pub mod mesh;
pub mod reactor;
pub mod shard;
pub mod slot;
pub mod stats;
pub mod stop;
#[allow(unsafe_code)] // the one module that talks to the kernel; every block has a SAFETY note
pub mod sys;
pub mod wheel;
