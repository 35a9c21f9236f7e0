//! The EgressGateway controller: validates the user's wg-quick Secret with the link's own
//! parser, applies one egress link pod (config by API watch, so Secret edits reload in
//! place) and a ClusterIP Service named after the EgressGateway, and reports Ready from the
//! link pod's readiness (a recent handshake).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use wgnet_cloud::Cloud;

use super::{
    ApplyError, Context, StepError, apply, condition, owner_of_pod, pod_ready, publish,
    report_invalid, selector, set_condition, write_status,
};
use crate::api::EgressGateway;
use crate::api::conditions::{self, reasons};
use crate::children::{self, LinkParams, MANAGED_SELECTOR};

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
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    let pods = watcher::Config::default().labels(&format!(
        "{MANAGED_SELECTOR},{}=egress-link",
        children::COMPONENT_LABEL
    ));
    Controller::new(
        Api::<DeserializeGuard<EgressGateway>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .owns(Api::<Deployment>::all(client.clone()), managed.clone())
    .owns(Api::<Service>::all(client.clone()), managed)
    .watches(Api::<Pod>::all(client), pods, |pod: Pod| owner_of_pod(&pod))
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

fn error_policy<C: Cloud>(
    _: Arc<DeserializeGuard<EgressGateway>>,
    e: &StepError,
    ctx: Arc<Context<C>>,
) -> Action {
    ctx.metrics.error(KIND, e.step);
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile<C: Cloud>(
    obj: Arc<DeserializeGuard<EgressGateway>>,
    ctx: Arc<Context<C>>,
) -> Result<Action, StepError> {
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(egw) => reconcile_egress(egw, &ctx).await,
        Err(invalid) => report_invalid::<EgressGateway, C>(&ctx, invalid, "EgressGateway").await,
    };
    ctx.metrics.reconciled(KIND, started.elapsed());
    result
}

/// What the config Secret says: why it cannot be used, as (reason, message), or the VPN
/// server's UDP port. Never echoes the Secret's content.
async fn check_config(
    client: &kube::Client,
    ns: &str,
    egw: &EgressGateway,
) -> Result<Result<Option<u16>, (&'static str, String)>, StepError> {
    let r = &egw.spec.config_secret_ref;
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&r.name)
        .await
        .map_err(|e| StepError::kube("read config secret", e))?;
    let Some(secret) = secret else {
        return Ok(Err((
            "ConfigSecretNotFound",
            format!("Secret {:?} does not exist in namespace {ns:?}", r.name),
        )));
    };
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Ok(Err((
            "ConfigKeyNotFound",
            format!("Secret {:?} has no key {:?}", r.name, r.key),
        )));
    };
    Ok(match wgnet_link::wgquick::parse(&bytes.0) {
        Ok(wg) => Ok(wg.peer.endpoint.map(|(_, port)| port)),
        Err(e) => Err((
            "InvalidConfig",
            format!("Secret {:?} key {:?}: {e}", r.name, r.key),
        )),
    })
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

/// Applies the link's objects and the Service, in this order: identity and rights, config,
/// network policy, Deployment, then the Service that sends traffic to it (I/O).
async fn apply_children<C: Cloud>(
    ctx: &Context<C>,
    egw: &EgressGateway,
    p: &LinkParams<'_>,
    endpoint_port: Option<u16>,
) -> Result<(), StepError> {
    let ns = egw.namespace().unwrap_or_default();
    let name = egw.name_any();
    let c = &ctx.client;
    let k = |e: ApplyError| StepError::apply("ensure egress link", e);
    apply(c, &ns, &children::service_account(p))
        .await
        .map_err(k)?;
    apply(c, &ns, &children::role(p)).await.map_err(k)?;
    apply(c, &ns, &children::role_binding(p)).await.map_err(k)?;
    apply(c, &ns, &children::config_map(p, link_config(egw)))
        .await
        .map_err(k)?;
    // The tunnel's UDP goes to the VPN server's port, which only the Secret knows; DNS and
    // the API server are allowed in any case.
    apply(
        c,
        &ns,
        &children::network_policy(p, endpoint_port.map(|port| ("UDP", port)), &[]),
    )
    .await
    .map_err(k)?;
    apply(c, &ns, &children::deployment(p, &ctx.settings.link))
        .await
        .map_err(k)?;
    let ports: Vec<(String, i32, String)> = egw
        .spec
        .forwards
        .iter()
        .map(|f| (f.name.clone(), f.port, f.protocol.as_str().to_owned()))
        .collect();
    apply(c, &ns, &children::egress_service(p, &name, &ports))
        .await
        .map_err(k)?;

    Ok(())
}

