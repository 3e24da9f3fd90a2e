//! The connect policy: what a Phoenix socket must bring to be upgraded, decided from the
//! upgrade request alone (pure: no I/O, the clock passed in). The embedder's
//! [`crate::app::handler::Handler::connect`] has the last word afterwards.
//!
//! In order: the serializer version (`vsn`: 1.0.x for V1, Phoenix's default when absent, or
//! 2.0.x for V2; anything else is refused), the
//! `Origin` (`check_origin`), the subprotocols (phoenix.js offers `phoenix` next to its
//! `base64url.bearer.phx.<token>` and needs `phoenix` echoed: a bearer offer without it is
//! refused, since a browser fails a 101 that answers an offer with none), then the token (a
//! `token` query parameter or the bearer subprotocol), a JWT verified when a token key is set
//! (see [`crate::app::auth`]) and required with `require_token`.

use crate::app::auth::{Claims, Verifier};
use crate::config::Config;
use crate::proto::handshake::{self, Request};
use crate::proto::phoenix::Vsn;

/// The socket may be upgraded.
#[derive(Debug)]
pub struct Admitted {
    /// The serializer the socket speaks.
    pub vsn: Vsn,
    /// The verified token's claims, if it brought one.
    pub claims: Option<Claims>,
    /// The subprotocol to answer with (`phoenix` when offered).
    pub protocol: Option<&'static str>,
}

/// The upgrade is refused: answer `status` with `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
    /// For the log only (never the answer): why a token was refused, "" otherwise.
    pub detail: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refused {
    Refused {
        status,
        reason,
        detail: "",
    }
}

