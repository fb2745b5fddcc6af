//! Parsing arbitrary text as a processor message must never panic, and
//! every rejection carries one of the documented codes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhub_fuzz::processors::protocol::parse;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(error) = parse(&text) {
        assert!(
            matches!(error.code, "invalid_json" | "invalid_message" | "unknown_command"),
            "undocumented code {}",
            error.code
        );
        assert!(!error.message.is_empty());
    }
});
