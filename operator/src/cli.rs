//! The operator's command line and environment. Every flag has an environment variable
//! (`WGNET_` + the flag in upper snake case) so the Helm chart can set either. Pure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::{
    DEFAULT_MAX_DISK_SIZE_GB, DEFAULT_MAX_GATEWAYS_PER_NAMESPACE, Policy, Projects,
};

/// Usage text.
pub const USAGE: &str = "\
usage: wgnet-operator [options]

GCP:
  --gcp-credentials PATH    service-account JSON key (default: ambient credentials:
                            GOOGLE_APPLICATION_CREDENTIALS, workload identity, metadata server)
  --compute-endpoint URL    Compute v1 base URL (default https://compute.googleapis.com/compute/v1/)
  --iam-endpoint URL        IAM v1 base URL
  --secrets-endpoint URL    Secret Manager v1 base URL
  --gcp-requests-per-second N
                            calls per second the operator sends each project, retries
                            included, in bursts of at most 5x that (default 20)
Policy (what a Gateway may ask for; anything else is refused with PolicyRefused):
  --allowed-projects LIST   comma-separated projects Gateways may use, or * for any the
                            credentials reach (required)
  --allowed-machine-types L machine types, or prefixes ending in * (default e2-micro,e2-small,e2-medium)
  --allowed-images LIST     images or families, or prefixes ending in *
                            (default projects/debian-cloud/global/images/family/debian-12)
  --max-disk-size-gb N      boot disk cap (default 20)
  --max-gateways-per-namespace N
                            the newest beyond N are refused; 0: no limit (default 5)
  --allowed-dns-suffixes L  NAMESPACE=SUFFIX,... names a namespace may publish (NAMESPACE
                            * for all); when set, other names are refused (default: no check)
  --install NAME            install label on GCP resources (default wgnet)
  --network NAME            shared VPC network name (default wgnet)
LoadBalancer Services (spec.loadBalancerClass: wgnet.dev/gateway):
  --lb-project ID           default GCP project of their Gateways (annotation wgnet.dev/project)
  --lb-region REGION        default region (annotation wgnet.dev/region)
  --lb-zone ZONE            default zone, used when it lies in the region (annotation
                            wgnet.dev/zone; default: the region's zone a)
  --lb-machine-type TYPE    default machine type (annotation wgnet.dev/machine-type)
  --lb-claim-unclassed      serve LoadBalancer Services that name no class too (off: the
                            cluster's own load balancer controller keeps those)
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
    /// The admin policy.
    pub policy: Policy,
    /// The per-project request budget.
    pub gcp_budget: wgnet_cloud::budget::Budget,
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
    /// LoadBalancer Services.
    pub load_balancer: crate::controller::loadbalancer::LoadBalancerSettings,
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

/// Why the command line or environment was refused (or `Help`: usage was asked for).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// `--help`/`-h`.
    #[error("usage was asked for")]
    Help,
    /// A flag without its value.
    #[error("{0} needs a value")]
    NeedsValue(String),
    /// Something that is not a flag.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
    /// A flag the operator does not know.
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    /// A required flag is missing.
    #[error("{flag} (or {env}) is required: {why}")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
        /// What it is for.
        why: &'static str,
    },
    /// A value out of its range or form (flags never carry secrets: the key is a path).
    #[error("{flag} {value:?}: {why}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What the flag accepts.
        why: &'static str,
    },
}

