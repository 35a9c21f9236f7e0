//! The Gateway controller: observe (Services, Namespaces, the key Secret, the Lease and its
//! pod) → classify forwards → converge GCP through [`Cloud`] → apply the link's objects →
//! write status only when it changed. Deletion drains GCP before the finalizer goes; a
//! sweep removes GCP resources of this install whose Gateway no longer exists.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use wgnet_cloud::vm::{self, VmConfig};
use wgnet_cloud::{Cloud, Desired, GatewayId, PendingOp, Progress, Recorded, SecretBytes, Target};

use super::{
    ApplyError, Context, StepError, apply, condition, delete_quietly, owner_of_pod, pod_ready,
    publish, remove_condition, report_invalid, set_condition, write_status,
};
use crate::api::conditions::{self, messages, reasons};
use crate::api::{
    FINALIZER, ForwardStatus, Gateway, GatewayStatus, GcpStatus, PendingOperation, Protocol,
};
use crate::children::{self, EgressPort, FIELD_MANAGER, LinkParams, MANAGED_SELECTOR};
use crate::forwards::{self, Classified, Observed};
use crate::keys::KeySet;

const KIND: &str = "Gateway";
/// How long one reconcile waits on a pending GCP operation before writing status again.
const OPERATION_WAIT: Duration = Duration::from_secs(20);
/// Requeue while something else (the VM's boot, the link's handshake) is on its way.
const SETTLING: Duration = Duration::from_secs(2);

/// Name of the key Secret of Gateway `gw`.
pub fn key_secret_name(gw: &str) -> String {
    format!("{gw}-keys")
}

/// Name of the Secret holding only the link's private key: the link's Role names this one,
/// so a link pod can never read the VM's key from the full set.
pub fn link_key_secret_name(gw: &str) -> String {
    format!("{gw}-link-key")
}

/// The key of the link's private key in its Secret (the link's default `--secret-key`).
const LINK_KEY: &str = "private-key";

/// Name of the link's objects (ServiceAccount, Role, ConfigMap, Deployment, Lease, ...).
pub fn link_name(gw: &str) -> String {
    format!("{gw}-link")
}

/// Runs the Gateway controller until `shutdown` resolves.
pub async fn run<C: Cloud + 'static>(
    ctx: Arc<Context<C>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ctrl = Controller::new(
        Api::<DeserializeGuard<Gateway>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = ctrl.store();
    let (s1, s2) = (store.clone(), store);
    let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
    let link_pods = watcher::Config::default().labels(&format!(
        "{MANAGED_SELECTOR},{}=link",
        children::COMPONENT_LABEL
    ));
    ctrl.owns(Api::<Deployment>::all(client.clone()), managed.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
        .owns(Api::<Secret>::all(client.clone()), managed)
        .watches(Api::<Pod>::all(client.clone()), link_pods, |pod: Pod| {
            owner_of_pod(&pod)
        })
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |svc: Service| {
                let ns = svc.namespace().unwrap_or_default();
                referencing(&s1, |gw_ns, f| {
                    f.service == svc.name_any() && f.namespace.as_deref().unwrap_or(gw_ns) == ns
                })
            },
        )
        .watches(
            Api::<Namespace>::all(client),
            watcher::Config::default(),
            move |n: Namespace| {
                let name = n.name_any();
                referencing(&s2, |gw_ns, f| {
                    f.namespace
                        .as_deref()
                        .is_some_and(|t| t == name && t != gw_ns)
                })
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "gateway controller");
            }
            std::future::ready(())
        })
        .await;
}

/// Gateways in the cache with a forward for which `matches(gateway namespace, forward)`.
fn referencing(
    store: &Store<DeserializeGuard<Gateway>>,
    matches: impl Fn(&str, &crate::api::Forward) -> bool,
) -> Vec<ObjectRef<DeserializeGuard<Gateway>>> {
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|g| {
            let ns = g.namespace().unwrap_or_default();
            g.spec.forwards.iter().any(|f| matches(&ns, f))
        })
        .map(|g| ObjectRef::new(&g.name_any()).within(&g.namespace().unwrap_or_default()))
        .collect()
}

fn error_policy<C: Cloud>(
    _: Arc<DeserializeGuard<Gateway>>,
    e: &StepError,
    ctx: Arc<Context<C>>,
) -> Action {
    ctx.metrics.error(KIND, e.step);
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile<C: Cloud>(
    obj: Arc<DeserializeGuard<Gateway>>,
    ctx: Arc<Context<C>>,
) -> Result<Action, StepError> {
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(gw) => reconcile_gateway(gw, &ctx).await,
        Err(invalid) => report_invalid::<Gateway, C>(&ctx, invalid, "Gateway").await,
    };
    ctx.metrics.reconciled(KIND, started.elapsed());
    if let (Err(e), Ok(gw)) = (&result, &obj.0) {
        tracing::warn!(gateway = %gw.name_any(), namespace = ?gw.namespace(), error = %e, "reconcile failed");
        fail(&ctx, gw, e).await;
    }
    result
}

