//! The embedder's hook into channel behaviour. Every method has the default behaviour of
//! DESIGN.md, so `DefaultHandler` (no code) gives: any allowed topic may be joined, and a push on
//! a joined topic is answered `ok` and broadcast to every subscriber, sender included.
//!
//! Handlers run on the cores' executors: they must not block. A panic inside a handler is caught
//! and costs only that channel (`phx_error`, like a crashed Phoenix channel process).

use std::borrow::Cow;

use crate::app::auth::Claims;
use crate::proto::phoenix::Payload;

/// What a socket presented when it connected.
#[derive(Debug)]
pub struct ConnectInfo<'a> {
    /// The verified token's claims, if a token was given and `auth_secret` is set.
    pub claims: Option<&'a Claims>,
    /// The raw query string of the upgrade request (Phoenix connect params).
    pub query: &'a str,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
}

/// The socket a channel event comes from.
#[derive(Debug, Clone, Copy)]
pub struct Socket<'a> {
    /// The token's subject (`sub`), when the socket connected with a valid token.
    pub user: Option<&'a str>,
    /// The core serving the socket.
    pub core: usize,
}

/// What to answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InReply {
    /// Reply `ok` with `{}` and broadcast the event and payload to the topic (the default).
    OkAndBroadcast,
    /// Reply with `ok` (true) or `error` (false) and this JSON response; broadcast nothing.
    Reply {
        ok: bool,
        response: Cow<'static, str>,
    },
    /// Send nothing back.
    NoReply,
}

/// Why a channel ended, for [`Handler::terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminate {
    /// The client sent `phx_leave`.
    Left,
    /// The client joined the same topic again; the old join ends.
    DuplicateJoin,
    /// The socket closed.
    Closed,
    /// The handler panicked.
    Crashed,
}

/// Channel behaviour. Implement only what you need; the rest is the default.
pub trait Handler: Send + Sync + 'static {
    /// May this socket connect? Returning false answers the upgrade with 403.
    fn connect(&self, _info: &ConnectInfo<'_>) -> bool {
        true
    }

    /// May the socket join `topic` (already checked against the `topics` patterns)?
    /// `Ok(json)` is the join reply's response, `Err(json)` refuses the join with that response.
    fn join(
        &self,
        _socket: Socket<'_>,
        _topic: &str,
        _payload: Payload<'_>,
    ) -> Result<Cow<'static, str>, Cow<'static, str>> {
        Ok(Cow::Borrowed("{}"))
    }

    /// A push on a joined topic.
    fn handle_in(
        &self,
        _socket: Socket<'_>,
        _topic: &str,
        _event: &str,
        _payload: Payload<'_>,
    ) -> InReply {
        InReply::OkAndBroadcast
    }

    /// A channel ended.
    fn terminate(&self, _socket: Socket<'_>, _topic: &str, _why: Terminate) {}
}

/// The default behaviour, with no code.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultHandler;

impl Handler for DefaultHandler {}