/// Every flag, for the unknown-flag check.
const KNOWN: &[&str] = &[
    "--gcp-credentials",
    "--compute-endpoint",
    "--iam-endpoint",
    "--secrets-endpoint",
    "--gcp-requests-per-second",
    "--allowed-projects",
    "--allowed-machine-types",
    "--allowed-images",
    "--max-disk-size-gb",
    "--max-gateways-per-namespace",
    "--allowed-dns-suffixes",
    "--install",
    "--network",
    "--lb-project",
    "--lb-region",
    "--lb-zone",
    "--lb-machine-type",
    "--lb-claim-unclassed",
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

/// A comma-separated list, blanks dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `args` (without the program name), with `env` looked up for every flag not given.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, CliError> {
    let mut given: Vec<(String, Option<String>)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(CliError::Help),
            "--no-privileged-init" | "--leader-elect" | "--lb-claim-unclassed" => {
                given.push((a.clone(), None))
            }
            f if f.starts_with("--") => {
                let (flag, value) = match f.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (
                        f.to_owned(),
                        it.next()
                            .cloned()
                            .ok_or_else(|| CliError::NeedsValue(f.to_owned()))?,
                    ),
                };
                given.push((flag, Some(value)));
            }
            other => return Err(CliError::Unexpected(other.to_owned())),
        }
    }
    if let Some((f, _)) = given.iter().find(|(f, _)| !KNOWN.contains(&f.as_str())) {
        return Err(CliError::UnknownFlag(f.clone()));
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
    let flag_on = |flag: &'static str| -> Result<bool, CliError> {
        match get(flag).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(CliError::Invalid {
                flag,
                value: v.to_owned(),
                why: "is a switch; its environment variable must be true or false",
            }),
        }
    };
    let addr = |flag: &'static str, default: &str| -> Result<SocketAddr, CliError> {
        let v = get(flag).unwrap_or_else(|| default.to_owned());
        v.parse().map_err(|_| CliError::Invalid {
            flag,
            value: v,
            why: "needs an address like 0.0.0.0:8080",
        })
    };
    let number = |flag: &'static str,
                  default: u64,
                  range: std::ops::RangeInclusive<u64>,
                  why: &'static str|
     -> Result<u64, CliError> {
        match get(flag) {
            None => Ok(default),
            Some(v) => {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or(CliError::Invalid {
                        flag,
                        value: v,
                        why,
                    })
            }
        }
    };
    let link_image = get("--link-image").ok_or(CliError::Missing {
        flag: "--link-image",
        env: "WGNET_LINK_IMAGE",
        why: "the image link pods run",
    })?;
    let pull = get("--link-pull-policy").unwrap_or_else(|| "IfNotPresent".into());
    if !["IfNotPresent", "Always", "Never"].contains(&pull.as_str()) {
        return Err(CliError::Invalid {
            flag: "--link-pull-policy",
            value: pull,
            why: "must be IfNotPresent, Always or Never",
        });
    }
    let resync = Duration::from_secs(number(
        "--resync",
        300,
        5..=86_400,
        "needs seconds from 5 to 86400",
    )?);
    let log_format = get("--log-format").unwrap_or_else(|| "text".into());
    if !["text", "json"].contains(&log_format.as_str()) {
        return Err(CliError::Invalid {
            flag: "--log-format",
            value: log_format,
            why: "must be text or json",
        });
    }
    Ok(Options {
        gcp_credentials: get("--gcp-credentials").map(PathBuf::from),
        compute_endpoint: get("--compute-endpoint"),
        iam_endpoint: get("--iam-endpoint"),
        secrets_endpoint: get("--secrets-endpoint"),
        policy: policy(&get, &number)?,
        gcp_budget: {
            let per_second = number(
                "--gcp-requests-per-second",
                20,
                1..=1000,
                "needs calls per second from 1 to 1000",
            )? as f64;
            wgnet_cloud::budget::Budget {
                per_second,
                burst: per_second * 5.0,
            }
        },
        install: get("--install").unwrap_or_else(|| "wgnet".into()),
        network: get("--network").unwrap_or_else(|| "wgnet".into()),
        cluster_id: get("--cluster-id"),
        link_image,
        link_pull_policy: pull,
        privileged_init: !flag_on("--no-privileged-init")?,
        resync,
        load_balancer: crate::controller::loadbalancer::LoadBalancerSettings {
            claim_unclassed: flag_on("--lb-claim-unclassed")?,
            project: get("--lb-project"),
            region: get("--lb-region"),
            zone: get("--lb-zone"),
            machine_type: get("--lb-machine-type"),
        },
        metrics_addr: addr("--metrics-addr", "0.0.0.0:8080")?,
        health_addr: addr("--health-addr", "0.0.0.0:8081")?,
        leader_elect: flag_on("--leader-elect")?,
        lease_name: get("--lease-name").unwrap_or_else(|| "wgnet-operator".into()),
        json_logs: log_format == "json",
    })
}

