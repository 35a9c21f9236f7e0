//! `wgnet-link`: see `wgnet_link::run::USAGE`.

use std::process::ExitCode;

use wgnet_link::run;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The privileged init container's only job: the image has no shell to echo with.
    if args.first().map(String::as_str) == Some("enable-forwarding") {
        return match wgnet_link::engine::ensure_forwarding() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wgnet-link: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match run::parse_args(&args) {
        Ok(o) => o,
        Err(run::ArgsError::Help) => {
            eprint!("{}", run::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wgnet-link: {e}\n\n{}", run::USAGE);
            return ExitCode::from(2);
        }
    };
    if opts.plan_only {
        return match run::plan_text(&opts) {
            Ok(t) => {
                #[allow(clippy::print_stdout)]
                {
                    print!("{t}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wgnet-link: {e}");
                ExitCode::from(1)
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if opts.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colour only for a person at a terminal: in a pod or a file, escape codes would
        // end up in `kubectl logs` and log collectors.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wgnet-link: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wgnet-link: {e}");
            ExitCode::from(1)
        }
    }
}
