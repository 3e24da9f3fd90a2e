//! A bounded queue from a thread of tokio (the cluster bridge, the hooks thread) to one core:
//! the thread's `try_send` never waits, and wakes the core's consumer task through an
//! [`AtomicWaker`] (glommio's foreign wake, as the reactor's bell does); the core's
//! [`Inbox::poll_recv`] never blocks. One mechanism for every thread that hands a core work.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Start one of those threads: `name`, a current-thread tokio runtime, and `run(runtime)` on
/// it until it ends (`run` builds the future from what it moved in). A runtime that cannot be
/// built is logged as `what` and the thread ends at once (its senders then see a closed queue).
pub fn spawn_tokio_thread<F>(
    name: &str,
    what: &'static str,
    run: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run()),
                Err(e) => tracing::warn!(error = %e, "{what}: cannot start the thread's runtime"),
            }
        })
}

/// A queue of at most `capacity` items to one core.
pub fn inbox<T>(capacity: usize) -> (Sender<T>, Inbox<T>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
    let waker = Arc::new(AtomicWaker::new());
    (
        Sender {
            tx,
            waker: waker.clone(),
        },
        Inbox { rx, waker },
    )
}

/// The core's end.
pub struct Inbox<T> {
    rx: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Inbox<T> {
    /// The next item, or `Pending` (the sender wakes the task once it sends).
    pub fn poll_recv(&self, cx: &Context<'_>) -> Poll<T> {
        if let Ok(item) = self.rx.try_recv() {
            return Poll::Ready(item);
        }
        self.waker.register(cx.waker());
        match self.rx.try_recv() {
            Ok(item) => Poll::Ready(item),
            Err(_) => Poll::Pending,
        }
    }
}

/// The thread's end.
pub struct Sender<T> {
    tx: SyncSender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Queue `item` and wake the core; the item back when the queue is full or the core gone.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let r = self.tx.try_send(item);
        self.waker.wake();
        r
    }

    /// Wake the core's consumer (to make room, when the queue is full).
    pub fn wake(&self) {
        self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_across_threads() {
        let (tx, rx) = inbox::<u32>(4);
        let t = std::thread::spawn(move || {
            let mut sent = 0;
            for i in 0..1000u32 {
                let mut item = i;
                loop {
                    match tx.try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(_)) => return sent,
                    }
                }
                sent += 1;
            }
            sent
        });
        let waker = futures_lite::future::block_on(std::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let cx = Context::from_waker(&waker);
        let mut next = 0;
        while next < 1000 {
            if let Poll::Ready(i) = rx.poll_recv(&cx) {
                assert_eq!(i, next, "in order");
                next += 1;
            }
        }
        assert_eq!(t.join().unwrap(), 1000);
    }
}
