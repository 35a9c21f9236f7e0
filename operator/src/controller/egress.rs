//! The EgressGateway controller: validates the user's wg-quick Secret with the link's own
//! parser, applies one egress link pod (config by API watch, so Secret edits reload in
//! place) and a ClusterIP Service named after the EgressGateway, and reports Ready from the
//! link pod's readiness (a recent handshake).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use wgnet_cloud::Cloud;

use tracing::Instrument as _;

use super::error::{Error, KubeCall, ObserveError};
use super::{
    Context, apply_children, condition, owner_of_pod, pod_ready, publish, report_invalid,
    set_condition, write_status,
};
use crate::api::EgressGateway;
use crate::api::conditions::{self, reasons};
use crate::children::{
    self, Clients, EgressPort, LinkChildren, LinkImage, LinkInputs, LinkParams, MANAGED_SELECTOR,
    NamedPort, selector_string,
};
use crate::k8s::Time;
use crate::keys::WipedSecret;

const KIND: &str = "EgressGateway";
/// How often an EgressGateway whose Secret is missing or invalid is looked at again (the
/// operator does not watch Secrets it does not own).
const CONFIG_RETRY: Duration = Duration::from_secs(10);

/// Name of the link objects of EgressGateway `egw` (its Service is named `egw` itself).
pub fn link_name(egw: &str) -> String {
    format!("{egw}-egress")
}

/// Runs the EgressGateway controller until `shutdown` resolves.
pub async fn run<C: Cloud + 'static>(
    ctx: Arc<Context<C>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let pods = watcher::Config::default().labels(&format!(
        "{MANAGED_SELECTOR},{}=egress-link",
        children::COMPONENT_LABEL
    ));
    Controller::new(
        Api::<DeserializeGuard<EgressGateway>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .with_config(super::controller_config())
    // Metadata is all a trigger needs; the watches also keep `ctx.applied` honest.
    .owns_stream(super::children_watch::<Deployment, C>(&ctx))
    .owns_stream(super::children_watch::<Service, C>(&ctx))
    .watches(
        Api::<PartialObjectMeta<Pod>>::all(client),
        pods,
        |pod: PartialObjectMeta<Pod>| owner_of_pod(&pod.metadata),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "egress controller");
        }
        std::future::ready(())
    })
    .await;
}

/// Counts the failure; looks again after the error's own delay (a name collision, which
/// only someone else's edit resolves, slowly).
fn error_policy<C: Cloud>(
    _: Arc<DeserializeGuard<EgressGateway>>,
    e: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    ctx.metrics.error(KIND, e.metric_label(), &e.reason_label());
    e.retry_after().map_or_else(Action::await_change, |d| {
        Action::requeue(d.min(ctx.settings.resync))
    })
}

async fn reconcile<C: Cloud>(
    obj: Arc<DeserializeGuard<EgressGateway>>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(egw) => {
            let span = tracing::info_span!(
                "reconcile",
                egress_gateway = %egw.name_any(),
                namespace = egw.namespace().unwrap_or_default(),
            );
            let r = reconcile_egress(egw, &ctx).instrument(span).await;
            if let Err(e) = &r {
                tracing::warn!(egress_gateway = %egw.name_any(), namespace = ?egw.namespace(), error = %e, "reconcile failed");
                fail(&ctx, egw, e).await;
            }
            r
        }
        Err(invalid) => report_invalid::<EgressGateway, C>(&ctx, invalid, "EgressGateway").await,
    };
    ctx.metrics.reconciled(KIND, started.elapsed());
    result
}

/// `Ready=False/<reason>` with the error's message, and a Warning event when that is news.
async fn fail<C: Cloud>(ctx: &Context<C>, egw: &EgressGateway, e: &Error) {
    let mut s = egw.status.clone().unwrap_or_default();
    s.observed_generation = egw.metadata.generation;
    set_condition(
        &mut s.conditions,
        conditions::READY,
        false,
        e.reason(),
        &e.to_string(),
        egw.metadata.generation,
    );
    if Some(&s) == egw.status.as_ref() {
        return;
    }
    if let Err(w) = write_status(&ctx.client, egw, |x| x.status = Some(s)).await {
        tracing::warn!(egress_gateway = %egw.name_any(), error = %w, "cannot report the failure in status");
    }
    publish(
        &ctx.recorder,
        egw,
        true,
        e.reason(),
        "Reconcile",
        e.to_string(),
    )
    .await;
}

