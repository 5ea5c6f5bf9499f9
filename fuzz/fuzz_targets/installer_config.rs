//! The installer's YAML config file (`muster install --config`, /etc/muster/enroll.yaml).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = muster_protocol::enroll::parse_file_config(s);
    }
});
