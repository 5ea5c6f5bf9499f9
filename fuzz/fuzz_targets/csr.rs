//! The coordinator's CSR checks: PEM, PKCS#10, signature, key type, CA request, SANs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let allowed = muster_protocol::csr::host_sans("host-1", &["10.0.0.5".to_string()]);
        let _ = muster_protocol::csr::check_csr(s, &allowed);
    }
});
