//! The web console's sessions: a sign-in with the admin password or an API key becomes a
//! random session id in an `HttpOnly; Secure; SameSite=Strict` cookie, and a CSRF token the
//! page sends back in `X-CSRF-Token` with every change.
//!
//! A session keeps the credentials it was opened with, in memory only, and every request made
//! with it is checked with them again ([`super::auth::Auth::check`]): a key revoked or a
//! password changed ends the sessions opened with them at their next request. Sessions live on
//! the coordinator that opened them (behind a load balancer, keep a console on one
//! coordinator); a restart signs everyone out.

use super::auth::constant_eq;
use crate::platform::sha256_hex;
use std::collections::HashMap;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The session cookie's name.
pub const COOKIE: &str = "muster_console";

/// How long a session lasts from its sign-in, seconds.
pub const LIFETIME_SECS: u64 = 8 * 3600;

/// Sessions open at once, at most; past it the oldest is closed.
pub const MAX_SESSIONS: usize = 10_000;

/// One open session.
pub struct Session {
    /// The `Authorization` header value the session signs requests with.
    pub authorization: Zeroizing<String>,
    pub csrf: String,
    pub expires: u64,
}

/// The open sessions, by the SHA-256 of their id (the id itself is only in the cookie).
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn random() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    /// Opens a session signing requests with `authorization`: its id (for the cookie) and its
    /// CSRF token.
    pub fn open(&self, authorization: &str, now: u64) -> (Zeroizing<String>, String) {
        let (id, csrf) = (Zeroizing::new(random()), random());
        let session = Session {
            authorization: Zeroizing::new(authorization.to_string()),
            csrf: csrf.clone(),
            expires: now + LIFETIME_SECS,
        };
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, s| s.expires > now);
            if open.len() >= MAX_SESSIONS {
                let oldest = open
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    open.remove(&k);
                }
            }
            open.insert(sha256_hex(id.as_bytes()), session);
        }
        (id, csrf)
    }

    /// The session of cookie value `id`, if open: its `Authorization` value, CSRF token and
    /// expiry.
    pub fn get(&self, id: &str, now: u64) -> Option<(Zeroizing<String>, String, u64)> {
        let open = self.open.lock().ok()?;
        let s = open.get(&sha256_hex(id.as_bytes()))?;
        (s.expires > now).then(|| (s.authorization.clone(), s.csrf.clone(), s.expires))
    }

    /// Closes the session of cookie value `id`.
    pub fn close(&self, id: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&sha256_hex(id.as_bytes()));
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the CSRF token a request sent is its session's.
pub fn csrf_ok(sent: Option<&str>, session: &str) -> bool {
    sent.is_some_and(|s| constant_eq(s, session))
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_expire_and_close() {
        let s = Sessions::default();
        let (id, csrf) = s.open("Basic x", 100);
        let got = s.get(&id, 101);
        assert_eq!(
            got.as_ref().map(|g| (g.0.as_str(), g.1.as_str())),
            Some(("Basic x", csrf.as_str()))
        );
        assert!(s.get(&id, 100 + LIFETIME_SECS).is_none(), "expired");
        assert!(s.get("not-an-id", 101).is_none());
        s.close(&id);
        assert!(s.get(&id, 101).is_none(), "closed");
    }

    #[test]
    fn cookies_and_csrf_tokens_are_read_exactly() {
        let h = "a=1; muster_console=abc; b=2";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie("muster_console_x=1", COOKIE), None);
        assert!(csrf_ok(Some("t"), "t"));
        assert!(!csrf_ok(Some("u"), "t") && !csrf_ok(None, "t"));
    }
}
