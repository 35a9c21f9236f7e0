//! The LoadBalancer controller: a Service of `type: LoadBalancer` with
//! `spec.loadBalancerClass: wgnet.dev/gateway` (or with no class, when the admin opts in) is
//! served by a Gateway the operator manages: one per Service, named after it, owned by it,
//! forwarding its ports. Everything a Gateway does (GCP, drift repair, conditions, metrics,
//! cleanup) is the Gateway controller's; this one translates in both directions:
//!
//! - the Service's ports, `loadBalancerSourceRanges` and placement annotations into the
//!   Gateway's spec ([`gateway_for`], pure);
//! - the Gateway's address and `Ready` condition into the Service's `status.loadBalancer`
//!   (`ipMode: Proxy`) and a `wgnet.dev/GatewayReady` condition ([`published`],
//!   [`condition_of`], pure), with Events on the Service.
//!
//! A finalizer on the Service holds it until its Gateway, and with it every GCP resource,
//! is gone: on deletion, and when the Service stops asking (its type changes).
//!
//! I/O: the Kubernetes API only (Services and their status, Gateways, Events).

use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, PortStatus, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use wgnet_cloud::Cloud;

use super::error::{ChildrenError, FIRST_RETRY, KubeCall, backoff};
use super::{Context, apply, publish, set_condition};
use crate::api::conditions::reasons;
use crate::api::gateway::{MAX_FORWARDS, MAX_NAME_LENGTH};
use crate::api::{
    Forward, Gateway, GatewaySpec, GcpSpec, LinkSpec, Protocol, Provider, WireguardSpec, conditions,
};
use crate::children::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};

const KIND: &str = "Service";
/// The `spec.loadBalancerClass` this operator serves.
pub const CLASS: &str = "wgnet.dev/gateway";
/// Held on a served Service until its Gateway is gone.
pub const FINALIZER: &str = "wgnet.dev/loadbalancer";
/// The Service condition mirroring its Gateway's `Ready`.
pub const CONDITION: &str = "wgnet.dev/GatewayReady";
/// Label on a Gateway naming the Service it serves.
pub const SERVICE_LABEL: &str = "wgnet.dev/service";
/// Per-Service placement: the GCP project.
pub const PROJECT_ANNOTATION: &str = "wgnet.dev/project";
/// Per-Service placement: the region of the address.
pub const REGION_ANNOTATION: &str = "wgnet.dev/region";
/// Per-Service placement: the VM's zone.
pub const ZONE_ANNOTATION: &str = "wgnet.dev/zone";
/// Per-Service placement: the VM's machine type.
pub const MACHINE_TYPE_ANNOTATION: &str = "wgnet.dev/machine-type";
/// `v2`: every TCP port of the Service is relayed behind a PROXY protocol v2 header (the
/// client's address for ingress-nginx, HAProxy, Traefik behind this Service).
pub const PROXY_PROTOCOL_ANNOTATION: &str = "wgnet.dev/proxy-protocol";
/// How often a Service whose Gateway is being deleted is looked at again (its removal also
/// wakes this controller through the Gateway watch).
const RELEASE_POLL: Duration = Duration::from_secs(2);
/// The WireGuard port a Gateway listens on unless one of the Service's UDP ports takes it.
const WIREGUARD_PORT: i32 = 51820;

/// What the admin configures for LoadBalancer Services (chart values `loadBalancer.*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadBalancerSettings {
    /// Serve LoadBalancer Services that name no class too. Off by default: claiming every
    /// LoadBalancer Service fights the cluster's own load balancer controller.
    pub claim_unclassed: bool,
    /// Default GCP project.
    pub project: Option<String>,
    /// Default region.
    pub region: Option<String>,
    /// Default zone (used when it lies in the chosen region).
    pub zone: Option<String>,
    /// Default machine type (the Gateway's own default when unset).
    pub machine_type: Option<String>,
}

