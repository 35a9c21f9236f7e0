//! The link's TUN offload code over arbitrary packets (`wgnet_link::offload::exercise`):
//! splitting a super-packet and merging decrypted packets never panic, segments are no
//! longer than their super-packet and carry their own length, and what is merged splits
//! back into exactly the payloads that went in.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = wgnet_link::offload::exercise(data) {
        panic!("{broken}");
    }
});
