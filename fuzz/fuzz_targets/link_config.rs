//! The link's config parser: `config.json`, a NUL, then the Secret's bytes (a private key
//! or a wg-quick file). Never panics; errors never repeat the Secret's bytes (beyond what
//! `config.json`, which is not secret, also holds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgnet_link::config::{Raw, parse};

fuzz_target!(|data: &[u8]| {
    let (config, secret) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(data[i + 1..].to_vec())),
        None => (data, None),
    };
    let raw = Raw {
        config: Some(config.to_vec()),
        secret: secret.clone(),
    };
    if let Err(e) = parse(&raw) {
        assert!(
            !wgnet_link::keys::echoes_secret_beyond(
                &e.to_string(),
                secret.as_deref().unwrap_or_default(),
                config
            ),
            "an error message repeats the secret input"
        );
    }
});