/// Sets `Ready=False/<the error's reason>` with the step's message and emits a Warning
/// event.
async fn fail<C: Cloud>(ctx: &Context<C>, gw: &Gateway, e: &StepError) {
    let mut status = gw.status.clone().unwrap_or_default();
    set_condition(
        &mut status.conditions,
        conditions::READY,
        false,
        e.reason,
        &e.to_string(),
        gw.metadata.generation,
    );
    if Some(&status) != gw.status.as_ref() {
        let _ = write_status(&ctx.client, gw, |g| g.status = Some(status)).await;
    }
    publish(
        &ctx.recorder,
        gw,
        true,
        e.reason,
        "Reconcile",
        e.to_string(),
    )
    .await;
}

fn target_of(gw: &Gateway, cluster: &str) -> Target {
    Target {
        id: GatewayId {
            cluster: cluster.to_owned(),
            namespace: gw.namespace().unwrap_or_default(),
            name: gw.name_any(),
            uid: gw.uid().unwrap_or_default(),
        },
        project: gw.spec.gcp.project_id.clone(),
        region: gw.spec.gcp.region.clone(),
        zone: gw.spec.gcp.zone.clone(),
    }
}

/// `status.gcp` as the cloud layer's record.
pub fn recorded_of(s: Option<&GcpStatus>) -> Recorded {
    let Some(s) = s else {
        return Recorded::default();
    };
    Recorded {
        network: s.network.clone(),
        firewall: s.firewall.clone(),
        address_name: s.address_name.clone(),
        address: None,
        instance: s.instance.clone(),
        service_account_email: s.service_account_email.clone(),
        secret: s.secret.clone(),
        secret_version: s.secret_version.clone(),
        key_version: s.key_version,
        iam_bound: s.iam_bound,
        attempt: s.attempt,
        pending: s
            .pending_operations
            .iter()
            .map(|p| PendingOp {
                resource: p.resource.clone(),
                name: p.name.clone(),
                scope: p.scope.clone(),
                description: p.description.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The cloud layer's record as `status.gcp`.
pub fn gcp_status_of(r: &Recorded, vm_state: Option<String>) -> GcpStatus {
    GcpStatus {
        network: r.network.clone(),
        firewall: r.firewall.clone(),
        address_name: r.address_name.clone(),
        instance: r.instance.clone(),
        service_account_email: r.service_account_email.clone(),
        secret: r.secret.clone(),
        key_version: r.key_version,
        vm_state,
        secret_version: r.secret_version.clone(),
        iam_bound: r.iam_bound,
        attempt: r.attempt,
        pending_operations: r
            .pending
            .iter()
            .map(|p| PendingOperation {
                resource: p.resource.clone(),
                name: p.name.clone(),
                scope: p.scope.clone(),
                description: (!p.description.is_empty()).then(|| p.description.clone()),
            })
            .collect(),
    }
}

async fn reconcile_gateway<C: Cloud>(gw: &Gateway, ctx: &Context<C>) -> Result<Action, StepError> {
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    if gw.meta().deletion_timestamp.is_some() {
        // Teardown runs at once and on its own schedule; an error hold no longer applies.
        ctx.holds.release(&format!("{ns}/{name}"));
        return teardown(gw, ctx).await;
    }
    if !gw.finalizers().iter().any(|f| f == FINALIZER) {
        let mut fins = gw.finalizers().to_vec();
        fins.push(FINALIZER.to_owned());
        let patch =
            json!({"metadata": {"finalizers": fins, "resourceVersion": gw.resource_version()}});
        Api::<Gateway>::namespaced(ctx.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| StepError::kube("add finalizer", e))?;
        // The patch is an event of its own; the next pass starts from the updated object.
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let allowed = &ctx.settings.allowed_projects;
    if !allowed.is_empty() && !allowed.contains(&gw.spec.gcp.project_id) {
        let mut status = gw.status.clone().unwrap_or_default();
        let msg = format!(
            "project {:?} is not in this operator's allowed projects ({}); nothing was created",
            gw.spec.gcp.project_id,
            allowed.join(", ")
        );
        set_condition(
            &mut status.conditions,
            conditions::READY,
            false,
            "ProjectNotAllowed",
            &msg,
            gw.metadata.generation,
        );
        status.observed_generation = gw.metadata.generation;
        if Some(&status) != gw.status.as_ref() {
            write_status(&ctx.client, gw, |g| g.status = Some(status)).await?;
            publish(
                &ctx.recorder,
                gw,
                true,
                "ProjectNotAllowed",
                "Validate",
                msg,
            )
            .await;
        }
        ctx.metrics
            .gateway_state(&format!("{ns}/{name}"), Some("ProjectNotAllowed"));
        return Ok(Action::await_change());
    }
    let hold_key = format!("{ns}/{name}");
    if let Some(left) = ctx.holds.remaining(&hold_key, gw.metadata.generation) {
        // The last pass met a GCP error; this trigger is most likely its own status write.
        return Ok(Action::requeue(left));
    }

    let observed = observe(&ctx.client, &ns, gw).await?;
    let classified = forwards::classify(&ns, &gw.spec.forwards, &observed);
    let valid: Vec<&forwards::Resolved> = classified
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .collect();

    let keys = ensure_keys(ctx, gw).await?;
    let target = target_of(gw, &ctx.settings.cluster_id);
    let desired = desired_of(gw, &target, &keys, &valid)?;
    let progress = ctx
        .cloud
        .ensure(
            &desired,
            &recorded_of(gw.status.as_ref().and_then(|s| s.gcp.as_ref())),
        )
        .await;
    let address = progress
        .address
        .clone()
        .or_else(|| gw.status.as_ref().and_then(|s| s.address.clone()));
    let report = if progress.vm_status.as_deref() == Some("RUNNING") {
        ctx.cloud.vm_report(&target).await.ok()
    } else {
        None
    };

    ensure_link(ctx, gw, &keys, address.as_deref(), &classified, &observed).await?;
    let dns = ensure_dns(ctx, gw, address.as_deref()).await?;
    let tunnel = link_active(&ctx.client, &ns, &link_name(&name)).await?;

    let status = status_of(
        gw,
        &classified,
        &progress,
        report.as_ref(),
        address,
        &tunnel,
        dns,
    );
    let was = gw.status.as_ref().and_then(|s| {
        condition(&s.conditions, conditions::READY).map(|(s, r)| (s.to_owned(), r.to_owned()))
    });
    let now =
        condition(&status.conditions, conditions::READY).map(|(s, r)| (s.to_owned(), r.to_owned()));
    let ready = now.as_ref().is_some_and(|(s, _)| s == "True");
    ctx.metrics.gateway_state(
        &format!("{ns}/{name}"),
        now.as_ref().map(|(_, r)| r.as_str()),
    );
    let pending = !progress.recorded.pending.is_empty();
    if Some(&status) != gw.status.as_ref() {
        write_status(&ctx.client, gw, |g| g.status = Some(status.clone())).await?;
    }
    if was != now
        && let Some((s, r)) = &now
    {
        let msg = status
            .conditions
            .iter()
            .find(|c| c.type_ == conditions::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(
            &ctx.recorder,
            gw,
            s != "True" && r != reasons::PROVISIONING,
            r,
            "Reconcile",
            msg,
        )
        .await;
    }
    for e in &progress.errors {
        tracing::warn!(gateway = %name, namespace = %ns, error = %e, "GCP");
    }
    if progress.errors.is_empty() {
        ctx.holds.release(&hold_key);
    }
    if pending && progress.errors.is_empty() {
        // Waiting here (bounded, server side) instead of polling makes each step follow
        // its operation's end by one round trip; status was written above.
        let _ = tokio::time::timeout(
            OPERATION_WAIT,
            ctx.cloud.wait_any(&target, &progress.recorded),
        )
        .await;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    let after = match progress.errors.first() {
        Some(e) => ctx
            .holds
            .hold(&hold_key, gw.metadata.generation, e.retry_after()),
        None if !ready => {
            let since = status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::READY)
                .map(|c| {
                    k8s_openapi::jiff::Timestamp::now().duration_since(c.last_transition_time.0)
                })
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            patience(since, ctx.settings.resync)
        }
        None => ctx.settings.resync,
    };
    Ok(Action::requeue(after))
}

/// How soon to look again at a Gateway that is not Ready and has been in its state for
/// `since`: every 2 s at first (a VM booting, a link handshaking), then a tenth of the time
/// waited, up to the resync period, so a Gateway stuck for an hour (a VM that never
/// reports, no link node) does not poll GCP every two seconds. Changes the operator
/// watches (Pods, Services, Namespaces, owned objects) still trigger a pass at once.
pub fn patience(since: Duration, resync: Duration) -> Duration {
    (since / 10).clamp(SETTLING, resync.max(SETTLING))
}

/// Namespaces and Services the forwards name (read directly, so a decision never rests on
/// a stale cache; the watches only say when to look again).
async fn observe(client: &kube::Client, gw_ns: &str, gw: &Gateway) -> Result<Observed, StepError> {
    let mut seen = Observed::default();
    let mut namespaces = BTreeSet::new();
    let mut services = BTreeSet::new();
    for f in &gw.spec.forwards {
        let ns = f.namespace.clone().unwrap_or_else(|| gw_ns.to_owned());
        if ns != gw_ns {
            namespaces.insert(ns.clone());
        }
        services.insert((ns, f.service.clone()));
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for n in namespaces {
        if let Some(obj) = ns_api
            .get_opt(&n)
            .await
            .map_err(|e| StepError::kube("classify forwards", e))?
        {
            seen.namespaces.insert(n, obj);
        }
    }
    for (ns, name) in services {
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        if let Some(obj) = api
            .get_opt(&name)
            .await
            .map_err(|e| StepError::kube("classify forwards", e))?
        {
            seen.services.insert((ns, name), obj);
        }
    }
    Ok(seen)
}

/// Reads the key Secret, or creates it with a fresh set. A lost Secret gets a new set with
/// the next version, so the VM (through Secret Manager and its metadata) and the link
/// switch together; an incomplete one is an error, never regenerated by halves.
async fn ensure_keys<C: Cloud>(ctx: &Context<C>, gw: &Gateway) -> Result<KeySet, StepError> {
    let step = "ensure key secrets";
    let ns = gw.namespace().unwrap_or_default();
    let name = key_secret_name(&gw.name_any());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let read = |s: &Secret| -> Result<KeySet, StepError> {
        let data: BTreeMap<String, Vec<u8>> = s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        KeySet::from_data(&data).map_err(|message| StepError::new(step, message))
    };
    if let Some(s) = api
        .get_opt(&name)
        .await
        .map_err(|e| StepError::kube(step, e))?
    {
        return read(&s);
    }
    let version = gw
        .status
        .as_ref()
        .and_then(|s| s.gcp.as_ref())
        .and_then(|g| g.key_version)
        .map_or(1, |v| v + 1);
    let set = KeySet::generate(version).map_err(|message| StepError::new(step, message))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", "wireguard-gateway-operator"),
                    (children::INSTANCE_LABEL, gw.name_any().as_str()),
                    (children::COMPONENT_LABEL, "keys"),
                    (children::MANAGED_BY_LABEL, children::MANAGED_BY),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ),
            owner_references: gw.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            set.to_data()
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            if version > 1 {
                publish(
                    &ctx.recorder,
                    gw,
                    true,
                    "KeysReplaced",
                    "Reconcile",
                    format!("the key Secret {name} was missing: a new key set (version {version}) was generated; the VM and the link switch to it together"),
                )
                .await;
            }
            Ok(set)
        }
        // Another pass created it first: use that one, never ours.
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            let s = api.get(&name).await.map_err(|e| StepError::kube(step, e))?;
            read(&s)
        }
        Err(e) => Err(StepError::kube(step, e)),
    }
}

fn desired_of(
    gw: &Gateway,
    target: &Target,
    keys: &KeySet,
    valid: &[&forwards::Resolved],
) -> Result<Desired, StepError> {
    let step = "render desired state";
    let wg = &gw.spec.wireguard;
    let bad = |what: &str| StepError::new(step, format!("spec.wireguard.{what} is not valid"));
    let listen_port = u16::try_from(wg.listen_port).map_err(|_| bad("listenPort"))?;
    let cfg = VmConfig {
        listen_port,
        mtu: u16::try_from(wg.mtu).map_err(|_| bad("mtu"))?,
        gateway_address: wg
            .gateway_address
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("gatewayAddress"))?,
        link_address: wg
            .link_address
            .parse::<Ipv4Addr>()
            .map_err(|_| bad("linkAddress"))?,
        subnet: wg.subnet.clone(),
        link_public_key: keys.link.public.clone(),
        key_version: keys.version,
    };
    let mut ports: Vec<(u16, wgnet_cloud::Protocol)> = valid
        .iter()
        .map(|r| {
            let p = match r.protocol {
                Protocol::Tcp => wgnet_cloud::Protocol::Tcp,
                Protocol::Udp => wgnet_cloud::Protocol::Udp,
            };
            (r.port, p)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(Desired {
        target: target.clone(),
        machine_type: gw.spec.gcp.machine_type.clone(),
        image: gw.spec.gcp.image.clone(),
        disk_size_gb: gw.spec.gcp.disk_size_gb,
        reserved_ip: gw.spec.gcp.reserved_ip,
        spot: gw.spec.gcp.spot,
        listen_port,
        ports,
        source_ranges: gw.spec.source_ranges.clone(),
        metadata: vm::metadata(target, &cfg),
        vm_key: SecretBytes::new(keys.vm.private.expose().as_bytes().to_vec()),
        key_version: keys.version,
    })
}

/// The link's `config.json`: the VM as its one peer, the resolved forwards, and the
/// Gateway's reconcileInterval as the link's resync period. Pure.
pub fn link_config(
    gw: &Gateway,
    keys: &KeySet,
    address: Option<&str>,
    classified: &[Classified],
) -> String {
    use wgnet_link::config::{IngressDocument, IngressForward, LinkDocument, PeerDocument};
    let wg = &gw.spec.wireguard;
    let prefix = wg.subnet.split_once('/').map_or("32", |(_, p)| p);
    let forwards = classified
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|r| IngressForward {
            port: r.port,
            protocol: link_protocol(r.protocol),
            cluster_ip: r.cluster_ip,
            target_port: r.target_port,
        })
        .collect();
    LinkDocument::Ingress(IngressDocument {
        address: format!("{}/{prefix}", wg.link_address),
        // The schema bounds mtu (1280..1500) and keepalive (1..3600); the fallbacks are
        // only for objects admitted under an older CRD.
        mtu: u16::try_from(wg.mtu).unwrap_or(1380),
        peer: PeerDocument {
            // Empty until the address is known: the link waits.
            endpoint: address
                .map(|a| format!("{a}:{}", wg.listen_port))
                .unwrap_or_default(),
            public_key: keys.vm.public.clone(),
            persistent_keepalive: u16::try_from(wg.keepalive).unwrap_or(25),
            allowed_ips: vec![wg.subnet.clone()],
        },
        forwards,
        resync_seconds: wg.reconcile_interval_seconds(),
    })
    .to_json()
}

/// The link crate's spelling of a protocol.
pub(crate) fn link_protocol(p: crate::api::Protocol) -> wgnet_link::net::Protocol {
    match p {
        crate::api::Protocol::Tcp => wgnet_link::net::Protocol::Tcp,
        crate::api::Protocol::Udp => wgnet_link::net::Protocol::Udp,
    }
}

fn link_params(gw: &Gateway) -> LinkParams<'_> {
    let name = gw.meta().name.as_deref().unwrap_or_default();
    LinkParams {
        namespace: gw.meta().namespace.as_deref().unwrap_or_default(),
        name: link_name(name),
        owner: name,
        component: "link",
        owner_ref: gw.controller_owner_ref(&()).unwrap_or_default(),
        secret: (link_key_secret_name(name), LINK_KEY.to_owned()),
        replicas: gw.spec.link.replicas.max(1),
        resources: gw.spec.link.resources.clone(),
        node_selector: gw.spec.link.node_selector.clone(),
        tolerations: gw.spec.link.tolerations.clone(),
    }
}

async fn ensure_link<C: Cloud>(
    ctx: &Context<C>,
    gw: &Gateway,
    keys: &KeySet,
    address: Option<&str>,
    classified: &[Classified],
    observed: &Observed,
) -> Result<(), StepError> {
    let step = "ensure link";
    let k = |e: ApplyError| StepError::apply(step, e);
    let p = link_params(gw);
    let c = &ctx.client;
    let ns = p.namespace;
    apply(c, ns, &children::service_account(&p))
        .await
        .map_err(k)?;
    apply(c, ns, &children::role(&p)).await.map_err(k)?;
    apply(c, ns, &children::role_binding(&p)).await.map_err(k)?;
    apply(
        c,
        ns,
        &children::secret(&p, &p.secret.0, &p.secret.1, keys.link.private.expose()),
    )
    .await
    .map_err(k)?;
    apply(
        c,
        ns,
        &children::config_map(&p, link_config(gw, keys, address, classified)),
    )
    .await
    .map_err(k)?;
    let mut ports = Vec::new();
    for cl in classified {
        let Ok(r) = &cl.result else { continue };
        let proto = r.protocol.as_str().to_owned();
        ports.push(EgressPort {
            protocol: proto.clone(),
            port: IntOrString::Int(i32::from(r.target_port)),
        });
        // After Service DNAT the destination port is the endpoint's: allow it as well.
        let svc = observed
            .services
            .get(&(cl.namespace.clone(), cl.forward.service.clone()));
        let sp = svc
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| {
                ps.iter().find(|sp| {
                    sp.port == i32::from(r.target_port)
                        && sp.protocol.as_deref().unwrap_or("TCP") == proto
                })
            });
        if let Some(tp) = sp.and_then(|sp| sp.target_port.clone()) {
            ports.push(EgressPort {
                protocol: proto,
                port: tp,
            });
        }
    }
    let listen = u16::try_from(gw.spec.wireguard.listen_port).unwrap_or(51820);
    apply(
        c,
        ns,
        &children::network_policy(&p, Some(("UDP", listen)), &ports),
    )
    .await
    .map_err(k)?;
    apply(c, ns, &children::deployment(&p, &ctx.settings.link))
        .await
        .map_err(k)?;
    if p.replicas > 1 {
        apply(c, ns, &children::pdb(&p)).await.map_err(k)?;
    } else {
        delete_quietly::<PodDisruptionBudget>(c, ns, &p.name)
            .await
            .map_err(|e| k(e.into()))?;
    }
    Ok(())
}

/// The DNSEndpoint for `spec.dnsHostnames`: `None` when none are asked for (any old record
/// is deleted), otherwise whether it is published and why not.
async fn ensure_dns<C: Cloud>(
    ctx: &Context<C>,
    gw: &Gateway,
    address: Option<&str>,
) -> Result<Option<(bool, String, String)>, StepError> {
    let gvk = GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "dnsendpoints");
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    // A group the API server does not serve answers a bare "404 page not found", not a
    // NotFound Status, so the code decides, not the reason.
    let missing = |s: &kube::core::Status| s.is_not_found() || s.code == 404;
    if gw.spec.dns_hostnames.is_empty() {
        // Only a Gateway that once asked for DNS (it carries the condition) can have a
        // record to delete; others skip the call, so installs without DNS permissions
        // (the chart's dns.enabled=false) never see a 403 here.
        let had_dns = gw
            .status
            .as_ref()
            .is_some_and(|s| condition(&s.conditions, conditions::DNS_READY).is_some());
        if !had_dns {
            return Ok(None);
        }
        return match api.delete(&name, &Default::default()).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if missing(&s) || s.is_forbidden() => Ok(None),
            Err(e) => Err(StepError::kube("delete dns endpoint", e)),
        };
    }
    let Some(address) = address else {
        return Ok(Some((
            false,
            reasons::PROVISIONING.into(),
            "waiting for the gateway address".into(),
        )));
    };
    let endpoints: Vec<_> = gw
        .spec
        .dns_hostnames
        .iter()
        .map(|h| json!({"dnsName": h, "recordType": "A", "targets": [address]}))
        .collect();
    let owner = gw.controller_owner_ref(&());
    let obj = json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/name": "wireguard-gateway-operator",
                children::INSTANCE_LABEL: name,
                children::COMPONENT_LABEL: "dns",
                children::MANAGED_BY_LABEL: children::MANAGED_BY,
            },
            "ownerReferences": owner.map(|o| vec![o]).unwrap_or_default(),
        },
        "spec": {"endpoints": endpoints},
    });
    match api
        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
    {
        Ok(_) => Ok(Some((true, "Published".into(), format!("DNSEndpoint {name} publishes {} hostname(s)", gw.spec.dns_hostnames.len())))),
        Err(kube::Error::Api(s)) if missing(&s) => Ok(Some((
            false,
            "DNSEndpointCRDMissing".into(),
            "external-dns's DNSEndpoint CRD (externaldns.k8s.io/v1alpha1) is not installed, so spec.dnsHostnames are not published".into(),
        ))),
        Err(kube::Error::Api(s)) if s.is_forbidden() => Ok(Some((
            false,
            "DNSEndpointForbidden".into(),
            "the operator may not write DNSEndpoints (externaldns.k8s.io); install the chart with dns.enabled=true to publish spec.dnsHostnames".into(),
        ))),
        Err(e) => Ok(Some((false, "DNSEndpointFailed".into(), StepError::kube("ensure dns endpoint", e).to_string()))),
    }
}

