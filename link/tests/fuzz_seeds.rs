//! The fuzz corpus seeds (`fuzz/corpus/`, grown by `make fuzz`) replayed on stable Rust in
//! every `make test`: the wg-quick and link-config parsers never panic on them and never
//! repeat the secret input in an error; the offload code keeps its properties on them.

use std::path::PathBuf;

use wgnet_link::config::{Raw, parse};
use wgnet_link::keys::{echoes_secret, echoes_secret_beyond};

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let b = std::fs::read(&p).expect("seed");
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn wg_quick_seeds_parse_or_refuse_without_echo() {
    let mut refused = 0;
    for (p, b) in seeds("wgquick") {
        if let Err(e) = wgnet_link::wgquick::parse(&b) {
            refused += 1;
            assert!(
                !echoes_secret(&e.to_string(), &b),
                "{}: the error repeats the file",
                p.display()
            );
        }
    }
    // The hand-written seeds include typos next to a key: the check has something to see.
    assert!(refused > 0);
}

#[test]
fn link_config_seeds_parse_or_refuse_without_echo() {
    let (mut ok, mut refused) = (0, 0);
    for (p, b) in seeds("link_config") {
        let (config, secret) = match b.iter().position(|x| *x == 0) {
            Some(i) => (b[..i].to_vec(), Some(b[i + 1..].to_vec())),
            None => (b.clone(), None),
        };
        let raw = Raw {
            config: Some(config.clone()),
            secret: secret.clone(),
        };
        match parse(&raw) {
            Ok(_) => ok += 1,
            Err(e) => {
                refused += 1;
                // Text the error also has without the Secret cannot come from it (serde's
                // list of expected fields, say, which a fuzzer may copy into the Secret).
                let mut public = config.clone();
                let without = Raw {
                    config: Some(config.clone()),
                    secret: None,
                };
                if let Err(e) = parse(&without) {
                    public.extend_from_slice(e.to_string().as_bytes());
                }
                assert!(
                    !echoes_secret_beyond(
                        &e.to_string(),
                        secret.as_deref().unwrap_or_default(),
                        &public
                    ),
                    "{}: the error repeats the Secret",
                    p.display()
                );
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} parsed, {refused} refused");
}

#[test]
fn offload_seeds_keep_the_split_and_merge_properties() {
    for (p, b) in seeds("offload") {
        if let Err(broken) = wgnet_link::offload::exercise(&b) {
            panic!("{}: {broken}", p.display());
        }
    }
}