/// The admin policy flags. The projects have no default: an operator whose key reaches
/// many projects must be told which ones tenants may spend in (or `*`, said explicitly).
fn policy(
    get: &impl Fn(&str) -> Option<String>,
    number: &impl Fn(
        &'static str,
        u64,
        std::ops::RangeInclusive<u64>,
        &'static str,
    ) -> Result<u64, CliError>,
) -> Result<Policy, CliError> {
    let projects = get("--allowed-projects").ok_or(CliError::Missing {
        flag: "--allowed-projects",
        env: "WGNET_ALLOWED_PROJECTS",
        why: "the GCP projects Gateways may use, comma separated, or * for any project the credentials reach",
    })?;
    let projects = match list(&projects).as_slice() {
        [one] if one == "*" => Projects::Any,
        l if l.iter().any(|p| p == "*") => {
            return Err(CliError::Invalid {
                flag: "--allowed-projects",
                value: projects,
                why: "is either * alone or a list of project ids",
            });
        }
        [] => {
            return Err(CliError::Invalid {
                flag: "--allowed-projects",
                value: projects,
                why: "names no project",
            });
        }
        l => Projects::Only(l.to_vec()),
    };
    let mut p = Policy::new(projects);
    if let Some(v) = get("--allowed-machine-types") {
        p.machine_types = list(&v);
    }
    if let Some(v) = get("--allowed-images") {
        p.images = list(&v);
    }
    p.max_disk_size_gb = u32::try_from(number(
        "--max-disk-size-gb",
        u64::from(DEFAULT_MAX_DISK_SIZE_GB),
        10..=65_536,
        "needs a size in GB from 10 to 65536",
    )?)
    .expect("bounded by the range above");
    p.max_gateways_per_namespace = u32::try_from(number(
        "--max-gateways-per-namespace",
        u64::from(DEFAULT_MAX_GATEWAYS_PER_NAMESPACE),
        0..=10_000,
        "needs a count from 0 (no limit) to 10000",
    )?)
    .expect("bounded by the range above");
    if let Some(v) = get("--allowed-dns-suffixes") {
        for entry in list(&v) {
            let Some((ns, suffix)) = entry
                .split_once('=')
                .filter(|(n, s)| !n.trim().is_empty() && !s.trim().trim_matches('.').is_empty())
            else {
                return Err(CliError::Invalid {
                    flag: "--allowed-dns-suffixes",
                    value: entry,
                    why: "entries are NAMESPACE=SUFFIX (NAMESPACE * for every namespace)",
                });
            };
            p.dns_suffixes
                .entry(ns.trim().to_owned())
                .or_default()
                .push(suffix.trim().to_owned());
        }
    }
    Ok(p)
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
        assert_eq!(
            o.policy.projects,
            Projects::Only(vec!["a".into(), "b".into()])
        );
        assert_eq!(o.policy, Policy::new(o.policy.projects.clone()));
        assert_eq!(o.gcp_budget, wgnet_cloud::budget::Budget::DEFAULT);
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
                .to_string()
                .contains("--link-image")
        );
        for (a, want) in [
            (
                "--link-image i",
                "--allowed-projects (or WGNET_ALLOWED_PROJECTS) is required",
            ),
            ("--link-image i --allowed-projects a,*", "either * alone"),
            ("--link-image i --allowed-projects ,", "names no project"),
            ("--link-image i --allowed-projects a --resync 1", "--resync"),
            (
                "--link-image i --allowed-projects a --link-pull-policy Sometimes",
                "pull-policy",
            ),
            (
                "--link-image i --allowed-projects a --bogus 1",
                "unknown flag --bogus",
            ),
            (
                "--link-image i --allowed-projects a --metrics-addr nope",
                "--metrics-addr",
            ),
            (
                "--link-image i --allowed-projects a --max-disk-size-gb 9",
                "--max-disk-size-gb",
            ),
            (
                "--link-image i --allowed-projects a --allowed-dns-suffixes apps",
                "NAMESPACE=SUFFIX",
            ),
            ("--link-image", "needs a value"),
            ("--link-image i stray", "unexpected argument"),
        ] {
            let e = parse(&args(a), none).expect_err(a).to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
        assert_eq!(parse(&args("--help"), none), Err(CliError::Help));
    }

    #[test]
    fn the_policy_flags_reach_the_policy() {
        let o = parse(
            &args(
                "--link-image i --allowed-projects * --allowed-machine-types e2-*,n2d-standard-2 \
                 --allowed-images projects/debian-cloud/global/images/* --max-disk-size-gb 30 \
                 --max-gateways-per-namespace 0 \
                 --allowed-dns-suffixes apps=apps.example.com,*=shared.example.org,apps=b.example",
            ),
            |_: &str| None,
        )
        .expect("parses");
        let p = o.policy;
        assert_eq!(p.projects, Projects::Any);
        assert_eq!(p.machine_types, vec!["e2-*", "n2d-standard-2"]);
        assert_eq!(p.images, vec!["projects/debian-cloud/global/images/*"]);
        assert_eq!((p.max_disk_size_gb, p.max_gateways_per_namespace), (30, 0));
        assert_eq!(
            p.dns_suffixes.get("apps"),
            Some(&vec!["apps.example.com".to_owned(), "b.example".to_owned()])
        );
        assert_eq!(
            p.dns_suffixes.get("*"),
            Some(&vec!["shared.example.org".to_owned()])
        );
    }
}