/// Decide on a Phoenix upgrade request at unix time `now`; tokens are verified with `verifier`
/// (none: no key is configured, and a token is ignored).
pub fn admit(
    cfg: &Config,
    verifier: Option<&Verifier>,
    req: &Request,
    now: u64,
) -> Result<Admitted, Refused> {
    let vsn = handshake::query_param(&req.query, "vsn");
    // A `vsn` that is there but does not decode is not "no vsn" (which means V1).
    let given = req
        .query
        .split('&')
        .any(|kv| kv.split('=').next() == Some("vsn"));
    if given && vsn.is_none() {
        return Err(refuse(403, "unsupported vsn: use vsn=2.0.0 or 1.0.0"));
    }
    let Some(vsn) = Vsn::negotiate(vsn.as_deref()) else {
        return Err(refuse(403, "unsupported vsn: use vsn=2.0.0 or 1.0.0"));
    };
    if !cfg.origin_allowed(req.origin.as_deref()) {
        return Err(refuse(403, "origin not allowed"));
    }
    let offers_phoenix = req.protocols.iter().any(|p| p == "phoenix");
    let offers_bearer = req
        .protocols
        .iter()
        .any(|p| p.starts_with(handshake::PHX_BEARER_PREFIX));
    if offers_bearer && !offers_phoenix {
        return Err(refuse(
            400,
            "the base64url.bearer.phx. token subprotocol must be offered together with \"phoenix\"",
        ));
    }
    // phoenix.js's long-poll transport sends its `authToken` as `X-Phoenix-AuthToken`.
    let token = handshake::query_param(&req.query, "token")
        .or_else(|| handshake::bearer_token_from_protocols(&req.protocols))
        .or_else(|| req.phx_auth_token.clone());
    let claims = match (verifier, token) {
        (Some(v), Some(token)) => {
            // The token itself is never logged, nor put in the answer: only why it was refused.
            let c = v.verify(&token, now).map_err(|e| Refused {
                detail: e.as_str(),
                ..refuse(403, "invalid token")
            })?;
            Some(c)
        }
        _ => None,
    };
    if cfg.require_token && claims.is_none() {
        return Err(refuse(403, "token required"));
    }
    Ok(Admitted {
        vsn,
        claims,
        protocol: offers_phoenix.then_some("phoenix"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(query: &str, protocols: &[&str], origin: Option<&str>) -> Request {
        let mut head = format!("GET /socket/websocket?{query} HTTP/1.1\r\nHost: x\r\n");
        if !protocols.is_empty() {
            head += &format!("Sec-WebSocket-Protocol: {}\r\n", protocols.join(", "));
        }
        if let Some(o) = origin {
            head += &format!("Origin: {o}\r\n");
        }
        head += "\r\n";
        handshake::parse_request(head.as_bytes(), 8192)
            .expect("parses")
            .expect("complete")
    }

    #[test]
    fn each_rule_refuses_with_its_status() {
        let cfg = Config {
            check_origin: vec!["https://app.example.com".into()],
            auth_secret: Some("k".into()),
            require_token: true,
            ..Config::default()
        };
        let v = Verifier::hs256(b"k", 3600);
        let now = 1_700_000_000;
        let good = crate::app::auth::mint(b"k", "alice", now + 60);
        let bearer = format!("{}{}", handshake::PHX_BEARER_PREFIX, "x");
        let cases = [
            (
                req("vsn=3.0.0", &[], None),
                403,
                "unsupported vsn: use vsn=2.0.0 or 1.0.0",
            ),
            (
                req("vsn=%ff", &[], None),
                403,
                "unsupported vsn: use vsn=2.0.0 or 1.0.0",
            ),
            (
                req("vsn=2.0.0", &[], Some("https://evil.example")),
                403,
                "origin not allowed",
            ),
            (
                req("vsn=2.0.0", &[&bearer], None),
                400,
                "the base64url.bearer.phx. token subprotocol must be offered together with \"phoenix\"",
            ),
            (req("vsn=2.0.0&token=nope", &[], None), 403, "invalid token"),
            (req("vsn=2.0.0", &[], None), 403, "token required"),
        ];
        for (r, status, reason) in cases {
            let e = admit(&cfg, Some(&v), &r, now).unwrap_err();
            assert_eq!((e.status, e.reason), (status, reason), "{r:?}");
        }
        let expired = crate::app::auth::mint(b"k", "alice", now - 3600);
        let e = admit(
            &cfg,
            Some(&v),
            &req(&format!("vsn=2.0.0&token={expired}"), &[], None),
            now,
        );
        assert_eq!(e.unwrap_err().detail, "token expired");
        let ok = admit(
            &cfg,
            Some(&v),
            &req(&format!("vsn=2.0.0&token={good}"), &["phoenix"], None),
            now,
        )
        .expect("admitted");
        assert_eq!(ok.protocol, Some("phoenix"));
        assert_eq!(ok.vsn, Vsn::V2);
        assert_eq!(ok.claims.map(|c| c.sub), Some("alice".to_string()));
    }

    #[test]
    fn vsn_chooses_the_serializer_as_phoenix_does() {
        // `params["vsn"] || "1.0.0"`, then `~> 1.0.0` or `~> 2.0.0`.
        let cfg = Config::default();
        let vsn = |q: &str| admit(&cfg, None, &req(q, &[], None), 0).map(|a| a.vsn);
        for (q, want) in [
            ("", Vsn::V1),
            ("token=x", Vsn::V1),
            ("vsn=1.0.0", Vsn::V1),
            ("vsn=1.0.7", Vsn::V1),
            ("vsn=2.0.0", Vsn::V2),
            ("vsn=2.0.12", Vsn::V2),
        ] {
            assert_eq!(vsn(q), Ok(want), "{q}");
        }
        let refused = Err(refuse(403, "unsupported vsn: use vsn=2.0.0 or 1.0.0"));
        for q in [
            "vsn=",
            "vsn=1",
            "vsn=1.0",
            "vsn=1.1.0",
            "vsn=2.1.0",
            "vsn=3.0.0",
            "vsn=2.0.0-rc",
            "vsn=1.0.x",
            "vsn=v2.0.0",
        ] {
            assert_eq!(vsn(q), refused, "{q}");
        }
    }
}
