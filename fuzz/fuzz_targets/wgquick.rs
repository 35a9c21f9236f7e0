//! The wg-quick parser (an EgressGateway's Secret): never panics, and its errors never
//! repeat the file's text (issue 19, item 1).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = wgnet_link::wgquick::parse(data) {
        assert!(
            !wgnet_link::keys::echoes_secret(&e.to_string(), data),
            "an error message repeats the secret input"
        );
    }
});