/// Reads the config Secret (observe step, I/O).
async fn observe(
    client: &kube::Client,
    ns: &str,
    egw: &EgressGateway,
) -> Result<Option<WipedSecret>, ObserveError> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&egw.spec.config_secret_ref.name)
        .await
        .map_err(KubeCall::new("read config Secret"))?
        .map(WipedSecret))
}

/// What the config Secret says (validate step, pure): why it cannot be used, as
/// (reason, message), or the VPN server's UDP port. Never echoes the Secret's content.
fn check_config(
    ns: &str,
    egw: &EgressGateway,
    secret: Option<&Secret>,
) -> Result<Option<u16>, (&'static str, String)> {
    let r = &egw.spec.config_secret_ref;
    let Some(secret) = secret else {
        return Err((
            reasons::CONFIG_SECRET_NOT_FOUND,
            format!("Secret {:?} does not exist in namespace {ns:?}", r.name),
        ));
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Err((
            reasons::CONFIG_KEY_NOT_FOUND,
            format!("Secret {:?} has no key {:?}", r.name, r.key),
        ));
    };
    match wgnet_link::wgquick::parse(&bytes.0) {
        Ok(wg) => Ok(wg.peer.endpoint.map(|(_, port)| port)),
        Err(e) => Err((
            reasons::INVALID_CONFIG,
            format!("Secret {:?} key {:?}: {e}", r.name, r.key),
        )),
    }
}

fn params(egw: &EgressGateway) -> LinkParams<'_> {
    let name = egw.meta().name.as_deref().unwrap_or_default();
    LinkParams {
        namespace: egw.meta().namespace.as_deref().unwrap_or_default(),
        name: link_name(name),
        owner: name,
        component: "egress-link",
        owner_ref: egw.controller_owner_ref(&()).unwrap_or_default(),
        secret: (
            egw.spec.config_secret_ref.name.clone(),
            egw.spec.config_secret_ref.key.clone(),
        ),
        replicas: 1,
        resources: egw.spec.resources.clone(),
        node_selector: egw.spec.node_selector.clone(),
        tolerations: egw.spec.tolerations.clone(),
        affinity: egw.spec.affinity.clone(),
        image_pull_secrets: egw.spec.image_pull_secrets.clone(),
    }
}

/// The link's egress `config.json`. Pure.
pub fn link_config(egw: &EgressGateway) -> String {
    use wgnet_link::config::{EgressDocument, EgressForward, LinkDocument};
    let forwards = egw
        .spec
        .forwards
        .iter()
        // The schema bounds both ports to 1..=65535; a value outside it cannot be served
        // and the link would refuse the whole document, so it is left out here.
        .filter_map(|f| {
            Some(EgressForward {
                name: f.name.clone(),
                port: u16::try_from(f.port).ok()?,
                protocol: super::gateway::link_protocol(f.protocol),
                target_host: f.target_host.clone(),
                target_port: u16::try_from(f.target_port).ok()?,
            })
        })
        .collect();
    LinkDocument::Egress(EgressDocument {
        forwards,
        resolve_interval_seconds: 30,
    })
    .to_json()
}

/// Every object of the egress link and its Service (build step, pure). The tunnel's UDP
/// goes to the VPN server's port, which only the Secret knows; DNS and the API server are
/// allowed in any case.
fn children(
    egw: &EgressGateway,
    p: &LinkParams<'_>,
    img: &LinkImage,
    endpoint_port: Option<u16>,
) -> LinkChildren {
    let ports: Vec<NamedPort> = egw
        .spec
        .forwards
        .iter()
        .map(|f| NamedPort {
            name: f.name.clone(),
            port: f.port,
            service_port: f.service_port.unwrap_or(f.port),
            protocol: f.protocol.as_str().to_owned(),
        })
        .collect();
    // Only pods of the owner's namespace (and those the spec names) may use the tunnel.
    let clients = Clients {
        namespaces: egw.spec.client_namespaces.clone(),
        ports: ports
            .iter()
            .map(|np| EgressPort {
                protocol: np.protocol.clone(),
                port: IntOrString::Int(np.port),
            })
            .collect(),
    };
    LinkChildren::build(
        p,
        img,
        LinkInputs {
            config_json: link_config(egw),
            tunnel: endpoint_port.map(|port| ("UDP", port)),
            egress_ports: vec![],
            key: None,
            service: Some((egw.name_any(), ports)),
            clients: Some(clients),
        },
    )
}

