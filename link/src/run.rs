//! The link process: command-line options, and the control loop that ties the config
//! source, leader election, the engine and the HTTP endpoints together. Signals end it
//! after fencing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, LinkConfig, Raw};
use crate::engine::Engine;
use crate::lease::{Elector, Timing};
use crate::netlink::Netlink;
use crate::status::Status;

/// Usage text for `--help` and errors.
pub const USAGE: &str = "\
usage: wgnet-link [options]
       wgnet-link plan --config-dir DIR     print the nftables ruleset the config produces
       wgnet-link enable-forwarding         turn on IPv4 forwarding in this network namespace

Configuration source (one of):
  --config-dir DIR          read DIR/config.json and DIR/<secret key>, reloaded on change
  --configmap NAME --secret NAME
                            watch this ConfigMap and Secret through the Kubernetes API
Options:
  --namespace NS            namespace of the ConfigMap, Secret and Lease
                            (default: $POD_NAMESPACE or the service account's namespace)
  --secret-key KEY          key in the Secret or file name in DIR (default: private-key;
                            an EgressGateway uses wg0.conf)
  --interface NAME          WireGuard interface (default: wg0)
  --lease NAME              elect a leader among replicas on this coordination.k8s.io Lease
  --identity ID             this replica's identity in the Lease (default: $HOSTNAME)
  --lease-duration S        seconds a silent Lease is honoured (default: 8)
  --renew-deadline S        a holder that cannot renew for this long steps down (default: 5)
  --retry-period S          seconds between Lease attempts (default: 1)
  --http ADDR               /healthz, /readyz and /metrics (default: 0.0.0.0:9090)
  --log-format text|json    (default: text)
";

/// Where the configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory.
    Dir(PathBuf),
    /// A ConfigMap and Secret by name.
    Kube {
        /// ConfigMap name.
        configmap: String,
        /// Secret name.
        secret: String,
    },
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Config source.
    pub source: Source,
    /// Namespace override.
    pub namespace: Option<String>,
    /// Secret key / file name.
    pub secret_key: String,
    /// Interface name.
    pub interface: String,
    /// Lease name, when electing.
    pub lease: Option<String>,
    /// Identity in the Lease.
    pub identity: Option<String>,
    /// Election timing.
    pub timing: Timing,
    /// HTTP address.
    pub http: SocketAddr,
    /// JSON logs.
    pub json_logs: bool,
    /// Print the plan and exit.
    pub plan_only: bool,
}

/// Why the command line was refused (or `Help`: usage was asked for).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// `--help`/`-h`.
    #[error("usage was asked for")]
    Help,
    /// A flag without its value.
    #[error("{0} needs a value")]
    NeedsValue(String),
    /// A flag the link does not know.
    #[error("unknown option {0:?}")]
    Unknown(String),
    /// A flag whose value is out of its range or form.
    #[error("{flag} {value:?}: {why}")]
    Invalid {
        /// The flag.
        flag: String,
        /// What was given (flags never carry secrets).
        value: String,
        /// What the flag accepts.
        why: &'static str,
    },
    /// Flags that contradict each other, or a missing combination.
    #[error("{0}")]
    Combination(&'static str),
}

