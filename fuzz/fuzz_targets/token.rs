//! The roles-token parser and verifier: anything that reaches `musterd` or `muster` as a
//! token. Must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Some Ed25519 public key: the seeds come from a real coordinator with another key, so the
/// signature check refuses them, after the header and claims have been read.
const VERIFY_KEY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = muster_protocol::token::inspect(s);
        if let Ok(c) = muster_protocol::token::verify(s, &VERIFY_KEY, 1_800_000_000) {
            let _ = muster_protocol::token::grant_roles(&c, &[]);
        }
    }
});
