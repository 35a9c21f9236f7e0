//! `wgnet-operator`: reads flags (see `cli::USAGE`), connects to the API server and GCP,
//! optionally waits to lead, and runs the controllers until SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use wgnet_cloud::api::{Credentials, Endpoints, RetryPolicy};
use wgnet_cloud::gcp::{GcpCloud, GcpConfig};
use wgnet_operator::children::LinkImage;
use wgnet_operator::cli;
use wgnet_operator::controller::{self, Context, Settings};
use wgnet_operator::http::{self, Health};
use wgnet_operator::metrics::Metrics;

/// jemalloc, with one arena and a background thread that returns freed pages to the
/// system at once (`.cargo/config.toml` sets both). Under glibc's malloc the operator kept
/// what its busiest moment had used: at 5,000 Gateways, about half its RSS was memory
/// freed long before, held in the worker threads' arenas.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args, |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(cli::CliError::Help) => {
            eprint!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wgnet-operator: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
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
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wgnet-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("wgnet-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to start, with an install hint, when the API server does not serve the CRDs:
/// the controllers would otherwise retry their watches forever while the pod looks healthy.
/// Only a 404 is final; any other failure is left to the controllers' own retries.
async fn check_crds(client: &Client) -> Result<(), StartError> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
    for (kind, plural) in [("Gateway", "gateways"), ("EgressGateway", "egressgateways")] {
        let gvk = GroupVersionKind::gvk("wgnet.dev", "v1alpha1", kind);
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        );
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(StartError::CrdMissing(plural));
            }
            Err(e) => tracing::warn!(error = %e, "Could not check that the {plural} CRD is served"),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Why the operator could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Kube(wgnet_operator::apiclient::ClientError),
    #[error(
        "the API server does not serve wgnet.dev/v1alpha1 {0}: the CRD {0}.wgnet.dev is not installed; install the CRDs with `kubectl apply --server-side -f charts/wireguard-gateway-operator/crds/` (helm install does it from the chart's crds/)"
    )]
    CrdMissing(&'static str),
    #[error("cannot read the kube-system namespace for the cluster id (set --cluster-id): {0}")]
    ClusterId(kube::Error),
    #[error("the kube-system namespace has no uid; set --cluster-id")]
    NoClusterUid,
    #[error("cannot set up GCP access: {0}")]
    Gcp(wgnet_cloud::CloudError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("--leader-elect needs {0}")]
    ElectionEnv(&'static str),
    #[error("the leader election stopped")]
    ElectionStopped,
}

async fn run(o: cli::Options) -> Result<(), StartError> {
    let client = wgnet_operator::apiclient::client()
        .await
        .map_err(StartError::Kube)?;
    check_crds(&client).await?;
    let cluster_id = match &o.cluster_id {
        Some(id) => id.clone(),
        None => Api::<Namespace>::all(client.clone())
            .get("kube-system")
            .await
            .map_err(StartError::ClusterId)?
            .metadata
            .uid
            .ok_or(StartError::NoClusterUid)?,
    };
    let metrics = Arc::new(Metrics::default());
    let observer_metrics = metrics.clone();
    let defaults = Endpoints::default();
    let cloud = GcpCloud::new(GcpConfig {
        credentials: o
            .gcp_credentials
            .clone()
            .map_or(Credentials::Ambient, Credentials::KeyFile),
        endpoints: Endpoints {
            compute: o.compute_endpoint.clone().unwrap_or(defaults.compute),
            iam: o.iam_endpoint.clone().unwrap_or(defaults.iam),
            secrets: o.secrets_endpoint.clone().unwrap_or(defaults.secrets),
        },
        retry: RetryPolicy::default(),
        install: o.install.clone(),
        cluster: cluster_id.clone(),
        network: o.network.clone(),
        observer: Some(Arc::new(move |c| observer_metrics.gcp_call(c))),
        // Each resync pass reads the steady resources back and repairs drift.
        verify_every: o.resync,
        budget: o.gcp_budget,
    })
    .await
    .map_err(StartError::Gcp)?;

    let health = Arc::new(Health {
        ready: Default::default(),
        metrics: metrics.clone(),
    });
    http::serve(o.health_addr, health.clone())
        .await
        .map_err(|source| StartError::Listen {
            addr: o.health_addr,
            source,
        })?;
    if o.metrics_addr != o.health_addr {
        http::serve(o.metrics_addr, health.clone())
            .await
            .map_err(|source| StartError::Listen {
                addr: o.metrics_addr,
                source,
            })?;
    }
    let pod = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    let (lead_tx, mut lead_rx) = tokio::sync::watch::channel(!o.leader_elect);
    let elector = if o.leader_elect {
        let ns = std::env::var("POD_NAMESPACE")
            .map_err(|_| StartError::ElectionEnv("$POD_NAMESPACE"))?;
        let identity = pod
            .clone()
            .ok_or(StartError::ElectionEnv("$POD_NAME or $HOSTNAME"))?;
        let e = wgnet_link::lease::Elector::new(
            client.clone(),
            &ns,
            &o.lease_name,
            &identity,
            wgnet_link::lease::Timing::standard(),
        );
        tokio::spawn(e.clone().run(lead_tx));
        // A standby is healthy and ready: it serves probes while it waits.
        health.ready.store(true, Ordering::Relaxed);
        Some(e)
    } else {
        drop(lead_tx);
        None
    };
    let settings = Settings {
        link: LinkImage {
            image: o.link_image.clone(),
            pull_policy: o.link_pull_policy.clone(),
            privileged_init: o.privileged_init,
        },
        cluster_id,
        resync: o.resync,
        sweep_projects: o.policy.projects.named().to_vec(),
        policy: o.policy.clone(),
        sweep_min_age: controller::DEFAULT_SWEEP_MIN_AGE,
        load_balancer: o.load_balancer.clone(),
    };
    let ctx = Arc::new(Context::new(client, cloud, settings, metrics, pod));
    let mut terminate = Box::pin(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    });
    if o.leader_elect {
        tracing::info!("waiting to lead");
        tokio::select! {
            r = lead_rx.wait_for(|l| *l) => { r.map_err(|_| StartError::ElectionStopped)?; }
            () = &mut terminate => { return Ok(()); }
        }
    }
    tracing::info!("running the Gateway and EgressGateway controllers");
    health.ready.store(true, Ordering::Relaxed);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let lost = async move {
        if o.leader_elect {
            let _ = lead_rx.wait_for(|l| !*l).await;
            tracing::error!(
                "lost the operator lease: stopping so that only one replica reconciles"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = &mut terminate => {}
            () = lost => {}
        }
        let _ = stop_tx.send(true);
    });
    controller::run(ctx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    })
    .await;
    if let Some(e) = elector {
        e.release().await;
    }
    tracing::info!("stopped");
    Ok(())
}