/// Why `wgnet-link` stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The route netlink socket could not be opened.
    #[error("cannot open a route netlink socket: {0}")]
    Netlink(std::io::Error),
    /// No Kubernetes client could be built.
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(kube::Error),
    /// The SIGTERM handler could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
    /// A background task the loop depends on ended.
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// `plan` without `--config-dir`.
    #[error("plan reads --config-dir")]
    PlanNeedsDir,
    /// `plan` over a config the link refuses.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, ArgsError> {
    let mut dir = None;
    let mut configmap = None;
    let mut secret = None;
    let mut o = Options {
        source: Source::Dir(PathBuf::new()),
        namespace: None,
        secret_key: config::PRIVATE_KEY_KEY.into(),
        interface: "wg0".into(),
        lease: None,
        identity: None,
        timing: Timing::standard(),
        http: SocketAddr::from(([0, 0, 0, 0], 9090)),
        json_logs: false,
        plan_only: false,
    };
    let mut it = args.iter();
    let secs = |v: &str, flag: &str| -> Result<Duration, ArgsError> {
        v.parse::<u64>()
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .map(Duration::from_secs)
            .ok_or_else(|| ArgsError::Invalid {
                flag: flag.to_owned(),
                value: v.to_owned(),
                why: "needs a number of seconds from 1 to 3600",
            })
    };
    while let Some(a) = it.next() {
        if a == "plan" {
            o.plan_only = true;
            continue;
        }
        if a == "--help" || a == "-h" {
            return Err(ArgsError::Help);
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| ArgsError::NeedsValue(a.clone()))
        };
        match a.as_str() {
            "--config-dir" => dir = Some(PathBuf::from(value()?)),
            "--configmap" => configmap = Some(value()?),
            "--secret" => secret = Some(value()?),
            "--namespace" => o.namespace = Some(value()?),
            "--secret-key" => o.secret_key = value()?,
            "--interface" => {
                let v = value()?;
                if v.is_empty()
                    || v.len() > 15
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(ArgsError::Invalid {
                        flag: a.clone(),
                        value: v,
                        why: "is not a valid interface name (1-15 letters, digits, - _ .)",
                    });
                }
                o.interface = v;
            }
            "--lease" => o.lease = Some(value()?),
            "--identity" => o.identity = Some(value()?),
            "--lease-duration" => o.timing.duration = secs(&value()?, a)?,
            "--renew-deadline" => o.timing.renew_deadline = secs(&value()?, a)?,
            "--retry-period" => o.timing.retry = secs(&value()?, a)?,
            "--http" => {
                let v = value()?;
                o.http = v.parse().map_err(|_| ArgsError::Invalid {
                    flag: a.clone(),
                    value: v.clone(),
                    why: "is not an address:port",
                })?;
            }
            "--log-format" => {
                o.json_logs = match value()?.as_str() {
                    "json" => true,
                    "text" => false,
                    v => {
                        return Err(ArgsError::Invalid {
                            flag: a.clone(),
                            value: v.to_owned(),
                            why: "must be text or json",
                        });
                    }
                }
            }
            other => return Err(ArgsError::Unknown(other.to_owned())),
        }
    }
    o.source = match (dir, configmap, secret) {
        (Some(d), None, None) => Source::Dir(d),
        (None, Some(configmap), Some(secret)) => Source::Kube { configmap, secret },
        (None, None, None) => {
            return Err(ArgsError::Combination(
                "no configuration source: give --config-dir, or --configmap and --secret",
            ));
        }
        _ => {
            return Err(ArgsError::Combination(
                "give either --config-dir, or both --configmap and --secret",
            ));
        }
    };
    if o.timing.renew_deadline >= o.timing.duration {
        return Err(ArgsError::Combination(
            "--renew-deadline must be shorter than --lease-duration, or two replicas could hold the data plane at once",
        ));
    }
    if o.plan_only && !matches!(o.source, Source::Dir(_)) {
        return Err(ArgsError::Combination("plan reads --config-dir"));
    }
    Ok(o)
}

fn namespace(o: &Options) -> String {
    o.namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "default".into())
}

/// `wgnet-link plan`: the ruleset for the config in the directory, without touching the
/// kernel (egress names are shown unresolved as they would be skipped).
pub fn plan_text(o: &Options) -> Result<String, RunError> {
    let Source::Dir(dir) = &o.source else {
        return Err(RunError::PlanNeedsDir);
    };
    let raw = Raw {
        config: std::fs::read(dir.join(config::CONFIG_KEY)).ok(),
        secret: std::fs::read(dir.join(&o.secret_key)).ok(),
    };
    let cfg = config::parse(&raw)?;
    // The same plan `apply` makes, with names left unresolved: the forwards they would
    // serve are listed as skipped, so plan never claims what a resolver might not give.
    let p = crate::plan::data_plan(&cfg, &o.interface, &crate::plan::Resolved::new());
    let mut out = p.table.to_string();
    for r in &p.routes {
        out.push_str(&format!("# route {r} dev {}\n", o.interface));
    }
    for u in &p.unresolved {
        out.push_str(&format!("# skipped {u}\n"));
    }
    Ok(out)
}

