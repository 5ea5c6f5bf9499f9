//! Exit codes: a documented contract (see `docs/installer.md`). cloud-init, package scripts and
//! people branch on them, so a code is never renumbered.

use std::fmt;

/// How `muster` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Enrolled, or already enrolled (nothing changed), or the command did what it said.
    Ok = 0,
    /// Anything not covered below (a bug, an unexpected answer).
    Other = 1,
    /// The command line or config file is wrong. Fix it and run again.
    Usage = 2,
    /// The coordinator (or the local check) refused the token: malformed, forged, expired,
    /// revoked, used up. Retrying the same token never succeeds: get a new one.
    TokenRefused = 3,
    /// A requested role is not granted by the token. Ask for fewer roles or use another token.
    RoleNotAllowed = 4,
    /// No coordinator answered within `--timeout` (or it kept answering "busy"). Worth retrying.
    Unreachable = 5,
    /// The coordinator's certificate does not chain to a CA the token pins, or is not a
    /// coordinator's. Someone may be in the middle: do not retry blindly.
    PinMismatch = 6,
    /// Writing a file on this host failed (full disk, a symlink in the way, permissions).
    LocalWrite = 7,
    /// A hook failed: pre-enroll (nothing was written), or post-enroll or post-renew (the
    /// enrollment or renewal itself is done; the hook is not run again by itself).
    HookFailed = 8,
    /// The host is not enrolled (for `status`, `renew`, `agent`, `leave`).
    NotEnrolled = 9,
    /// (`muster admin`) The coordinator refused the request: wrong credentials, no such token
    /// or host, a request it does not take. The message names its error code.
    Refused = 10,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stable name used in `--output json`.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Other => "error",
            Exit::Usage => "usage",
            Exit::TokenRefused => "token_refused",
            Exit::RoleNotAllowed => "role_not_allowed",
            Exit::Unreachable => "unreachable",
            Exit::PinMismatch => "pin_mismatch",
            Exit::LocalWrite => "local_write_failed",
            Exit::HookFailed => "hook_failed",
            Exit::NotEnrolled => "not_enrolled",
            Exit::Refused => "refused",
        }
    }
}

/// A failure with the exit code it maps to and a message that says what to do next.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The coordinator's error code, when it refused.
    pub code: Option<String>,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
            code: None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Maps a local file error to a failure.
impl From<muster_protocol::fs::WriteError> for Failure {
    fn from(e: muster_protocol::fs::WriteError) -> Self {
        Failure::new(Exit::LocalWrite, e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
