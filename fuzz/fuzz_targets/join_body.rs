//! A join request body as `musterd` reads it: JSON, then the token and both CSRs in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_protocol::node::JoinRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<JoinRequest>(data) {
        let _ = muster_protocol::token::inspect(req.token.expose());
        let allowed = muster_protocol::csr::host_sans(&req.host.hostname, &req.host.addresses);
        let _ = muster_protocol::csr::check_csr(&req.transport_csr, &allowed);
        let _ = muster_protocol::csr::check_csr(&req.http_csr, &allowed);
    }
});
