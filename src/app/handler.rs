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
    /// The verified token's claims, if a token was given and a token key is set.
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
    /// Where presence changes asked for during this call go (on a presence topic, in `join` and
    /// `handle_in`; elsewhere `None` and the calls below do nothing).
    pub presence: Option<&'a std::cell::RefCell<Vec<PresenceChange>>>,
}

/// A presence change a handler asks for on the channel it is called for (Phoenix's
/// `Presence.track/untrack/update` with the channel's socket). The channel's presences end with
/// it (leave, close, crash) like everything else of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// Track the channel under `key` with `meta` (a JSON object; `phx_ref` is the server's).
    Track { key: String, meta: String },
    /// Stop tracking the channel under `key`.
    Untrack { key: String },
    /// Replace the channel's meta under `key` (a join of the new meta with `phx_ref_prev`, a
    /// leave of the old).
    Update { key: String, meta: String },
}

impl Socket<'_> {
    fn ask(&self, change: PresenceChange) -> bool {
        match self.presence {
            Some(p) => {
                p.borrow_mut().push(change);
                true
            }
            None => false,
        }
    }

    /// Track this channel in the topic's presence under `key` with `meta` (a JSON object, at
    /// most `max_presence_meta_bytes`). Called in `join`, it replaces the default tracking
    /// (the token's subject). False if the topic is not a presence topic.
    pub fn track(&self, key: &str, meta: &str) -> bool {
        self.ask(PresenceChange::Track {
            key: key.into(),
            meta: meta.into(),
        })
    }

    /// Stop tracking this channel under `key`.
    pub fn untrack(&self, key: &str) -> bool {
        self.ask(PresenceChange::Untrack { key: key.into() })
    }

    /// Replace this channel's meta under `key`.
    pub fn update(&self, key: &str, meta: &str) -> bool {
        self.ask(PresenceChange::Update {
            key: key.into(),
            meta: meta.into(),
        })
    }
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

    /// The socket's id (Phoenix's `id/1`): `POST /api/disconnect {"id": ...}` closes every socket
    /// with that id, on every core and every node ("log out everywhere"). Default: with a token,
    /// `users_socket:<subject>`; without one, none.
    fn socket_id(&self, info: &ConnectInfo<'_>) -> Option<String> {
        info.claims.map(|c| format!("users_socket:{}", c.sub))
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