/// Why a claimed Service gets no Gateway. The messages name the field and the way out;
/// they quote only ports and counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unservable {
    /// No project from the annotation or the defaults.
    #[error(
        "no GCP project: set the annotation {PROJECT_ANNOTATION} on the Service, or the operator's default (chart value loadBalancer.project)"
    )]
    NoProject,
    /// No region from the annotations or the defaults.
    #[error(
        "no GCP region: set the annotation {REGION_ANNOTATION} or {ZONE_ANNOTATION} on the Service, or the operator's default (chart value loadBalancer.region)"
    )]
    NoRegion,
    /// A port a Gateway cannot forward.
    #[error(
        "spec.ports[{index}] (port {port}) uses {protocol}: a Gateway forwards TCP and UDP only"
    )]
    Protocol {
        /// Its index.
        index: usize,
        /// Its port.
        port: i32,
        /// Its protocol.
        protocol: String,
    },
    /// More ports than a Gateway takes.
    #[error("the Service has {0} ports: a Gateway forwards at most {MAX_FORWARDS}")]
    TooManyPorts(usize),
    /// A source range the IPv4-only firewall cannot hold.
    #[error(
        "spec.loadBalancerSourceRanges[{0}] is not an IPv4 range: the gateway's firewall takes IPv4 ranges only"
    )]
    SourceRange(usize),
    /// A `wgnet.dev/proxy-protocol` value other than `v2`.
    #[error("the annotation {PROXY_PROTOCOL_ANNOTATION} must be v2 (the only version relayed)")]
    ProxyProtocol,
    /// The Gateway is named after the Service, and Gateway names are shorter.
    #[error(
        "the Service's name has {0} characters: the Gateway serving it is named after it, and Gateway names are limited to {MAX_NAME_LENGTH}"
    )]
    NameTooLong(usize),
}

impl Unservable {
    /// The condition reason it is reported under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoProject | Self::NoRegion => reasons::PLACEMENT_MISSING,
            Self::Protocol { .. } | Self::TooManyPorts(_) => reasons::UNSUPPORTED_SERVICE_PORT,
            Self::SourceRange(_) | Self::NameTooLong(_) | Self::ProxyProtocol => {
                reasons::INVALID_SPEC
            }
        }
    }
}

/// A pass failed; the Service's condition and an Event say so where a user can act.
#[derive(Debug, thiserror::Error)]
pub enum LoadBalancerError {
    /// Reading the Service's Gateway.
    #[error("read the Gateway: {0}")]
    Read(KubeCall),
    /// Applying the Gateway (refused, or its name is taken).
    #[error("apply the Gateway: {0}")]
    Apply(ChildrenError),
    /// Deleting the Gateway.
    #[error("delete the Gateway: {0}")]
    Delete(KubeCall),
    /// Adding or removing the Service's finalizer.
    #[error("Service finalizer: {0}")]
    Finalizer(KubeCall),
    /// Writing the Service's status.
    #[error("write the Service's status: {0}")]
    Status(KubeCall),
}

impl LoadBalancerError {
    fn step(&self) -> &'static str {
        match self {
            Self::Read(_) => "observe",
            Self::Apply(_) => "children",
            Self::Delete(_) => "teardown",
            Self::Finalizer(_) => "finalizer",
            Self::Status(_) => "status",
        }
    }

    fn reason_label(&self) -> &str {
        match self {
            Self::Apply(ChildrenError::NameCollision { .. }) => reasons::NAME_COLLISION,
            Self::Apply(ChildrenError::Kube(k))
            | Self::Read(k)
            | Self::Delete(k)
            | Self::Finalizer(k)
            | Self::Status(k) => k.reason(),
        }
    }

    /// The Service condition's reason: a taken name, a Gateway the API server refuses
    /// (a placement annotation outside the schema), or a failed step.
    fn condition_reason(&self) -> &'static str {
        match self {
            Self::Apply(ChildrenError::NameCollision { .. }) => reasons::NAME_COLLISION,
            Self::Apply(ChildrenError::Kube(k)) if k.reason() == "Invalid" => reasons::INVALID_SPEC,
            _ => reasons::RECONCILE_FAILED,
        }
    }

    /// When to look again: never on its own for what only an edit fixes.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Apply(ChildrenError::Kube(k)) if k.reason() == "Invalid" => None,
            Self::Apply(ChildrenError::NameCollision { .. }) => Some(Duration::from_secs(60)),
            _ => Some(FIRST_RETRY),
        }
    }
}

/// Whether this operator serves `svc` (whatever its deletion state).
pub fn claims(svc: &Service, s: &LoadBalancerSettings) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(class) => class == CLASS,
        None => s.claim_unclassed,
    }
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// The region a zone lies in (`us-central1-a` → `us-central1`).
fn region_of(zone: &str) -> Option<&str> {
    zone.rsplit_once('-')
        .map(|(r, _)| r)
        .filter(|r| !r.is_empty())
}

