//! `wgnet-gcp-emulator`: runs the GCP emulator until interrupted, optionally writing a
//! service-account key file whose `token_uri` points at it.
//!
//! Usage: `wgnet-gcp-emulator [--addr 127.0.0.1:0] [--project ID]... [--profile NAME]
//! [--scale F] [--key-file PATH --key-email EMAIL]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use wgnet_tests::gcp::{Config, GcpEmulator, LatencyProfile};

const USAGE: &str = "usage: wgnet-gcp-emulator [--addr HOST:PORT] [--project ID]... [--profile instant|polls|gcp-typical] [--scale F] [--key-file PATH] [--key-email EMAIL]";

fn fail(msg: &str) -> ExitCode {
    eprintln!("wgnet-gcp-emulator: {msg}");
    ExitCode::from(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut config = Config::default();
    let mut projects = Vec::new();
    let mut scale = 1.0;
    let mut key_file: Option<PathBuf> = None;
    let mut key_email = "wgnet-operator@wgnet-test.iam.gserviceaccount.com".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(v) = args.next() else {
            return fail(USAGE);
        };
        match arg.as_str() {
            "--addr" => match v.parse::<SocketAddr>() {
                Ok(a) => config.addr = a,
                Err(e) => return fail(&format!("--addr {v:?} is not an address: {e}")),
            },
            "--project" => projects.push(v),
            "--profile" => match LatencyProfile::named(&v) {
                Some(p) => config.profile = p,
                None => {
                    return fail(&format!(
                        "unknown profile {v:?}; use instant, polls or gcp-typical"
                    ));
                }
            },
            "--scale" => match v.parse::<f64>() {
                Ok(s) if s >= 0.0 => scale = s,
                _ => return fail(&format!("--scale {v:?} is not a non-negative number")),
            },
            "--key-file" => key_file = Some(PathBuf::from(v)),
            "--key-email" => key_email = v,
            _ => return fail(USAGE),
        }
    }
    if !projects.is_empty() {
        config.projects = projects;
    }
    config.profile = config.profile.scaled_by(scale);
    let emulator = match GcpEmulator::start(config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wgnet-gcp-emulator: failed to start: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &key_file
        && let Err(e) = emulator.write_key_file(&key_email, path)
    {
        eprintln!("wgnet-gcp-emulator: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wgnet-gcp-emulator: serving {} (compute {}, iam and secretmanager {}, token {})",
        emulator.url(),
        emulator.compute_url(),
        emulator.iam_url(),
        emulator.token_url()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("wgnet-gcp-emulator: failed to wait for a signal: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
