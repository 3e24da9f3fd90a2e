//! A connection task's state, shared by the files that drive it: [`super::conn`] (the task, its
//! poll loop, flushing, closing), [`super::http`] (the HTTP phase) and [`super::websocket`] (the
//! WebSocket phase). Types only, so that those three do not import each other.

use std::net::TcpStream;
use std::rc::Rc;

use crate::http::{Api, BodyReservation, Format};
use crate::proto::frame::Decoder;
use crate::proto::handshake::Request;
use crate::pubsub::encode::Wire;
use crate::pubsub::hub::Hub;
use crate::pubsub::session::Session;

/// One connection's whole task state: the future `conn::serve` returns
/// (`connection_task_state_is_small`).
pub(crate) struct Conn {
    /// The core: its pub/sub hub and, through it, its runtime shard.
    pub(crate) hub: Rc<Hub>,
    pub(crate) stream: TcpStream,
    pub(crate) key: usize,
    pub(crate) generation: u32,
    /// `max_messages_per_sec`.
    pub(crate) rate: RateBucket,
    /// Tick by which the data message now arriving must be complete (`message_timeout_ms`
    /// after its first bytes); 0 while no data message is pending.
    pub(crate) msg_deadline: u32,
    /// Bytes of the front frame of the queue already written.
    pub(crate) out_off: u32,
    pub(crate) phase: Phase,
}

/// What a WebSocket connection does with its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /echo`: send every data message back.
    Echo,
    /// `GET /socket/websocket`: Phoenix Channels, in the wire format its `vsn` chose.
    Phoenix(Wire),
    /// `GET /dashboard/live` (only with `dashboard`): one JSON frame a second from the core's
    /// tick (`crate::http::dashboard`); what the client sends is read and ignored, but for
    /// pings and close.
    Dashboard,
}

impl Endpoint {
    /// The wire format of a Phoenix socket's session (an echo or dashboard socket has no
    /// session traffic: V2, unused).
    pub(crate) fn wire(self) -> Wire {
        match self {
            Endpoint::Phoenix(wire) => wire,
            Endpoint::Echo | Endpoint::Dashboard => Wire::V2,
        }
    }
}

pub(crate) enum Phase {
    /// Reading the request head, then (`body` set: the head was accepted) its body. Once the
    /// request is answered `buf` keeps only bytes already received past it (a pipelined next
    /// request) on a kept-alive connection, nothing otherwise: an idle kept-alive connection
    /// holds no buffer.
    /// `deferred`: a complete upgrade request with frames behind it waits in `buf` for the
    /// core's mesh hold to end (those frames could be broadcasts; see `on_http_request`).
    Http {
        buf: Vec<u8>,
        body: Option<Box<PendingBody>>,
        deferred: bool,
        /// Requests answered on this connection so far (keep-alive).
        served: u32,
        /// After the first: the tick the current request's first byte came in.
        started: u32,
        /// Complete requests wait in `buf`, held back while the answers before them were over
        /// the out-queue bounds: serve them before reading the socket again.
        pipelined: bool,
        /// A long-poll request is with its session (maybe on another core): the connection
        /// reads nothing until the answer is queued; `Some(keep)`: kept alive after it.
        awaiting: Option<bool>,
    },
    /// An open WebSocket.
    Open {
        endpoint: Endpoint,
        decoder: Decoder,
        session: Session,
    },
    /// Our last bytes (a close frame or an HTTP response) are queued: flush them, shut the write
    /// side, then read and discard until the peer closes or the close deadline passes.
    Closing { shut: bool },
}

/// The outcome of Phoenix's connect checks (`Conn::connect_checks`).
pub(crate) enum Connected {
    /// Upgrade (or open the long-poll session) with this.
    Admitted {
        wire: Wire,
        protocol: Option<&'static str>,
        who: Option<Box<crate::pubsub::pending::Identity>>,
        id: Option<Box<str>>,
    },
    /// Refused: answer this status and reason.
    Refused(u16, String),
    /// The connect hook has been asked: the request waits whole for its answer.
    Wait,
}

/// What reading and parsing asked the loop to do next.
pub(crate) enum Step {
    Continue,
    Finished,
}

/// A request whose head was accepted and whose body is being read into the phase's `buf`
/// (`req.head_len` bytes of head, then the body). Holds its bytes of the core's body budget
/// until it is dropped: when answered, or with the connection, whichever way it ends.
pub(crate) struct PendingBody {
    pub(crate) req: Request,
    pub(crate) api: Api,
    pub(crate) format: Format,
    pub(crate) reservation: BodyReservation,
}