/// The Ready condition from the config check, the link pods and the last handshake the
/// link published (status step, pure).
fn ready_of(
    problem: Option<&(&'static str, String)>,
    pods: &[Pod],
    last_handshake: Option<&Time>,
) -> (bool, &'static str, String) {
    match (problem, pods.iter().find(|pod| pod_ready(pod))) {
        (Some((reason, message)), _) => (false, reason, message.clone()),
        (None, Some(pod)) => (
            true,
            reasons::READY,
            format!(
                "link pod {} has a recent handshake with the VPN server",
                pod.name_any()
            ),
        ),
        (None, None) if pods.is_empty() => (
            false,
            reasons::PROVISIONING,
            "waiting for the link pod".to_owned(),
        ),
        // The tunnel was up once: it went down, which is not provisioning.
        (None, None) if last_handshake.is_some() => (
            false,
            reasons::HANDSHAKE_STALE,
            format!(
                "the link's last handshake with the VPN server was at {}; the server is unreachable or no longer accepts the key",
                last_handshake.map(|t| t.0.to_string()).unwrap_or_default()
            ),
        ),
        (None, None) => (
            false,
            reasons::PROVISIONING,
            "the link pod has no recent handshake with the VPN server yet".to_owned(),
        ),
    }
}

/// The Lease's last-handshake annotation, if it holds a time.
fn last_handshake_of(lease: &Lease) -> Option<Time> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(wgnet_link::lease::LAST_HANDSHAKE_ANNOTATION)?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(Time)
}