/// The Gateway that serves `svc`: named after it, owned by it, one forward per port.
pub fn gateway_for(svc: &Service, s: &LoadBalancerSettings) -> Result<Gateway, Unservable> {
    let name = svc.name_any();
    if name.len() > MAX_NAME_LENGTH {
        return Err(Unservable::NameTooLong(name.len()));
    }
    let project = annotation(svc, PROJECT_ANNOTATION)
        .or(s.project.as_deref())
        .ok_or(Unservable::NoProject)?;
    let zone_annotation = annotation(svc, ZONE_ANNOTATION);
    let region = annotation(svc, REGION_ANNOTATION)
        .or_else(|| zone_annotation.and_then(region_of))
        .or(s.region.as_deref())
        .ok_or(Unservable::NoRegion)?;
    // The default zone only where it lies in the chosen region; else the region's `-a`.
    let zone = zone_annotation
        .map(str::to_owned)
        .or_else(|| {
            s.zone
                .clone()
                .filter(|z| z.starts_with(&format!("{region}-")))
        })
        .unwrap_or_else(|| format!("{region}-a"));
    let spec = svc.spec.clone().unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    if ports.len() > MAX_FORWARDS {
        return Err(Unservable::TooManyPorts(ports.len()));
    }
    let proxy = match annotation(svc, PROXY_PROTOCOL_ANNOTATION) {
        None => None,
        Some("v2") => Some(crate::api::ProxyProtocol::V2),
        Some(_) => return Err(Unservable::ProxyProtocol),
    };
    let mut forwards = Vec::with_capacity(ports.len());
    for (index, p) in ports.iter().enumerate() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                return Err(Unservable::Protocol {
                    index,
                    port: p.port,
                    protocol: other.to_owned(),
                });
            }
        };
        forwards.push(Forward {
            port: p.port,
            protocol,
            service: name.clone(),
            namespace: None,
            target_port: None,
            // The header is TCP's; UDP ports of the same Service stay plain.
            proxy_protocol: proxy.filter(|_| protocol == Protocol::Tcp),
        });
    }
    let mut source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let net: wgnet_link::net::Ipv4Net =
            r.trim().parse().map_err(|_| Unservable::SourceRange(i))?;
        source_ranges.push(net.to_string());
    }
    if source_ranges.is_empty() {
        source_ranges.push("0.0.0.0/0".into());
    }
    let mut gcp = GcpSpec::new(project.into(), region.into(), zone);
    if let Some(m) = annotation(svc, MACHINE_TYPE_ANNOTATION).or(s.machine_type.as_deref()) {
        gcp.machine_type = m.into();
    }
    // A UDP port of the Service may want WireGuard's usual port; the tunnel moves aside.
    let mut wireguard = WireguardSpec::default();
    while forwards
        .iter()
        .any(|f| f.protocol == Protocol::Udp && f.port == wireguard.listen_port)
    {
        wireguard.listen_port += 1;
    }
    debug_assert!(wireguard.listen_port <= WIREGUARD_PORT + MAX_FORWARDS as i32);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels.insert(SERVICE_LABEL.to_owned(), name.clone());
    Ok(Gateway {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: svc.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: GatewaySpec {
            provider: Provider::Gcp,
            gcp,
            wireguard,
            link: LinkSpec::default(),
            forwards,
            source_ranges,
            dns_hostnames: Vec::new(),
        },
        status: None,
    })
}

/// The Gateway's `Ready` condition, if it has one.
fn gateway_ready(gw: &Gateway) -> Option<&Condition> {
    gw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
}

/// What `status.loadBalancer.ingress` should say: the Gateway's address once it is Ready
/// (`ipMode: Proxy`, so kube-proxy sends in-cluster clients of the address through the
/// gateway instead of short-circuiting them to the pods), kept while the same address is
/// only briefly not Ready, and nothing otherwise.
pub fn published(svc: &Service, gw: Option<&Gateway>) -> Vec<LoadBalancerIngress> {
    let Some(gw) = gw else {
        return Vec::new();
    };
    let Some(address) = gw.status.as_ref().and_then(|s| s.address.clone()) else {
        return Vec::new();
    };
    let current: Vec<LoadBalancerIngress> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    if gateway_ready(gw).is_some_and(|c| c.status == "True") {
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref()).map(|ps| {
            ps.iter()
                .map(|p| PortStatus {
                    port: p.port,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    error: None,
                })
                .collect()
        });
        return vec![LoadBalancerIngress {
            ip: Some(address),
            ip_mode: Some("Proxy".into()),
            ports,
            hostname: None,
        }];
    }
    if current.iter().any(|i| i.ip.as_deref() == Some(&address)) {
        return current;
    }
    Vec::new()
}