/// What the operator knows of the link's tunnel: whether the Lease holder's pod is Ready,
/// the `TunnelReady` reason, and a sentence saying so.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tunnel {
    ready: bool,
    reason: &'static str,
    message: String,
}

impl Tunnel {
    fn waiting(message: String) -> Self {
        Self {
            ready: false,
            reason: reasons::PROVISIONING,
            message,
        }
    }
}

/// Why the link Deployment's pods cannot be created, from its `ReplicaFailure` condition
/// (the ReplicaSet controller's FailedCreate, for example a PodSecurity refusal).
fn pods_rejected(deployment: &Deployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// Reads the link's Lease, its holder's pod and the link Deployment (I/O).
async fn link_active(client: &kube::Client, ns: &str, link: &str) -> Result<Tunnel, StepError> {
    let step = "read link activity";
    let holder = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(link)
        .await
        .map_err(|e| StepError::kube(step, e))?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty());
    let Some(holder) = holder else {
        let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(link)
            .await
            .map_err(|e| StepError::kube(step, e))?;
        if let Some(why) = deployment.as_ref().and_then(pods_rejected) {
            return Ok(Tunnel {
                ready: false,
                reason: reasons::LINK_PODS_REJECTED,
                message: format!("the cluster refuses to create the link's pods: {why}"),
            });
        }
        return Ok(Tunnel::waiting(
            "no link replica holds the lease yet".into(),
        ));
    };
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(&holder)
        .await
        .map_err(|e| StepError::kube(step, e))?;
    let ready = pod.as_ref().is_some_and(pod_ready);
    Ok(match (pod.is_some(), ready) {
        (true, true) => Tunnel {
            ready: true,
            reason: reasons::READY,
            message: format!("link pod {holder} holds the lease and has a recent handshake"),
        },
        (true, false) => Tunnel::waiting(format!(
            "link pod {holder} holds the lease but is not ready (no recent handshake with the VM)"
        )),
        (false, _) => Tunnel::waiting(format!("the lease holder {holder} has no pod")),
    })
}

