//! The request to stop, as every core sees it: a flag, and each core's tick loop waker, so that
//! a request wakes every core at once instead of waiting for their next tick.
//!
//! A signal handler may only set the flag (it must not take a lock); whoever can run ordinary
//! code (the process's signal thread, [`crate::server::Server::stop`]) calls [`Stop::request`],
//! which also wakes the cores. A core that only sees the flag sees it at its next tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

pub struct Stop {
    flag: Arc<AtomicBool>,
    /// Each core's tick loop waker while it waits for a tick.
    cores: Box<[Mutex<Option<Waker>>]>,
}

impl Stop {
    /// A request for `cores` cores, set when `flag` is.
    pub fn new(flag: Arc<AtomicBool>, cores: usize) -> Stop {
        Stop {
            flag,
            cores: (0..cores).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Ask every core to stop, and wake each at once.
    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        for core in self.cores.iter() {
            let waker = core.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Wake core `core` through `waker` when a stop is requested. Look at [`Stop::requested`]
    /// after this: a request that came just before is not missed.
    pub fn watch(&self, core: usize, waker: &Waker) {
        if let Some(slot) = self.cores.get(core) {
            let mut w = slot.lock().unwrap_or_else(|p| p.into_inner());
            if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
                *w = Some(waker.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_request_sets_the_flag_and_wakes_every_watching_core_once() {
        let flag = Arc::new(AtomicBool::new(false));
        let stop = Stop::new(flag.clone(), 3);
        let counts: Vec<Arc<Count>> = (0..2)
            .map(|_| Arc::new(Count(Default::default())))
            .collect();
        for (core, c) in counts.iter().enumerate() {
            stop.watch(core, &Waker::from(c.clone()));
        }
        assert!(!stop.requested());
        stop.request();
        assert!(stop.requested() && flag.load(Ordering::SeqCst));
        stop.request(); // wakers were taken: a second request wakes nobody again
        for c in &counts {
            assert_eq!(c.0.load(Ordering::SeqCst), 1);
        }
    }
}
