//! `wgnet-apiserver`: runs the stand-in Kubernetes API server until interrupted and writes a
//! kubeconfig for it.
//!
//! Usage: `wgnet-apiserver [--addr 127.0.0.1:0] [--kubeconfig PATH]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use wgnet_tests::apiserver::{ApiServer, Config};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut config = Config::default();
    let mut kubeconfig = PathBuf::from("kubeconfig");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(v)) => match v.parse::<SocketAddr>() {
                Ok(a) => config.addr = a,
                Err(e) => {
                    eprintln!("wgnet-apiserver: --addr {v:?} is not an address: {e}");
                    return ExitCode::from(2);
                }
            },
            ("--kubeconfig", Some(v)) => kubeconfig = PathBuf::from(v),
            _ => {
                eprintln!("usage: wgnet-apiserver [--addr HOST:PORT] [--kubeconfig PATH]");
                return ExitCode::from(2);
            }
        }
    }
    let server = match ApiServer::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wgnet-apiserver: failed to listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.write_kubeconfig(&kubeconfig) {
        eprintln!(
            "wgnet-apiserver: failed to write {}: {e}",
            kubeconfig.display()
        );
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wgnet-apiserver: serving {} (kubeconfig {})",
        server.url(),
        kubeconfig.display()
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("wgnet-apiserver: failed to wait for a signal: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
