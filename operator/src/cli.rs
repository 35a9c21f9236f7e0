//! The operator's command line and environment. Every flag has an environment variable
//! (`WGNET_` + the flag in upper snake case) so the Helm chart can set either. Pure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Usage text.
pub const USAGE: &str = "\
usage: wgnet-operator [options]

GCP:
  --gcp-credentials PATH    service-account JSON key (default: ambient credentials:
                            GOOGLE_APPLICATION_CREDENTIALS, workload identity, metadata server)
  --compute-endpoint URL    Compute v1 base URL (default https://compute.googleapis.com/compute/v1/)
  --iam-endpoint URL        IAM v1 base URL
  --secrets-endpoint URL    Secret Manager v1 base URL
  --allowed-projects LIST   comma-separated projects Gateways may use (default: any)
  --install NAME            install label on GCP resources (default wgnet)
  --network NAME            shared VPC network name (default wgnet)
Cluster:
  --cluster-id ID           this cluster's id in GCP names (default: the kube-system namespace uid)
  --link-image IMAGE        wgnet-link image for link pods (required)
  --link-pull-policy P      IfNotPresent (default), Always or Never
  --no-privileged-init      do not add the privileged ip_forward init container to link pods
  --resync SECONDS          full reconcile period, repairs drift (default 300)
Process:
  --metrics-addr ADDR       /metrics (default 0.0.0.0:8080)
  --health-addr ADDR        /healthz and /readyz (default 0.0.0.0:8081)
  --leader-elect            elect a leader among operator replicas on a Lease
  --lease-name NAME         that Lease (default wgnet-operator, in $POD_NAMESPACE)
  --log-format text|json    (default text)
";

/// Parsed options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Key file, or ambient credentials when `None`.
    pub gcp_credentials: Option<PathBuf>,
    /// Compute endpoint override.
    pub compute_endpoint: Option<String>,
    /// IAM endpoint override.
    pub iam_endpoint: Option<String>,
    /// Secret Manager endpoint override.
    pub secrets_endpoint: Option<String>,
    /// Allowed projects (empty: any).
    pub allowed_projects: Vec<String>,
    /// Install label.
    pub install: String,
    /// Network name.
    pub network: String,
    /// Cluster id, or discovered when `None`.
    pub cluster_id: Option<String>,
    /// Link image.
    pub link_image: String,
    /// Link pull policy.
    pub link_pull_policy: String,
    /// Add the privileged init container.
    pub privileged_init: bool,
    /// Resync period.
    pub resync: Duration,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// Health address.
    pub health_addr: SocketAddr,
    /// Leader election on.
    pub leader_elect: bool,
    /// Lease name.
    pub lease_name: String,
    /// JSON logs.
    pub json_logs: bool,
}