/// The Service's `wgnet.dev/GatewayReady` condition: the Gateway's `Ready`, named.
pub fn condition_of(gw: Option<&Gateway>, name: &str) -> (bool, String, String) {
    match gw.and_then(gateway_ready) {
        Some(c) => (
            c.status == "True",
            c.reason.clone(),
            format!("Gateway {name}: {}", c.message),
        ),
        None => (
            false,
            reasons::PROVISIONING.into(),
            format!("Gateway {name} is being created"),
        ),
    }
}

/// What of a Service starts a pass: its spec (ports, type, class, source ranges), the
/// placement annotations, its finalizers and deletion. Status writes, this controller's
/// included, do not.
fn trigger(svc: &Service) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&svc.spec).ok().hash(&mut h);
    for key in [
        PROJECT_ANNOTATION,
        REGION_ANNOTATION,
        ZONE_ANNOTATION,
        MACHINE_TYPE_ANNOTATION,
        PROXY_PROTOCOL_ANNOTATION,
    ] {
        annotation(svc, key).hash(&mut h);
    }
    svc.metadata.finalizers.hash(&mut h);
    svc.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs the LoadBalancer controller until `shutdown` resolves.
pub async fn run<C: Cloud + 'static>(
    ctx: Arc<Context<C>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (store, writer) = reflector::store();
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    // Every Service of the cluster is cached; their managedFields are never read.
    .modify(|s| s.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects()
    .predicate_filter(trigger, kube::runtime::PredicateConfig::default());
    Controller::for_stream(services, store)
        .with_config(super::controller_config())
        .owns(
            Api::<DeserializeGuard<Gateway>>::all(client),
            watcher::Config::default().labels(SERVICE_LABEL),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "loadbalancer controller");
            }
            std::future::ready(())
        })
        .await;
}

fn error_policy<C: Cloud>(_: Arc<Service>, e: &LoadBalancerError, ctx: Arc<Context<C>>) -> Action {
    ctx.metrics.error(KIND, e.step(), e.reason_label());
    e.retry_after().map_or_else(Action::await_change, |d| {
        Action::requeue(backoff(Duration::ZERO, d.min(ctx.settings.resync)))
    })
}

