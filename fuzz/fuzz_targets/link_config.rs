//! The link's config parser: `config.json`, a NUL, then the Secret's bytes (a private key
//! or a wg-quick file). Never panics; errors never repeat the Secret's bytes (beyond what
//! `config.json`, which is not secret, holds, and what the error without the Secret says).
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
        // Text the error also has without the Secret cannot come from the Secret.
        let without = Raw {
            config: Some(config.to_vec()),
            secret: None,
        };
        let mut public = config.to_vec();
        if let Err(e) = parse(&without) {
            public.extend_from_slice(e.to_string().as_bytes());
        }
        assert!(
            !wgnet_link::keys::echoes_secret_beyond(
                &e.to_string(),
                secret.as_deref().unwrap_or_default(),
                &public
            ),
            "an error message repeats the secret input"
        );
    }
});