/// Keeps the Lease's last-handshake annotation current (the elector writes it with each
/// renewal) until the elector stops.
async fn publish_handshakes(e: Arc<Elector>, status: Arc<Status>, every: Duration) {
    while !e.is_stopping() {
        let at = status.last_handshake().and_then(|t| {
            k8s_openapi::jiff::Timestamp::try_from(t)
                .ok()
                .map(|t| t.to_string())
        });
        e.annotate(crate::lease::LAST_HANDSHAKE_ANNOTATION, at);
        tokio::time::sleep(every).await;
    }
}

/// Runs the link until SIGTERM or SIGINT.
pub async fn run(o: Options) -> Result<(), RunError> {
    let status = Arc::new(Status::default());
    crate::http::serve(o.http, status.clone())
        .await
        .map_err(|source| RunError::Listen {
            addr: o.http,
            source,
        })?;
    let nl = Netlink::connect().map_err(RunError::Netlink)?;
    let mut engine = Engine::kernel(&o.interface, nl, status.clone());

    let (raw_tx, mut raw_rx) = watch::channel(Raw::default());
    let ns = namespace(&o);
    let needs_kube = matches!(o.source, Source::Kube { .. }) || o.lease.is_some();
    let client = if needs_kube {
        Some(kube::Client::try_default().await.map_err(RunError::Kube)?)
    } else {
        None
    };
    match (&o.source, &client) {
        (Source::Dir(d), _) => {
            tokio::spawn(crate::source::files(
                d.clone(),
                o.secret_key.clone(),
                raw_tx,
            ));
        }
        (Source::Kube { configmap, secret }, Some(c)) => {
            tokio::spawn(crate::source::kube(
                c.clone(),
                ns.clone(),
                configmap.clone(),
                secret.clone(),
                o.secret_key.clone(),
                raw_tx,
            ));
        }
        (Source::Kube { .. }, None) => unreachable!("a client exists whenever the source is kube"),
    }

    let (lead_tx, mut lead_rx) = watch::channel(false);
    let elector = match (&o.lease, &client) {
        (Some(name), Some(c)) => {
            let identity = o
                .identity
                .clone()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("wgnet-link-{}", std::process::id()));
            status
                .elected
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let e = Elector::new(c.clone(), &ns, name, &identity, o.timing);
            tokio::spawn(e.clone().run(lead_tx));
            tokio::spawn(publish_handshakes(
                e.clone(),
                status.clone(),
                o.timing.retry,
            ));
            Some(e)
        }
        _ => {
            let _ = lead_tx.send(true);
            None
        }
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signal)?;
    let mut relays = crate::relay::Relays::default();
    let mut current: Option<LinkConfig> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut leading = false;
    let far = Duration::from_secs(3600);
    loop {
        let resolve_every = match &current {
            Some(LinkConfig::Egress(e)) => e.resolve_interval,
            Some(LinkConfig::Ingress(i)) => i.resync,
            None => far,
        };
        let wake = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + resolve_every);
        let mut dirty = false;
        tokio::select! {
            r = raw_rx.changed() => {
                if r.is_err() { return Err(RunError::Stopped("the configuration source")); }
                let raw = raw_rx.borrow_and_update().clone();
                match config::parse(&raw) {
                    Ok(cfg) => { current = Some(cfg); dirty = true; }
                    Err(e) => {
                        tracing::warn!(error = %e, "configuration refused; keeping the last good one");
                        status.failed(e.to_string());
                    }
                }
            }
            r = lead_rx.changed() => {
                if r.is_err() { return Err(RunError::Stopped("leader election")); }
                leading = *lead_rx.borrow_and_update();
                status.set_leader(leading);
                if leading {
                    dirty = true;
                } else if engine.active() {
                    relays.clear();
                    if let Err(e) = engine.fence() { tracing::error!(error = %e, "fencing failed"); }
                    tracing::info!("lost the lease: wg0 and the table removed");
                }
            }
            _ = tokio::time::sleep_until(wake) => { dirty = true; }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        if !(dirty && leading) {
            continue;
        }
        let Some(cfg) = &current else { continue };
        match engine.apply(cfg).await {
            Ok(out) => {
                retry_at = None;
                if out.table_changed {
                    tracing::info!(forwards = cfg.forward_count(), "data plane applied");
                }
                for u in &out.unresolved {
                    tracing::warn!(forward = %u, "forward skipped");
                }
                if let Some(e) = &out.endpoint_unresolved {
                    tracing::warn!(error = %e, "peer endpoint unresolved; retrying");
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                // Targets resolved through the VPN's DNS cannot resolve before the tunnel
                // is up (the first apply): look again soon, until half a minute after a
                // handshake, rather than at the next resolve interval.
                let vpn_dns = matches!(cfg, LinkConfig::Egress(e) if !e.wg.dns.is_empty());
                let tunnel_new = status
                    .last_handshake()
                    .is_none_or(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(30)));
                if vpn_dns && tunnel_new && !out.unresolved.is_empty() {
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
                if let Err(e) = relays.set(&crate::relay::specs(cfg)) {
                    tracing::error!(error = %e, "the PROXY protocol relay cannot listen; retrying");
                    status.failed(e.to_string());
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    continue;
                }
                status.applied();
            }
            Err(e) => {
                tracing::error!(error = %e, "applying the configuration failed; retrying");
                status.failed(e.to_string());
                retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
    tracing::info!("stopping: fencing before releasing the lease");
    status.set_leader(false);
    relays.clear();
    if let Err(e) = engine.fence() {
        tracing::error!(error = %e, "fencing failed");
    }
    if let Some(e) = elector {
        e.release().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&args(
            "--configmap c --secret s --lease l --http 127.0.0.1:9",
        ))
        .expect("valid");
        assert_eq!(
            o.source,
            Source::Kube {
                configmap: "c".into(),
                secret: "s".into()
            }
        );
        assert_eq!(o.http.port(), 9);
        for (bad, want) in [
            ("", "no configuration source"),
            ("--config-dir d --secret s", "either"),
            (
                "--config-dir d --interface this-name-is-too-long",
                "not a valid interface name",
            ),
            (
                "--config-dir d --lease-duration 3 --renew-deadline 5",
                "shorter",
            ),
            ("--config-dir d --bogus", "unknown option"),
            ("plan --configmap c --secret s", "plan reads --config-dir"),
            ("--config-dir", "needs a value"),
            ("--config-dir d --retry-period 0", "seconds from 1"),
        ] {
            let e = parse_args(&args(bad)).expect_err(bad);
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    /// `wgnet-link plan` prints the plan `apply` makes (the same function), routes and
    /// skipped forwards included: names stay unresolved, so what needs one is skipped.
    #[test]
    fn plan_prints_the_plan_apply_makes() {
        use config::{EgressDocument, EgressForward, LinkDocument};
        let dir = std::env::temp_dir().join(format!("wgnet-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let doc = LinkDocument::Egress(EgressDocument {
            forwards: vec![
                EgressForward {
                    name: "db".into(),
                    port: 5432,
                    protocol: crate::net::Protocol::Tcp,
                    target_host: "10.20.0.5".into(),
                    target_port: 5432,
                },
                EgressForward {
                    name: "wiki".into(),
                    port: 8080,
                    protocol: crate::net::Protocol::Tcp,
                    target_host: "wiki.corp.test".into(),
                    target_port: 80,
                },
            ],
            resolve_interval_seconds: 30,
        });
        let wg = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.8.0.2/32\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nEndpoint = 203.0.113.40:51820\nAllowedIPs = 10.20.0.0/24\n";
        std::fs::write(dir.join(config::CONFIG_KEY), doc.to_json()).expect("config");
        std::fs::write(dir.join(config::PRIVATE_KEY_KEY), wg).expect("secret");
        let o = parse_args(&args(&format!("plan --config-dir {}", dir.display()))).expect("args");
        let text = plan_text(&o);
        let _ = std::fs::remove_dir_all(&dir);
        let text = text.expect("plan");
        let raw = config::Raw {
            config: Some(doc.to_json().into_bytes()),
            secret: Some(wg.as_bytes().to_vec()),
        };
        let cfg = config::parse(&raw).expect("config");
        let planned = crate::plan::data_plan(&cfg, "wg0", &crate::plan::Resolved::new());
        assert!(text.starts_with(&planned.table.to_string()), "{text}");
        assert!(text.contains("# route 10.20.0.5/32 dev wg0"), "{text}");
        assert!(
            text.contains("# skipped wiki: wiki.corp.test was not resolved"),
            "{text}"
        );
        assert!(text.contains("dnat to 10.20.0.5:5432"), "{text}");
    }
}
