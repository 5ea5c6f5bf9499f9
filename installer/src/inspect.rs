//! `muster token inspect`: a roles token's claims, read locally (its signature is the
//! coordinator's to check).
//!
//! Depends on `cli`, `common` and `exit`.

use crate::cli::{Output, TokenArgs};
use crate::common::now;
use crate::exit::{Exit, Failure, Result};

pub fn inspect(t: &TokenArgs, output: Output) -> Result<serde_json::Value> {
    let tok = crate::cli::read_token(t, None, None)?;
    let c = muster_protocol::token::inspect(&tok)
        .map_err(|e| Failure::new(Exit::TokenRefused, e.to_string()))?;
    let status = match muster_protocol::token::check_time(&c, now()) {
        Ok(()) => "valid (signature is checked by the coordinator)".to_string(),
        Err(e) => e.to_string(),
    };
    let v = serde_json::json!({
        "token_id": c.sub, "kind": c.kind, "roles": c.roles, "issuer": c.iss, "issued_at": c.iat,
        "not_before": c.nbf, "expires": c.exp, "persistent": c.persistent, "coordinators": c.coordinators,
        "ca_pins": c.pins, "max_uses": c.max_uses, "status": status,
    });
    if output == Output::Text {
        eprintln!("token id:      {}", c.sub);
        eprintln!("kind:          {}", c.kind.as_str());
        eprintln!("roles:         [{}]", muster_protocol::role::join(&c.roles));
        eprintln!(
            "expires:       {}",
            c.exp
                .map(|e| format!("{e} (unix), in {}s", i128::from(e) - i128::from(now())))
                .unwrap_or_else(|| "never".into())
        );
        eprintln!("coordinators:  {}", c.coordinators.join(", "));
        eprintln!("CA pins:       {}", c.pins.join(", "));
        eprintln!("status:        {status}");
    }
    Ok(v)
}