async fn reconcile_egress<C: Cloud>(
    egw: &EgressGateway,
    ctx: &Context<C>,
) -> Result<Action, Error> {
    if egw.meta().deletion_timestamp.is_some() {
        // Everything it owns goes with it through owner references.
        return Ok(Action::await_change());
    }
    let ns = egw.namespace().unwrap_or_default();
    let c = &ctx.client;
    let secret = observe(c, &ns, egw).await?;
    let checked = check_config(&ns, egw, secret.as_deref());
    let endpoint_port = checked.as_ref().ok().copied().flatten();
    let problem = checked.err();
    let p = params(egw);
    let objects = children(egw, &p, &ctx.settings.link, endpoint_port);
    apply_children(c, &ctx.applied, &p, &objects).await?;

    let pods = Api::<Pod>::namespaced(c.clone(), &ns)
        .list(&ListParams::default().labels(&selector_string(&p.selector())))
        .await
        .map_err(|e| ObserveError::from(KubeCall::new("read link pods")(e)))?;
    // The link writes its last handshake on its Lease with every renewal.
    let handshake = Api::<Lease>::namespaced(c.clone(), &ns)
        .get_opt(&p.lease_name())
        .await
        .map_err(|e| ObserveError::from(KubeCall::new("read link Lease")(e)))?
        .and_then(|l| last_handshake_of(&l));
    let mut s = egw.status.clone().unwrap_or_default();
    if handshake.is_some() {
        s.last_handshake_time = handshake;
    }
    let (ok, reason, message) = ready_of(
        problem.as_ref(),
        &pods.items,
        s.last_handshake_time.as_ref(),
    );
    s.observed_generation = egw.metadata.generation;
    s.service_name = Some(egw.name_any());
    let was = egw.status.as_ref().and_then(|s| {
        condition(&s.conditions, conditions::READY).map(|(a, b)| (a.to_owned(), b.to_owned()))
    });
    set_condition(
        &mut s.conditions,
        conditions::READY,
        ok,
        reason,
        &message,
        egw.metadata.generation,
    );
    if Some(&s) != egw.status.as_ref() {
        write_status(&ctx.client, egw, |e| e.status = Some(s))
            .await
            .map_err(Error::Status)?;
    }
    if was.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
        != Some((if ok { "True" } else { "False" }, reason))
    {
        tracing::info!(egress_gateway = %egw.name_any(), namespace = %ns, ready = ok, reason, "Ready changed");
        publish(
            &ctx.recorder,
            egw,
            problem.is_some(),
            reason,
            "Reconcile",
            message,
        )
        .await;
    }
    Ok(Action::requeue(match (&problem, ok) {
        (Some(_), _) => CONFIG_RETRY,
        (None, false) => Duration::from_secs(2),
        (None, true) => ctx.settings.resync,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_handshake_comes_from_the_lease_annotation() {
        let lease = |a: Option<&str>| -> Lease {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "corp-link", "annotations": a.map(|v| serde_json::json!({
                    wgnet_link::lease::LAST_HANDSHAKE_ANNOTATION: v
                })).unwrap_or(serde_json::json!({}))}
            }))
            .expect("lease")
        };
        assert_eq!(
            last_handshake_of(&lease(Some("2026-11-30T21:00:05Z"))).map(|t| t.0.to_string()),
            Some("2026-11-30T21:00:05Z".to_owned())
        );
        assert_eq!(last_handshake_of(&lease(Some("yesterday"))), None);
        assert_eq!(last_handshake_of(&lease(None)), None);
    }

    fn egress() -> EgressGateway {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": "EgressGateway",
            "metadata": {"name": "corp", "namespace": "apps", "uid": "u1"},
            "spec": {
                "configSecretRef": {"name": "vpn", "key": "wg0.conf"},
                "forwards": [{"name": "db", "port": 5432, "targetHost": "10.20.0.5", "targetPort": 5432}]
            }
        }))
        .expect("egress gateway")
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            (*k).to_owned(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn the_config_check_names_what_is_missing_and_never_echoes_the_file() {
        let egw = egress();
        let e = check_config("apps", &egw, None).expect_err("no secret");
        assert_eq!(e.0, reasons::CONFIG_SECRET_NOT_FOUND);
        let e = check_config("apps", &egw, Some(&secret(&[("other", "x")]))).expect_err("no key");
        assert_eq!(e.0, reasons::CONFIG_KEY_NOT_FOUND);
        let bad = "[Interface]\nPrivateKey = s3cr3t-not-a-key\n";
        let e = check_config("apps", &egw, Some(&secret(&[("wg0.conf", bad)]))).expect_err("bad");
        assert_eq!(e.0, reasons::INVALID_CONFIG);
        assert!(!e.1.contains("s3cr3t"), "{}", e.1);
        for r in [
            e.0,
            reasons::CONFIG_SECRET_NOT_FOUND,
            reasons::CONFIG_KEY_NOT_FOUND,
        ] {
            assert!(reasons::ALL.contains(&r), "{r} is listed");
        }
    }

    /// Issue 19, item 8: the tunnel is its owner's. The link pod admits only pods of the
    /// EgressGateway's namespace (plus the ones the spec names, or all with `*`), and only
    /// on the forwarded ports.
    #[test]
    fn only_the_owners_namespace_may_use_the_tunnel_unless_widened() {
        let from = |egw: &EgressGateway| {
            let c = children(
                egw,
                &params(egw),
                &crate::controller::testing::link_image(),
                None,
            );
            let spec = c.network_policy.spec.expect("spec");
            assert!(spec.policy_types.iter().flatten().any(|t| t == "Ingress"));
            let rule = spec.ingress.expect("ingress")[0].clone();
            let ports: Vec<_> = rule
                .ports
                .iter()
                .flatten()
                .map(|p| p.port.clone())
                .collect();
            assert_eq!(ports, vec![Some(IntOrString::Int(5432))]);
            rule.from.expect("from")[0]
                .namespace_selector
                .clone()
                .expect("namespaces")
        };
        let mut egw = egress();
        let own = from(&egw);
        assert_eq!(
            own.match_expressions.expect("names")[0].values,
            Some(vec!["apps".to_owned()])
        );
        egw.spec.client_namespaces = vec!["team-b".into()];
        assert_eq!(
            from(&egw).match_expressions.expect("names")[0].values,
            Some(vec!["apps".to_owned(), "team-b".to_owned()])
        );
        egw.spec.client_namespaces = vec!["*".into()];
        let all = from(&egw);
        assert!(all.match_expressions.is_none() && all.match_labels.is_none());
    }

    #[test]
    fn the_service_comes_with_the_link_and_ready_follows_the_pod() {
        let egw = egress();
        let p = params(&egw);
        let c = children(
            &egw,
            &p,
            &crate::controller::testing::link_image(),
            Some(51820),
        );
        let svc = c.service.expect("service");
        assert_eq!(svc.metadata.name.as_deref(), Some("corp"));
        assert!(c.key.is_none() && c.pdb.is_none());
        let (ok, reason, _) = ready_of(None, &[], None);
        assert!(!ok && reason == reasons::PROVISIONING);
        let problem = (reasons::INVALID_CONFIG, "line 2".to_owned());
        assert_eq!(
            ready_of(Some(&problem), &[], None).1,
            reasons::INVALID_CONFIG
        );
        // An unready link whose tunnel had handshakes: the tunnel went down.
        let unready: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "corp-link-0"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        }))
        .expect("pod");
        let t = Time("2026-11-30T21:00:05Z".parse().expect("time"));
        let (ok, reason, message) = ready_of(None, std::slice::from_ref(&unready), Some(&t));
        assert!(!ok && reason == reasons::HANDSHAKE_STALE, "{message}");
        assert!(message.contains("2026-11-30T21:00:05Z"), "{message}");
        assert_eq!(
            ready_of(None, &[unready], None).1,
            reasons::PROVISIONING,
            "never up: still provisioning"
        );
    }
}
