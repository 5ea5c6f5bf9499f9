//! Sealing lives in the wire crate ([`muster_protocol::seal`]) so that a recovering installer
//! unwraps the data key with the same code; what is here is the server's side of it.

use anyhow::Context;
pub use muster_protocol::seal::{
    unwrap_data_key, DataKey, SEALED_CONTEXT, UNSEAL_KEY_FILE, WRAP_CONTEXT,
};
use zeroize::Zeroizing;

/// Reads the emergency token from `MUSTER_EMERGENCY_TOKEN` or a file: never from argv.
pub fn emergency_token(file: Option<&std::path::Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the emergency token from {}", f.display()))?;
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    match std::env::var("MUSTER_EMERGENCY_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_string())),
        _ => anyhow::bail!(
            "the emergency token is needed: set MUSTER_EMERGENCY_TOKEN or pass --emergency-token-file"
        ),
    }
}
