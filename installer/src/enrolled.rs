//! Reading the enrolled state and checking the node certificate's validity: what `status`,
//! `renew`, `agent` and `leave` share.
//!
//! Depends on `host`, `common`, `layout`, `state` and `exit`; never on a command.

use crate::common::now;
use crate::exit::{Exit, Failure, Result};
use crate::host::read_state;
use crate::layout::File;
use crate::state::{Stage, State};
use std::path::Path;

pub(crate) fn enrolled(root: &Path) -> Result<State> {
    match read_state(root)? {
        Some(s) if s.stage == Stage::Committed => Ok(s),
        _ => Err(Failure::new(
            Exit::NotEnrolled,
            format!(
                "this host is not enrolled (no committed {}); run muster install",
                File::State.path(root).display()
            ),
        )),
    }
}

/// A certificate file's validity: not before, not after (seconds since the epoch).
pub(crate) fn cert_validity(path: &Path) -> Option<(i64, i64)> {
    pem_validity(&std::fs::read(path).ok()?)
}

/// notBefore and notAfter (unix seconds) of a PEM certificate.
pub(crate) fn pem_validity(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let c = p.parse_x509().ok()?;
    Some((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Refuses to go on with a node certificate that has run out: the coordinator would refuse it
/// in the handshake, which looks like a coordinator that does not answer, retried for ever.
/// (Five minutes of leeway for a clock a little ahead.)
pub(crate) fn check_not_expired(root: &Path) -> Result<()> {
    match cert_validity(&File::NodeCert.path(root)) {
        Some((_, not_after)) => refuse_if_ran_out(not_after, ""),
        None => Ok(()),
    }
}

/// [`check_not_expired`] for a certificate valid until `not_after`; `why` adds to the message.
pub(crate) fn refuse_if_ran_out(not_after: i64, why: &str) -> Result<()> {
    if now() as i64 <= not_after.saturating_add(300) {
        return Ok(());
    }
    let when = time::OffsetDateTime::from_unix_timestamp(not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| not_after.to_string());
    Err(Failure::new(
        Exit::NotEnrolled,
        format!("this host's certificate ran out at {when}{why} (it was not renewed in time: was the agent stopped?); enroll it again: muster install --force with a roles token"),
    ))
}