fn status_of(
    gw: &Gateway,
    classified: &[Classified],
    progress: &Progress,
    report: Option<&BTreeMap<String, String>>,
    address: Option<String>,
    tunnel: &Tunnel,
    dns: Option<(bool, String, String)>,
) -> GatewayStatus {
    let generation = gw.metadata.generation;
    let mut s = gw.status.clone().unwrap_or_default();
    s.observed_generation = generation;
    s.address = address.clone();
    let vm_state = report.and_then(|r| r.get("state").cloned());
    s.gcp = Some(gcp_status_of(&progress.recorded, vm_state.clone()));
    s.forwards = classified
        .iter()
        .map(|c| ForwardStatus {
            port: c.forward.port,
            protocol: c.forward.protocol,
            active: c.result.is_ok(),
            reason: c.result.as_ref().err().map(|i| i.reason.to_owned()),
            message: c.result.as_ref().err().map(|i| i.message.clone()),
            cluster_ip: c.result.as_ref().ok().map(|r| r.cluster_ip.to_string()),
        })
        .collect();
    let active = classified.iter().filter(|c| c.result.is_ok()).count();
    s.forwards_ready = Some(format!("{active}/{}", classified.len()));

    let vm_ready = vm_state.as_deref() == Some("ready");
    let cloud = if let Some(e) = progress.errors.first() {
        (false, e.reason_code().to_owned(), e.to_string())
    } else if progress.ready && vm_ready {
        (
            true,
            reasons::READY.to_owned(),
            "every GCP resource exists and the VM reports ready".to_owned(),
        )
    } else if progress.ready {
        let err = report
            .and_then(|r| r.get("error"))
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let state = vm_state.as_deref().unwrap_or("nothing yet");
        (
            false,
            reasons::PROVISIONING.to_owned(),
            format!("the VM is running and reports {state}{err}"),
        )
    } else {
        (
            false,
            reasons::PROVISIONING.to_owned(),
            format!("waiting for {}", progress.waiting.join("; ")),
        )
    };
    set_condition(
        &mut s.conditions,
        conditions::CLOUD_READY,
        cloud.0,
        &cloud.1,
        &cloud.2,
        generation,
    );
    set_condition(
        &mut s.conditions,
        conditions::TUNNEL_READY,
        tunnel.ready,
        tunnel.reason,
        &tunnel.message,
        generation,
    );
    match dns {
        Some((ok, reason, msg)) => set_condition(
            &mut s.conditions,
            conditions::DNS_READY,
            ok,
            &reason,
            &msg,
            generation,
        ),
        None => remove_condition(&mut s.conditions, conditions::DNS_READY),
    }
    let (ok, reason, message) = if let Some((reason, message)) = forwards::summary(classified) {
        (false, reason.to_owned(), message)
    } else if let Some(e) = progress.errors.first() {
        (
            false,
            reasons::RECONCILE_FAILED.to_owned(),
            format!("ensure cloud resources: {e}"),
        )
    } else if tunnel.reason == reasons::LINK_PODS_REJECTED {
        // Not "Provisioning": nothing will change until an admin or the namespace owner
        // acts on the refusal the message quotes.
        (false, tunnel.reason.to_owned(), tunnel.message.clone())
    } else if address.is_some() && cloud.0 && tunnel.ready {
        (true, reasons::READY.to_owned(), messages::READY.to_owned())
    } else {
        (
            false,
            reasons::PROVISIONING.to_owned(),
            messages::PROVISIONING.to_owned(),
        )
    };
    set_condition(
        &mut s.conditions,
        conditions::READY,
        ok,
        &reason,
        &message,
        generation,
    );
    s
}