/// Parses `args` (without the program name), with `env` looked up for every flag not given.
/// `Err("")` means help was asked for.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
    let mut given: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--no-privileged-init" | "--leader-elect" => given.push((a.clone(), None)),
            f if f.starts_with("--") => {
                let (flag, value) = match f.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (
                        f.to_owned(),
                        it.next()
                            .cloned()
                            .ok_or_else(|| format!("{f} needs a value"))?,
                    ),
                };
                given.push((flag, Some(value)));
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let known = [
        "--gcp-credentials",
        "--compute-endpoint",
        "--iam-endpoint",
        "--secrets-endpoint",
        "--allowed-projects",
        "--install",
        "--network",
        "--cluster-id",
        "--link-image",
        "--link-pull-policy",
        "--no-privileged-init",
        "--resync",
        "--metrics-addr",
        "--health-addr",
        "--leader-elect",
        "--lease-name",
        "--log-format",
    ];
    if let Some((f, _)) = given.iter().find(|(f, _)| !known.contains(&f.as_str())) {
        return Err(format!("unknown flag {f}"));
    }
    let get = |flag: &str| -> Option<String> {
        given
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.clone().unwrap_or_else(|| "true".into()))
            .or_else(|| {
                env(&format!(
                    "WGNET_{}",
                    flag.trim_start_matches("--")
                        .replace('-', "_")
                        .to_uppercase()
                ))
            })
            .filter(|v| !v.is_empty())
    };
    let flag_on = |flag: &str| -> Result<bool, String> {
        match get(flag).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(format!(
                "{flag} is a switch; its environment variable must be true or false, not {v:?}"
            )),
        }
    };
    let addr = |flag: &str, default: &str| -> Result<SocketAddr, String> {
        let v = get(flag).unwrap_or_else(|| default.to_owned());
        v.parse()
            .map_err(|_| format!("{flag} needs an address like 0.0.0.0:8080, not {v:?}"))
    };
    let link_image = get("--link-image")
        .ok_or("--link-image (or WGNET_LINK_IMAGE) is required: the image link pods run")?;
    let pull = get("--link-pull-policy").unwrap_or_else(|| "IfNotPresent".into());
    if !["IfNotPresent", "Always", "Never"].contains(&pull.as_str()) {
        return Err(format!(
            "--link-pull-policy must be IfNotPresent, Always or Never, not {pull:?}"
        ));
    }
    let resync = match get("--resync") {
        None => Duration::from_secs(300),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|s| (5..=86_400).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| format!("--resync needs seconds from 5 to 86400, not {v:?}"))?,
    };
    let log_format = get("--log-format").unwrap_or_else(|| "text".into());
    if !["text", "json"].contains(&log_format.as_str()) {
        return Err(format!(
            "--log-format must be text or json, not {log_format:?}"
        ));
    }
    Ok(Options {
        gcp_credentials: get("--gcp-credentials").map(PathBuf::from),
        compute_endpoint: get("--compute-endpoint"),
        iam_endpoint: get("--iam-endpoint"),
        secrets_endpoint: get("--secrets-endpoint"),
        allowed_projects: get("--allowed-projects")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        install: get("--install").unwrap_or_else(|| "wgnet".into()),
        network: get("--network").unwrap_or_else(|| "wgnet".into()),
        cluster_id: get("--cluster-id"),
        link_image,
        link_pull_policy: pull,
        privileged_init: !flag_on("--no-privileged-init")?,
        resync,
        metrics_addr: addr("--metrics-addr", "0.0.0.0:8080")?,
        health_addr: addr("--health-addr", "0.0.0.0:8081")?,
        leader_elect: flag_on("--leader-elect")?,
        lease_name: get("--lease-name").unwrap_or_else(|| "wgnet-operator".into()),
        json_logs: log_format == "json",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_override_environment_and_defaults_apply() {
        let env = |k: &str| match k {
            "WGNET_LINK_IMAGE" => Some("img:env".to_owned()),
            "WGNET_RESYNC" => Some("60".to_owned()),
            "WGNET_ALLOWED_PROJECTS" => Some("a, b,".to_owned()),
            _ => None,
        };
        let o = parse(&args("--link-image img:flag --no-privileged-init"), env).expect("parses");
        assert_eq!(o.link_image, "img:flag");
        assert_eq!(o.resync, Duration::from_secs(60));
        assert_eq!(o.allowed_projects, vec!["a", "b"]);
        assert!(!o.privileged_init);
        assert_eq!(o.install, "wgnet");
        assert_eq!(
            o.health_addr,
            "0.0.0.0:8081".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn bad_input_gets_a_sentence() {
        let none = |_: &str| None;
        assert!(
            parse(&[], none)
                .expect_err("no image")
                .contains("--link-image")
        );
        for (a, want) in [
            ("--link-image i --resync 1", "--resync"),
            ("--link-image i --link-pull-policy Sometimes", "pull-policy"),
            ("--link-image i --bogus 1", "unknown flag --bogus"),
            ("--link-image i --metrics-addr nope", "--metrics-addr"),
            ("--link-image", "needs a value"),
            ("--link-image i stray", "unexpected argument"),
        ] {
            let e = parse(&args(a), none).expect_err(a);
            assert!(e.contains(want), "{a}: {e}");
        }
        assert_eq!(parse(&args("--help"), none), Err(String::new()));
    }
}