async fn reconcile_egress<C: Cloud>(
    egw: &EgressGateway,
    ctx: &Context<C>,
) -> Result<Action, StepError> {
    if egw.meta().deletion_timestamp.is_some() {
        // Everything it owns goes with it through owner references.
        return Ok(Action::await_change());
    }
    let ns = egw.namespace().unwrap_or_default();
    let name = egw.name_any();
    let c = &ctx.client;
    let checked = check_config(c, &ns, egw).await?;
    let endpoint_port = checked.as_ref().ok().copied().flatten();
    let problem = checked.err();
    let p = params(egw);
    if let Err(e) = apply_children(ctx, egw, &p, endpoint_port).await {
        if e.reason != reasons::NAME_COLLISION {
            return Err(e);
        }
        // Nothing the operator does will change this: say so and wait for an edit.
        let mut s = egw.status.clone().unwrap_or_default();
        s.observed_generation = egw.metadata.generation;
        set_condition(
            &mut s.conditions,
            conditions::READY,
            false,
            e.reason,
            &e.to_string(),
            egw.metadata.generation,
        );
        if Some(&s) != egw.status.as_ref() {
            write_status(&ctx.client, egw, |x| x.status = Some(s)).await?;
            publish(
                &ctx.recorder,
                egw,
                true,
                e.reason,
                "Reconcile",
                e.to_string(),
            )
            .await;
        }
        return Ok(Action::requeue(ctx.settings.resync));
    }

    let pods = Api::<Pod>::namespaced(c.clone(), &ns)
        .list(&ListParams::default().labels(&selector(&p.selector())))
        .await
        .map_err(|e| StepError::kube("read link pods", e))?;
    let ready_pod = pods.items.iter().find(|pod| pod_ready(pod));
    let mut s = egw.status.clone().unwrap_or_default();
    s.observed_generation = egw.metadata.generation;
    s.service_name = Some(name.clone());
    let (ok, reason, message) = match (&problem, ready_pod) {
        (Some((reason, message)), _) => (false, (*reason).to_owned(), message.clone()),
        (None, Some(pod)) => (
            true,
            "Ready".to_owned(),
            format!(
                "link pod {} has a recent handshake with the VPN server",
                pod.name_any()
            ),
        ),
        (None, None) if pods.items.is_empty() => (
            false,
            "Provisioning".to_owned(),
            "waiting for the link pod".to_owned(),
        ),
        (None, None) => (
            false,
            "Provisioning".to_owned(),
            "the link pod has no recent handshake with the VPN server yet".to_owned(),
        ),
    };
    let was = egw.status.as_ref().and_then(|s| {
        condition(&s.conditions, conditions::READY).map(|(a, b)| (a.to_owned(), b.to_owned()))
    });
    set_condition(
        &mut s.conditions,
        conditions::READY,
        ok,
        &reason,
        &message,
        egw.metadata.generation,
    );
    if Some(&s) != egw.status.as_ref() {
        write_status(&ctx.client, egw, |e| e.status = Some(s)).await?;
    }
    if was.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
        != Some((if ok { "True" } else { "False" }, reason.as_str()))
    {
        publish(
            &ctx.recorder,
            egw,
            problem.is_some(),
            &reason,
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