/// The annotation that lets an admin release a Gateway whose GCP resources cannot be
/// deleted (a project the operator can no longer reach): the finalizer goes, and a Warning
/// Event names what was left in GCP.
pub const ABANDON_ANNOTATION: &str = "wgnet.dev/abandon-cloud-resources";

/// Removes the finalizer (I/O) and publishes why.
async fn release<C: Cloud>(
    gw: &Gateway,
    ctx: &Context<C>,
    warning: bool,
    reason: &str,
    note: String,
) -> Result<Action, StepError> {
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let fins: Vec<&String> = gw.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": fins, "resourceVersion": gw.resource_version()}});
    Api::<Gateway>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| StepError::kube("remove finalizer", e))?;
    ctx.metrics.gateway_state(&format!("{ns}/{name}"), None);
    tracing::info!(gateway = %format!("{ns}/{name}"), reason, "Released");
    publish(&ctx.recorder, gw, warning, reason, "Teardown", note).await;
    Ok(Action::await_change())
}

async fn teardown<C: Cloud>(gw: &Gateway, ctx: &Context<C>) -> Result<Action, StepError> {
    let ns = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    if !gw.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let target = target_of(gw, &ctx.settings.cluster_id);
    let recorded = recorded_of(gw.status.as_ref().and_then(|s| s.gcp.as_ref()));
    let project = &gw.spec.gcp.project_id;
    if gw
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        let left = recorded.created();
        let left = if left.is_empty() {
            "nothing recorded".to_owned()
        } else {
            left.join(", ")
        };
        return release(
            gw,
            ctx,
            true,
            "Abandoned",
            format!(
                "{ABANDON_ANNOTATION}=true: released without deleting; possibly left in GCP project {project}: {left}"
            ),
        )
        .await;
    }
    // A project this operator may not use was never touched: nothing to delete.
    let allowed = &ctx.settings.allowed_projects;
    if recorded.is_empty() && !allowed.is_empty() && !allowed.contains(project) {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            format!("project {project} is not allowed; nothing was created in GCP"),
        )
        .await;
    }
    let p = ctx.cloud.delete(&target, &recorded).await;
    if p.done {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            "every GCP resource of the gateway is deleted".into(),
        )
        .await;
    }
    // Nothing was ever created and the project answers only with a denial: waiting would
    // wedge the deletion forever, and there is nothing to leak.
    if recorded.is_empty()
        && !p.errors.is_empty()
        && p.errors.iter().all(|e| e.is_permission_denied())
    {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            format!(
                "nothing of the gateway was ever created in GCP, and project {project} denies access: {}",
                p.errors[0]
            ),
        )
        .await;
    }
    let mut s = gw.status.clone().unwrap_or_default();
    s.gcp = Some(gcp_status_of(&p.recorded, None));
    let message = match p.errors.first() {
        Some(e) if e.is_permission_denied() => format!(
            "deleting GCP resources failed and will be retried: {e}; to release the Gateway without deleting them, annotate it {ABANDON_ANNOTATION}=true"
        ),
        Some(e) => format!("deleting GCP resources failed and will be retried: {e}"),
        None => format!(
            "waiting for GCP resources to be deleted: {}",
            p.waiting.join("; ")
        ),
    };
    set_condition(
        &mut s.conditions,
        conditions::READY,
        false,
        reasons::TERMINATING,
        &message,
        gw.metadata.generation,
    );
    if Some(&s) != gw.status.as_ref() {
        write_status(&ctx.client, gw, |g| g.status = Some(s)).await?;
    }
    ctx.metrics
        .gateway_state(&format!("{ns}/{name}"), Some(reasons::TERMINATING));
    if let Some(e) = p.errors.first() {
        return Ok(Action::requeue(e.retry_after()));
    }
    if !p.recorded.pending.is_empty() {
        let _ =
            tokio::time::timeout(OPERATION_WAIT, ctx.cloud.wait_any(&target, &p.recorded)).await;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    Ok(Action::requeue(SETTLING))
}

