//! Writes one YAML file per CRD into each given directory (default `crds/`; `make generate`
//! also passes the Helm chart's `crds/`), or checks that they are current with `--check`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                eprintln!("usage: crdgen [--check] [DIR...]  (DIR defaults to crds/)");
                return ExitCode::SUCCESS;
            }
            other if other.starts_with('-') => {
                eprintln!("crdgen: unknown option {other}; see --help");
                return ExitCode::from(2);
            }
            other => dirs.push(PathBuf::from(other)),
        }
    }
    if dirs.is_empty() {
        dirs.push(PathBuf::from("crds"));
    }
    let mut stale = false;
    for (file, crd) in wgnet_operator::crd::all() {
        let yaml = match wgnet_operator::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: failed to render {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &dirs {
            let path = dir.join(file);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    eprintln!("crdgen: {} is stale; run `make generate`", path.display());
                    stale = true;
                }
            } else if let Err(err) =
                std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &yaml))
            {
                eprintln!("crdgen: failed to write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if stale {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