impl PendingBody {
    /// Bytes of head and body: `buf` is complete at this length.
    pub(crate) fn end(&self) -> usize {
        self.req.head_len + self.reservation.bytes()
    }
}

/// Token bucket of one socket for `max_messages_per_sec`: it holds one second's worth and
/// refills on the core's 100 ms ticks. Counted in tenths of a frame, so a tick refills exactly
/// `rate` tenths whatever the rate (no rounding away of 1.5 frames a tick at 15/s).
///
/// While the core does not read the socket because its mesh holds publishers back, the client's
/// messages wait in the kernel and are then read at once: measured at the read, a client that
/// sends at the rate would look like a burst of everything it sent during the hold, and one held
/// longer than a second would be closed for it. So the time held is earned past the cap (only
/// that time: the socket's bucket is brought up to date, capped, when it is parked), and the cap
/// applies again once the socket has been read dry: a client still gets no more than the rate
/// over the hold plus the one-second burst.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateBucket {
    /// Tenths of a frame left.
    left: u32,
    /// Tick of the last refill.
    tick: u32,
}

impl RateBucket {
    /// A full bucket for `rate` frames a second (`rate` is at most 1,000,000: see config).
    pub(crate) fn full(rate: u32) -> RateBucket {
        RateBucket {
            left: rate.saturating_mul(10),
            tick: 0,
        }
    }

    /// Add what the ticks since the last refill earned, up to one second's worth; past it while
    /// `held` (the socket is being held or has not been read dry since: see above).
    pub(crate) fn refill(&mut self, rate: u32, now: u32, held: bool) {
        let ticks = now.wrapping_sub(self.tick);
        let earned = u64::from(ticks) * u64::from(rate);
        let cap = if held {
            u64::from(u32::MAX)
        } else {
            u64::from(rate) * 10
        };
        self.left = (u64::from(self.left) + earned).min(cap) as u32;
        self.tick = now;
    }

    /// Spend one frame; false when the bucket is empty.
    pub(crate) fn take(&mut self) -> bool {
        let ok = self.left >= 10;
        if ok {
            self.left -= 10;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a bucket lets through over `ticks` ticks, offered `per_tick` every tick.
    fn passed(rate: u32, per_tick: u32, ticks: u32) -> u32 {
        let mut b = RateBucket::full(rate);
        let mut n = 0;
        for t in 1..=ticks {
            b.refill(rate, t, false);
            n += (0..per_tick).filter(|_| b.take()).count() as u32;
        }
        n
    }

    #[test]
    fn time_held_is_earned_past_the_cap_until_read_dry() {
        let mut b = RateBucket::full(10);
        b.refill(10, 0, false);
        assert!((0..4).all(|_| b.take()), "6 frames left");
        // Parked at tick 5 (brought up to date, capped: 10), held until tick 35: 30 more.
        b.refill(10, 5, false);
        b.refill(10, 35, true);
        assert_eq!((0..100).filter(|_| b.take()).count(), 40);
        // Held again, 2 s, 5 frames used; read dry, the rest beyond the cap is gone.
        b.refill(10, 55, true);
        assert!((0..5).all(|_| b.take()));
        b.refill(10, 55, false);
        assert_eq!((0..100).filter(|_| b.take()).count(), 10);
    }

    #[test]
    fn rate_bucket_is_exact_at_any_rate() {
        // A burst of one second's worth, then `rate` a second.
        let mut b = RateBucket::full(200);
        b.refill(200, 0, false);
        assert_eq!((0..1000).filter(|_| b.take()).count(), 200);
        // Offered far more than the rate for 10 s: the full bucket spent on the first tick,
        // then what the other 99 ticks refilled.
        for rate in [1, 5, 10, 15, 19, 200, 1_000_000] {
            let got = passed(rate, rate + 10, 100);
            assert_eq!(got, rate + rate * 99 / 10, "rate {rate}");
        }
        // Offered 1.5 frames a tick (15/s) at a rate of 15: never refused.
        let mut b = RateBucket::full(15);
        for t in 1..=200u32 {
            b.refill(15, t, false);
            let n = if t % 2 == 0 { 2 } else { 1 };
            assert!((0..n).all(|_| b.take()), "tick {t}");
        }
    }
}