/// Every resync: deletes GCP resources carrying this install's and cluster's labels whose
/// Gateway (by uid) no longer exists. Nothing without those labels is ever touched.
pub async fn sweep_loop<C: Cloud>(ctx: Arc<Context<C>>, shutdown: impl Future<Output = ()> + Send) {
    let sweep = async {
        loop {
            tokio::time::sleep(ctx.settings.resync).await;
            match sweep_once(&ctx).await {
                Ok(n) => ctx.metrics.swept(n),
                Err(e) => tracing::warn!(error = %e, "orphan sweep"),
            }
        }
    };
    tokio::select! {
        () = sweep => {}
        () = shutdown => {}
    }
}

/// One orphan sweep; returns how many gateways' resources it deleted.
pub async fn sweep_once<C: Cloud>(ctx: &Context<C>) -> Result<usize, StepError> {
    let gws = Api::<DeserializeGuard<Gateway>>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| StepError::kube("orphan sweep", e))?;
    let mut live = BTreeSet::new();
    let mut projects: BTreeSet<String> = ctx.settings.sweep_projects.iter().cloned().collect();
    for g in &gws.items {
        if let Some(uid) = g.meta().uid.clone() {
            live.insert(uid);
        }
        if let Ok(g) = &g.0 {
            projects.insert(g.spec.gcp.project_id.clone());
        }
    }
    let mut deleted = 0;
    for project in projects {
        let owned = ctx
            .cloud
            .list_owned(&project)
            .await
            .map_err(|e| StepError::new("orphan sweep", e.to_string()))?;
        for o in owned.into_iter().filter(|o| !live.contains(&o.target.uid)) {
            let t = Target {
                id: GatewayId {
                    cluster: ctx.settings.cluster_id.clone(),
                    namespace: o.target.namespace.clone(),
                    name: o.target.name.clone(),
                    uid: o.target.uid.clone(),
                },
                project: o.target.project.clone(),
                region: o.target.region.clone(),
                zone: o.target.zone.clone(),
            };
            tracing::info!(namespace = %t.id.namespace, name = %t.id.name, project = %t.project, kinds = ?o.kinds, "deleting orphaned GCP resources");
            let mut rec = Recorded::default();
            for _ in 0..30 {
                let p = ctx.cloud.delete(&t, &rec).await;
                rec = p.recorded;
                if p.done {
                    deleted += 1;
                    break;
                }
                if !p.errors.is_empty() {
                    tracing::warn!(errors = ?p.errors, "orphan sweep: will retry next time");
                    break;
                }
                if rec.pending.is_empty() {
                    tokio::time::sleep(SETTLING).await;
                } else {
                    let _ =
                        tokio::time::timeout(OPERATION_WAIT, ctx.cloud.wait_any(&t, &rec)).await;
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_grows_with_the_wait_up_to_the_resync() {
        let resync = Duration::from_secs(300);
        assert_eq!(patience(Duration::ZERO, resync), SETTLING);
        assert_eq!(patience(Duration::from_secs(15), resync), SETTLING);
        assert_eq!(
            patience(Duration::from_secs(300), resync),
            Duration::from_secs(30)
        );
        assert_eq!(patience(Duration::from_secs(36_000), resync), resync);
        assert_eq!(
            patience(Duration::from_secs(36_000), Duration::from_secs(1)),
            SETTLING
        );
    }

    /// The document the operator writes is one the link's own parser accepts, with the
    /// forwards, the VM as peer and the Gateway's reconcileInterval as the resync period.
    #[test]
    fn link_config_is_what_the_link_reads() {
        use wgnet_link::config::{self as link, LinkConfig, Raw};
        let gw: Gateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "apps"},
            "spec": {
                "gcp": {"projectID": "p", "region": "us-central1", "zone": "us-central1-a"},
                "wireguard": {"reconcileInterval": "1m30s", "keepalive": 7},
                "forwards": [{"port": 8080, "service": "web", "targetPort": 80}]
            }
        }))
        .expect("gateway");
        let keys = KeySet::generate(1).expect("keys");
        let classified = vec![Classified {
            forward: gw.spec.forwards[0].clone(),
            namespace: "apps".into(),
            result: Ok(crate::forwards::Resolved {
                port: 8080,
                protocol: crate::api::Protocol::Tcp,
                cluster_ip: std::net::Ipv4Addr::new(10, 96, 0, 10),
                target_port: 80,
            }),
        }];
        let json = link_config(&gw, &keys, Some("203.0.113.7"), &classified);
        let raw = Raw {
            config: Some(json.into_bytes()),
            secret: Some(keys.link.private.expose().as_bytes().to_vec()),
        };
        let LinkConfig::Ingress(i) = link::parse(&raw).expect("the link accepts it") else {
            panic!("ingress expected")
        };
        assert_eq!(i.resync, Duration::from_secs(90));
        assert_eq!(i.address.to_string(), "10.99.0.2/29");
        assert_eq!(i.forwards.len(), 1);
        assert_eq!(
            i.forwards[0].cluster_ip,
            std::net::Ipv4Addr::new(10, 96, 0, 10)
        );
        let peer = i.peer.expect("the VM is the peer");
        assert_eq!(peer.endpoint, Some(("203.0.113.7".into(), 51820)));
        assert_eq!(peer.keepalive, Some(7));
        assert_eq!(peer.public_key.to_base64(), keys.vm.public);
    }

    #[test]
    fn status_gcp_round_trips_the_cloud_record() {
        let r = Recorded {
            network: Some("wgnet".into()),
            firewall: Some("wg-a".into()),
            address_name: Some("wg-a".into()),
            address: Some("203.0.113.7".into()),
            instance: Some("wg-a".into()),
            service_account_email: Some("wg-a@p.iam.gserviceaccount.com".into()),
            secret: Some("wg-a".into()),
            secret_version: Some("projects/1/secrets/wg-a/versions/2".into()),
            key_version: Some(2),
            iam_bound: true,
            attempt: 4,
            pending: vec![PendingOp {
                resource: "instance".into(),
                name: "op-1".into(),
                scope: "zones/us-central1-a".into(),
                description: "insert instance wg-a".into(),
            }],
        };
        let back = recorded_of(Some(&gcp_status_of(&r, Some("ready".into()))));
        // The address is kept in status.address, not in status.gcp.
        assert_eq!(back, Recorded { address: None, ..r });
    }
}
