//! A connection that waits for a backend hook (`crate::pubsub::pending`): it is not read
//! meanwhile, and the hook's answer (`signal::HOOK`) resumes it where it waited: the HTTP
//! upgrade (connect hook) or the Phoenix session (join, push hooks).

use crate::pubsub::session::Ctx;
use crate::transport::state::{Conn, Phase};

impl Conn {
    /// The hook this connection waited for has answered: carry the answer out.
    pub(crate) fn on_hook_answer(&mut self) {
        match &mut self.phase {
            // The upgrade request waited whole in the buffer: routing it again finds the answer.
            Phase::Http { .. } => {
                self.on_http_bytes();
            }
            Phase::Open {
                endpoint, session, ..
            } => {
                let ctx = Ctx {
                    hub: &self.hub,
                    key: self.key,
                    generation: self.generation,
                    wire: endpoint.wire(),
                };
                if let Err((code, reason)) = session.resume(ctx) {
                    self.start_close(code, reason);
                }
            }
            Phase::Closing { .. } => {}
        }
    }

    /// Does this connection wait for a hook? (Then it is not read.)
    pub(crate) fn waits_for_hook(&self) -> bool {
        self.hub
            .hooks()
            .is_some_and(|h| h.is_pending(self.key, self.generation))
    }

    /// The connection ends: whatever it waited for is forgotten.
    pub(crate) fn forget_hook(&self) {
        if let Some(h) = self.hub.hooks() {
            h.forget(self.key, self.generation);
        }
    }
}
