//! HTTP hooks to the app's backend (issue 15): connect, join and push decided by a server in
//! any language. Knows nothing of Phoenix: it POSTs the JSON bodies the cores built and hands
//! back what the backend answered (or why it could not).
//!
//! One thread (`corecast-hooks`) runs a current-thread tokio runtime with a keep-alive HTTP/1.1
//! client (hyper). Cores hand it requests through one bounded MPSC (`try_send`, never waits;
//! bounded again per core by `max_in_flight_per_core`), and it hands each answer back through
//! that core's bounded [`crate::runtime::inbox`], waking the core's hooks task. Every request
//! has its timeout; every URL its circuit breaker. See ARCHITECTURE.md "Hooks" and
//! docs/hooks.md for the JSON.

pub mod breaker;
pub mod client;