async fn reconcile<C: Cloud>(
    svc: Arc<Service>,
    ctx: Arc<Context<C>>,
) -> Result<Action, LoadBalancerError> {
    let settings = &ctx.settings.load_balancer;
    let held = svc.finalizers().iter().any(|f| f == FINALIZER);
    let wanted = claims(&svc, settings) && svc.metadata.deletion_timestamp.is_none();
    if !wanted && !held {
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let r = if wanted {
        serve(&svc, &ctx).await
    } else {
        release(&svc, &ctx).await
    };
    if let Err(e) = &r {
        tracing::warn!(service = %svc.name_any(), namespace = ?svc.namespace(), error = %e, "loadbalancer pass failed");
        let cond = (false, e.condition_reason().to_owned(), e.to_string());
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        if let Err(w) = write_status(&ctx, &svc, ingress, Some(cond.clone())).await {
            tracing::warn!(service = %svc.name_any(), error = %w, "cannot report the failure on the Service");
        }
        announce(&ctx, &svc, &cond).await;
    }
    ctx.metrics.reconciled(KIND, started.elapsed());
    r
}

/// The Gateways API of the Service's namespace and the Gateway named after the Service, if
/// any (whoever's it is).
async fn gateway_named_after<C: Cloud>(
    ctx: &Context<C>,
    svc: &Service,
) -> Result<(Api<Gateway>, Option<Gateway>), LoadBalancerError> {
    let gws: Api<Gateway> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let existing = gws
        .get_opt(&svc.name_any())
        .await
        .map_err(|e| LoadBalancerError::Read(KubeCall::new("read the Service's Gateway")(e)))?;
    Ok((gws, existing))
}

/// Claims the Service (finalizer), applies its Gateway, mirrors the Gateway's state.
async fn serve<C: Cloud>(svc: &Service, ctx: &Context<C>) -> Result<Action, LoadBalancerError> {
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    let (_, existing) = gateway_named_after(ctx, svc).await?;
    let desired = match gateway_for(svc, &ctx.settings.load_balancer) {
        Ok(d) => d,
        Err(why) => {
            // An edit that cannot be served leaves a running Gateway as it was.
            let ingress = published(svc, existing.as_ref());
            let cond = (false, why.reason().to_owned(), why.to_string());
            write_status(ctx, svc, ingress, Some(cond.clone())).await?;
            announce(ctx, svc, &cond).await;
            return Ok(Action::await_change());
        }
    };
    if !svc.finalizers().iter().any(|f| f == FINALIZER) {
        hold(ctx, svc, true).await?;
        publish(
            &ctx.recorder,
            svc,
            false,
            "Claimed",
            "Claim",
            format!(
                "served by Gateway {name} (GCP project {}, zone {}, {} port(s))",
                desired.spec.gcp.project_id,
                desired.spec.gcp.zone,
                desired.spec.forwards.len()
            ),
        )
        .await;
    }
    let gw = apply(&ctx.client, &ns, &desired)
        .await
        .map_err(LoadBalancerError::Apply)?;
    if let Some(before) = &existing
        && before.spec.forwards != desired.spec.forwards
    {
        let ports: Vec<String> = desired
            .spec
            .forwards
            .iter()
            .map(|f| format!("{}/{}", f.port, f.protocol))
            .collect();
        publish(
            &ctx.recorder,
            svc,
            false,
            "PortsChanged",
            "Update",
            format!("Gateway {name} now forwards {}", ports.join(", ")),
        )
        .await;
    }
    let cond = condition_of(Some(&gw), &name);
    write_status(ctx, svc, published(svc, Some(&gw)), Some(cond.clone())).await?;
    announce(ctx, svc, &cond).await;
    Ok(Action::requeue(ctx.settings.resync))
}

/// The Service no longer asks (deleted, or its type or class changed): delete its Gateway,
/// wait until the Gateway's own teardown has removed every GCP resource, then clear the
/// status and let the Service go.
async fn release<C: Cloud>(svc: &Service, ctx: &Context<C>) -> Result<Action, LoadBalancerError> {
    let name = svc.name_any();
    let (gws, existing) = gateway_named_after(ctx, svc).await?;
    let uid = svc.metadata.uid.as_deref();
    let ours = existing.filter(|gw| {
        gw.owner_references()
            .iter()
            .any(|o| Some(o.uid.as_str()) == uid && o.controller == Some(true))
    });
    if let Some(gw) = ours {
        if gw.metadata.deletion_timestamp.is_none() {
            gws.delete(&name, &DeleteParams::background())
                .await
                .map_err(|e| LoadBalancerError::Delete(KubeCall::new("delete the Gateway")(e)))?;
            publish(
                &ctx.recorder,
                svc,
                false,
                "Releasing",
                "Release",
                format!("deleting Gateway {name} and its GCP resources"),
            )
            .await;
        }
        return Ok(Action::requeue(RELEASE_POLL));
    }
    if svc.metadata.deletion_timestamp.is_none() {
        write_status(ctx, svc, Vec::new(), None).await?;
    }
    hold(ctx, svc, false).await?;
    publish(
        &ctx.recorder,
        svc,
        false,
        "Released",
        "Release",
        format!("Gateway {name} and every GCP resource it held are deleted"),
    )
    .await;
    Ok(Action::await_change())
}

/// Adds (`held`) or removes this controller's finalizer. The list is read from the Service
/// as the API server has it now, not as the pass saw it: the pass's own status write, or
/// a watch event still on its way, makes that copy stale. The patch names the version it
/// read, so an edit in between is a conflict the next pass retries, never a lost
/// finalizer of someone else.
async fn hold<C: Cloud>(
    ctx: &Context<C>,
    svc: &Service,
    held: bool,
) -> Result<(), LoadBalancerError> {
    let api: Api<Service> =
        Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let call = |what| move |e| LoadBalancerError::Finalizer(KubeCall::new(what)(e));
    let Some(fresh) = api
        .get_opt(&svc.name_any())
        .await
        .map_err(call("read Service for its finalizers"))?
    else {
        return Ok(());
    };
    let mut finalizers: Vec<String> = fresh
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if held {
        finalizers.push(FINALIZER.into());
    }
    if finalizers.as_slice() == fresh.finalizers() {
        return Ok(());
    }
    let patch = json!({"metadata": {
        "resourceVersion": fresh.resource_version(),
        "finalizers": finalizers,
    }});
    api.patch(
        &svc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(call("patch Service finalizers"))?;
    Ok(())
}

/// Writes `ingress` and the condition (removed when `None`) when they differ from what
/// the Service says. A strategic merge patch: the conditions of others are kept.
async fn write_status<C: Cloud>(
    ctx: &Context<C>,
    svc: &Service,
    ingress: Vec<LoadBalancerIngress>,
    cond: Option<(bool, String, String)>,
) -> Result<(), LoadBalancerError> {
    let status = svc.status.clone().unwrap_or_default();
    let current_ingress = status
        .load_balancer
        .as_ref()
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    let current: Vec<Condition> = status.conditions.clone().unwrap_or_default();
    let mut wanted = current.clone();
    let condition = match &cond {
        Some((ok, reason, message)) => {
            set_condition(
                &mut wanted,
                CONDITION,
                *ok,
                reason,
                message,
                svc.metadata.generation,
            );
            let c = wanted
                .iter()
                .find(|c| c.type_ == CONDITION)
                .cloned()
                .expect("set_condition leaves the condition in the list");
            serde_json::to_value(c).expect("a Condition serializes")
        }
        None => json!({"type": CONDITION, "$patch": "delete"}),
    };
    let unchanged_condition = match &cond {
        Some(_) => wanted == current,
        None => !current.iter().any(|c| c.type_ == CONDITION),
    };
    if current_ingress == ingress && unchanged_condition {
        return Ok(());
    }
    let patch = json!({"status": {
        "loadBalancer": {"ingress": ingress},
        "conditions": [condition],
    }});
    Api::<Service>::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default())
        .patch_status(
            &svc.name_any(),
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Strategic(patch),
        )
        .await
        .map_err(|e| LoadBalancerError::Status(KubeCall::new("patch Service status")(e)))?;
    Ok(())
}

/// An Event when the condition says something new: Normal for progress and readiness,
/// Warning for anything that needs a person.
async fn announce<C: Cloud>(ctx: &Context<C>, svc: &Service, cond: &(bool, String, String)) {
    let (ok, reason, message) = cond;
    let before = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION));
    if before.is_some_and(|c| (c.status == "True") == *ok && c.reason == *reason) {
        return;
    }
    let warning = !*ok && reason != reasons::PROVISIONING;
    publish(
        &ctx.recorder,
        svc,
        warning,
        reason,
        "Reconcile",
        message.clone(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn lb(ports: serde_json::Value, annotations: serde_json::Value) -> Service {
        svc(json!({
            "metadata": {"name": "web", "namespace": "apps", "uid": "u1", "annotations": annotations},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "ports": ports}
        }))
    }

    fn defaults() -> LoadBalancerSettings {
        LoadBalancerSettings {
            project: Some("proj-1".into()),
            region: Some("us-central1".into()),
            zone: Some("us-central1-b".into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_class_is_claimed_unless_the_admin_opts_into_unclassed_services() {
        let s = LoadBalancerSettings::default();
        let with = |class: Option<&str>, type_: &str| {
            svc(
                json!({"metadata": {"name": "a"}, "spec": {"type": type_, "loadBalancerClass": class}}),
            )
        };
        assert!(claims(&with(Some(CLASS), "LoadBalancer"), &s));
        assert!(!claims(&with(Some("metallb.io/x"), "LoadBalancer"), &s));
        assert!(!claims(&with(None, "LoadBalancer"), &s));
        assert!(!claims(&with(None, "ClusterIP"), &s));
        let opted = LoadBalancerSettings {
            claim_unclassed: true,
            ..s
        };
        assert!(claims(&with(None, "LoadBalancer"), &opted));
        assert!(!claims(&with(Some("metallb.io/x"), "LoadBalancer"), &opted));
        assert!(!claims(&with(None, "NodePort"), &opted));
    }

    #[test]
    fn the_gateway_forwards_every_port_to_the_service_and_is_owned_by_it() {
        let s = lb(
            json!([{"port": 80, "targetPort": 8080}, {"port": 53, "protocol": "UDP"}]),
            json!({}),
        );
        let gw = gateway_for(&s, &defaults()).expect("served");
        assert_eq!(gw.metadata.name.as_deref(), Some("web"));
        assert_eq!(gw.metadata.namespace.as_deref(), Some("apps"));
        let owner = &gw.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "u1", Some(true))
        );
        let fw: Vec<_> = gw
            .spec
            .forwards
            .iter()
            .map(|f| {
                (
                    f.port,
                    f.protocol,
                    f.service.as_str(),
                    f.effective_target_port(),
                )
            })
            .collect();
        assert_eq!(
            fw,
            vec![
                (80, Protocol::Tcp, "web", 80),
                (53, Protocol::Udp, "web", 53)
            ]
        );
        assert_eq!(
            (
                gw.spec.gcp.project_id.as_str(),
                gw.spec.gcp.region.as_str(),
                gw.spec.gcp.zone.as_str()
            ),
            ("proj-1", "us-central1", "us-central1-b")
        );
        assert_eq!(gw.spec.source_ranges, vec!["0.0.0.0/0"]);
        assert_eq!(gw.spec.wireguard.listen_port, WIREGUARD_PORT);
    }

    #[test]
    fn annotations_override_the_defaults_and_a_zone_names_its_region() {
        let s = lb(
            json!([{"port": 443}]),
            json!({ZONE_ANNOTATION: "europe-west4-c", PROJECT_ANNOTATION: "other-proj", MACHINE_TYPE_ANNOTATION: "e2-micro"}),
        );
        let gw = gateway_for(&s, &defaults()).expect("served");
        assert_eq!(gw.spec.gcp.project_id, "other-proj");
        assert_eq!(gw.spec.gcp.region, "europe-west4");
        assert_eq!(gw.spec.gcp.zone, "europe-west4-c");
        assert_eq!(gw.spec.gcp.machine_type, "e2-micro");
        // A region alone: the default zone lies elsewhere, so the region's first zone.
        let s = lb(
            json!([{"port": 443}]),
            json!({REGION_ANNOTATION: "asia-east1"}),
        );
        let gw = gateway_for(&s, &defaults()).expect("served");
        assert_eq!(
            (gw.spec.gcp.region.as_str(), gw.spec.gcp.zone.as_str()),
            ("asia-east1", "asia-east1-a")
        );
    }

    #[test]
    fn what_a_gateway_cannot_serve_is_named() {
        let none = LoadBalancerSettings::default();
        let s = lb(json!([{"port": 443}]), json!({}));
        assert_eq!(gateway_for(&s, &none).err(), Some(Unservable::NoProject));
        let s = lb(
            json!([{"port": 443}]),
            json!({PROJECT_ANNOTATION: "p-123456"}),
        );
        assert_eq!(gateway_for(&s, &none).err(), Some(Unservable::NoRegion));
        let s = lb(
            json!([{"port": 443}, {"port": 9, "protocol": "SCTP"}]),
            json!({}),
        );
        let e = gateway_for(&s, &defaults()).expect_err("SCTP");
        assert_eq!(e.reason(), reasons::UNSUPPORTED_SERVICE_PORT);
        assert!(
            e.to_string().contains("spec.ports[1] (port 9) uses SCTP"),
            "{e}"
        );
        let mut s = lb(json!([{"port": 443}]), json!({}));
        s.spec.as_mut().expect("spec").load_balancer_source_ranges =
            Some(vec!["198.51.100.0/24".into(), "2001:db8::/32".into()]);
        assert_eq!(
            gateway_for(&s, &defaults()).err(),
            Some(Unservable::SourceRange(1))
        );
        let mut s = lb(json!([{"port": 443}]), json!({}));
        s.metadata.name = Some("x".repeat(53));
        assert_eq!(
            gateway_for(&s, &defaults()).err(),
            Some(Unservable::NameTooLong(53))
        );
        let many: Vec<_> = (1..=65).map(|p| json!({"port": p})).collect();
        let s = lb(json!(many), json!({}));
        assert_eq!(
            gateway_for(&s, &defaults()).err(),
            Some(Unservable::TooManyPorts(65))
        );
    }

    #[test]
    fn the_proxy_protocol_annotation_applies_to_tcp_ports_only() {
        let s = lb(
            json!([{"name": "h", "port": 443}, {"name": "q", "port": 443, "protocol": "UDP"}]),
            json!({PROXY_PROTOCOL_ANNOTATION: "v2"}),
        );
        let gw = gateway_for(&s, &defaults()).expect("served");
        let pp: Vec<_> = gw
            .spec
            .forwards
            .iter()
            .map(|f| (f.protocol, f.proxy_protocol))
            .collect();
        assert_eq!(
            pp,
            vec![
                (Protocol::Tcp, Some(crate::api::ProxyProtocol::V2)),
                (Protocol::Udp, None)
            ]
        );
        let s = lb(
            json!([{"port": 443}]),
            json!({PROXY_PROTOCOL_ANNOTATION: "v1"}),
        );
        assert_eq!(
            gateway_for(&s, &defaults()).err(),
            Some(Unservable::ProxyProtocol)
        );
    }

    #[test]
    fn source_ranges_carry_over_and_a_udp_port_moves_the_tunnel_aside() {
        let mut s = lb(
            json!([{"port": 51820, "protocol": "UDP"}, {"port": 51821, "protocol": "UDP"}, {"port": 51822}]),
            json!({}),
        );
        s.spec.as_mut().expect("spec").load_balancer_source_ranges =
            Some(vec!["198.51.100.0/24".into()]);
        let gw = gateway_for(&s, &defaults()).expect("served");
        assert_eq!(gw.spec.source_ranges, vec!["198.51.100.0/24"]);
        assert_eq!(gw.spec.wireguard.listen_port, 51822);
    }

    fn gw_with(address: Option<&str>, ready: Option<(&str, &str)>) -> Gateway {
        let conds: Vec<_> = ready
            .map(|(s, r)| {
                json!({"type": "Ready", "status": s, "reason": r, "message": "m",
                       "lastTransitionTime": "2026-01-01T00:00:00Z"})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "wgnet.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "web"},
            "spec": {"gcp": {"projectID": "proj-1", "region": "us-central1", "zone": "us-central1-a"}},
            "status": {"address": address, "conditions": conds}
        }))
        .expect("gateway")
    }

    #[test]
    fn the_address_is_published_once_ready_and_kept_through_a_blip() {
        let s = lb(
            json!([{"port": 80}, {"port": 53, "protocol": "UDP"}]),
            json!({}),
        );
        assert!(published(&s, None).is_empty());
        let provisioning = gw_with(Some("203.0.113.7"), Some(("False", "Provisioning")));
        assert!(published(&s, Some(&provisioning)).is_empty());
        let ready = gw_with(Some("203.0.113.7"), Some(("True", "Ready")));
        let ing = published(&s, Some(&ready));
        assert_eq!(ing.len(), 1);
        assert_eq!(ing[0].ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(ing[0].ip_mode.as_deref(), Some("Proxy"));
        let ports: Vec<_> = ing[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, vec![(80, "TCP"), (53, "UDP")]);
        // Published, then briefly not Ready with the same address: kept.
        let mut s2 = s.clone();
        s2.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
            load_balancer: Some(k8s_openapi::api::core::v1::LoadBalancerStatus {
                ingress: Some(ing.clone()),
            }),
            conditions: None,
        });
        let blip = gw_with(Some("203.0.113.7"), Some(("False", "ReconcileFailed")));
        assert_eq!(published(&s2, Some(&blip)), ing);
        // A new address not yet Ready: the old one is withdrawn.
        let moved = gw_with(Some("203.0.113.9"), Some(("False", "Provisioning")));
        assert!(published(&s2, Some(&moved)).is_empty());
    }

    #[test]
    fn the_condition_mirrors_the_gateway() {
        assert_eq!(
            condition_of(None, "web"),
            (
                false,
                "Provisioning".into(),
                "Gateway web is being created".into()
            )
        );
        let g = gw_with(None, Some(("False", "PolicyRefused")));
        let (ok, reason, msg) = condition_of(Some(&g), "web");
        assert!(!ok);
        assert_eq!(reason, "PolicyRefused");
        assert_eq!(msg, "Gateway web: m");
    }
}
