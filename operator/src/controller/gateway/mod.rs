//! The Gateway controller, as typed steps:
//!
//! [`observe`] (API reads) → [`validate`] (pure, a [`validate::ValidatedGateway`]) →
//! [`build`] (pure: GCP's desired state, the link's children, the DNS record) → [`apply`]
//! (the key Secret, GCP through [`Cloud`], the children, the DNSEndpoint) → [`status`]
//! (pure `status_of`). Deletion is [`teardown`] under kube-runtime's finalizer helper;
//! [`sweep`] removes GCP resources of this install whose Gateway no longer exists.
//!
//! This module wires the steps together, owns the watches and decides when to look again.

pub mod apply;
pub mod build;
pub mod news;
pub mod observe;
pub mod reports;
pub mod status;
pub mod sweep;
pub mod teardown;
pub mod validate;

use std::future::Future;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Resource, ResourceExt};
use tracing::Instrument as _;
use wgnet_cloud::{Cloud, GatewayId, Target};

use super::error::{Error, STALE_RETRY, backoff};
use super::{
    Context, children_watch, condition, controller_config, owner_of_pod, publish, report_invalid,
    set_condition, write_status,
};
use crate::api::conditions::{self, reasons};
use crate::api::{FINALIZER, Gateway};
use crate::children::{self, MANAGED_SELECTOR};

pub use build::{link_config, link_protocol};
pub use status::{gcp_status_of, recorded_of};
pub use sweep::{sweep_loop, sweep_once};
pub use teardown::ABANDON_ANNOTATION;

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

/// Name of the link's objects (ServiceAccount, Role, ConfigMap, Deployment, Lease, ...).
pub fn link_name(gw: &str) -> String {
    format!("{gw}-link")
}

/// What of a Gateway starts a pass: its spec (the generation), its finalizers, the abandon
/// annotation and deletion. Status writes, the operator's own included, do not: the
/// decision when to look again after a pass is the pass's (or [`error_policy`]'s) alone.
fn trigger(gw: &DeserializeGuard<Gateway>) -> Option<u64> {
    let m = gw.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp.is_some().hash(&mut h);
    m.annotations
        .as_ref()
        .and_then(|a| a.get(ABANDON_ANNOTATION))
        .hash(&mut h);
    Some(h.finish())
}

/// A Gateway as the cache keeps it: without what no pass reads (see
/// [`crate::controller::slim_meta`]). The cache holds every Gateway; their managedFields
/// were most of the operator's memory at thousands of Gateways, and a Gateway applied with
/// `kubectl apply` also carries its spec again, as JSON, in an annotation.
fn slim(g: &mut DeserializeGuard<Gateway>) {
    crate::controller::slim_meta(g.meta_mut());
}

/// The cache of Gateways the controller keeps (and the orphan sweep reads).
pub type Gateways = Store<DeserializeGuard<Gateway>>;

/// Runs the Gateway controller until `shutdown` resolves, filling `store` through `writer`.
pub async fn run<C: Cloud + 'static>(
    ctx: Arc<Context<C>>,
    (store, writer): (
        Gateways,
        reflector::store::Writer<DeserializeGuard<Gateway>>,
    ),
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let gateways = watcher(
        Api::<DeserializeGuard<Gateway>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(writer)
    .inspect_ok({
        let ctx = ctx.clone();
        move |ev| {
            if let watcher::Event::Delete(g) = ev {
                ctx.news
                    .forget(&g.namespace().unwrap_or_default(), &g.name_any());
            }
        }
    })
    .applied_objects()
    .predicate_filter(trigger, kube::runtime::PredicateConfig::default())
    .inspect_ok({
        let ctx = ctx.clone();
        move |g| {
            ctx.news
                .mark(&g.namespace().unwrap_or_default(), &g.name_any())
        }
    });
    let ctrl = Controller::for_stream(gateways, store.clone()).with_config(controller_config());
    let (s1, s2) = (store.clone(), store);
    let (c1, c2, c3) = (ctx.clone(), ctx.clone(), ctx.clone());
    let link_pods = watcher::Config::default().labels(&format!(
        "{MANAGED_SELECTOR},{}=link",
        children::COMPONENT_LABEL
    ));
    // Metadata is all a trigger needs (children, link pods, Services, Namespaces: every
    // watch but the Gateways' own sends metadata only: a pod is several KB of JSON, its
    // metadata a fraction). The children's watches also keep `ctx.applied` honest, for
    // EgressGateways' links too (the memo is shared and the selector is this operator's
    // label), so that no applied object has to be sent again just because time passed.
    ctrl.owns_stream(children_watch::<Deployment, C>(&ctx))
        .owns_stream(children_watch::<ConfigMap, C>(&ctx))
        .owns_stream(children_watch::<Secret, C>(&ctx))
        .owns_stream(children_watch::<ServiceAccount, C>(&ctx))
        .owns_stream(children_watch::<Role, C>(&ctx))
        .owns_stream(children_watch::<RoleBinding, C>(&ctx))
        .owns_stream(children_watch::<NetworkPolicy, C>(&ctx))
        .owns_stream(children_watch::<PodDisruptionBudget, C>(&ctx))
        .watches(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            link_pods,
            move |pod: PartialObjectMeta<Pod>| {
                let owner = owner_of_pod(&pod.metadata);
                announce(&c1, owner.iter());
                owner
            },
        )
        .watches(
            Api::<PartialObjectMeta<Service>>::all(client.clone()),
            watcher::Config::default(),
            move |svc: PartialObjectMeta<Service>| {
                let ns = svc.namespace().unwrap_or_default();
                let gws = referencing(&s1, |gw_ns, f| {
                    f.service == svc.name_any() && f.namespace.as_deref().unwrap_or(gw_ns) == ns
                });
                announce(&c2, gws.iter());
                gws
            },
        )
        .watches(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            watcher::Config::default(),
            move |n: PartialObjectMeta<Namespace>| {
                let name = n.name_any();
                let gws = referencing(&s2, |gw_ns, f| {
                    f.namespace
                        .as_deref()
                        .is_some_and(|t| t == name && t != gw_ns)
                });
                announce(&c3, gws.iter());
                gws
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

/// Marks the Gateways a watch event starts a pass for as having news ([`news`]).
fn announce<'a, C>(
    ctx: &Context<C>,
    gateways: impl Iterator<Item = &'a ObjectRef<DeserializeGuard<Gateway>>>,
) {
    for g in gateways {
        ctx.news
            .mark(g.namespace.as_deref().unwrap_or_default(), &g.name);
    }
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

/// Counts the failure and decides when to look again: never on its own for what only an
/// edit can fix, otherwise after a backoff that grows with how long the Gateway has not
/// been Ready, capped by the error's own policy (GCP's for GCP errors).
fn error_policy<C: Cloud>(
    obj: Arc<DeserializeGuard<Gateway>>,
    e: &Error,
    ctx: Arc<Context<C>>,
) -> Action {
    if let Error::Deleting { after, .. } = e {
        // Not a failure: teardown already waited (bounded) on GCP and says when to look.
        return Action::requeue(*after);
    }
    if let Error::Stale = e {
        // Not a failure either: the next pass begins from the copy the watch delivers.
        return Action::requeue(STALE_RETRY);
    }
    ctx.metrics.error(KIND, e.metric_label(), &e.reason_label());
    let Some(cap) = e.retry_after() else {
        return Action::await_change();
    };
    let failing = obj
        .0
        .as_ref()
        .ok()
        .map_or(Duration::ZERO, |gw| not_ready_for(gw.status.as_ref()));
    Action::requeue(backoff(failing, cap.min(ctx.settings.resync)))
}

/// How long `Ready` has been False (zero when it is True or unset).
fn not_ready_for(status: Option<&crate::api::GatewayStatus>) -> Duration {
    status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY))
        .filter(|c| c.status == "False")
        .map(|c| k8s_openapi::jiff::Timestamp::now().duration_since(c.last_transition_time.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

async fn reconcile<C: Cloud>(
    obj: Arc<DeserializeGuard<Gateway>>,
    ctx: Arc<Context<C>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(gw) => {
            let span = tracing::info_span!(
                "reconcile",
                gateway = %gw.name_any(),
                namespace = gw.namespace().unwrap_or_default(),
                generation = gw.metadata.generation.unwrap_or_default(),
            );
            let r = under_finalizer(gw, &ctx).instrument(span).await;
            if let Err(e) = &r
                && e.is_failure()
            {
                tracing::warn!(gateway = %gw.name_any(), namespace = ?gw.namespace(), error = %e, "reconcile failed");
                fail(&ctx, gw, e).await;
            }
            r
        }
        Err(invalid) => report_invalid::<Gateway, C>(&ctx, invalid, "Gateway").await,
    };
    ctx.metrics.reconciled(KIND, started.elapsed());
    result
}

/// The pass under kube-runtime's finalizer helper: the finalizer is added before anything
/// is created, and removed only when [`teardown`] returns `Ok` (everything in GCP is gone,
/// or an admin abandoned it).
async fn under_finalizer<C: Cloud>(gw: &Gateway, ctx: &Context<C>) -> Result<Action, Error> {
    let api = Api::<Gateway>::namespaced(ctx.client.clone(), &gw.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, Arc::new(gw.clone()), |event| async move {
        match event {
            finalizer::Event::Apply(gw) => Box::pin(reconcile_gateway(&gw, ctx)).await,
            finalizer::Event::Cleanup(gw) => Box::pin(teardown::teardown(&gw, ctx)).await,
        }
    })
    .await
    .map_err(Error::from)
}

/// Reports a failure that the pass did not already put in status: `Ready=False/<reason>`
/// with the error's message, and a Warning event.
async fn fail<C: Cloud>(ctx: &Context<C>, gw: &Gateway, e: &Error) {
    let key = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    if let Error::Validate(_) = e {
        ctx.metrics.gateway_state(&key, Some(e.reason()));
    }
    if e.in_status() {
        return;
    }
    let mut status = gw.status.clone().unwrap_or_default();
    if let Error::Validate(_) = e {
        status.observed_generation = gw.metadata.generation;
    }
    set_condition(
        &mut status.conditions,
        conditions::READY,
        false,
        e.reason(),
        &e.to_string(),
        gw.metadata.generation,
    );
    let changed = Some(&status) != gw.status.as_ref();
    if changed && let Err(w) = write_status(&ctx.client, gw, |g| g.status = Some(status)).await {
        tracing::warn!(gateway = %key, error = %w, "cannot report the failure in status");
    }
    // What only an edit fixes is said once; the rest on every failure (events aggregate).
    if changed || e.is_retryable() {
        publish(
            &ctx.recorder,
            gw,
            true,
            e.reason(),
            "Reconcile",
            e.to_string(),
        )
        .await;
    }
}

/// The GCP target of a Gateway.
pub fn target_of(gw: &Gateway, cluster: &str) -> Target {
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

/// One pass over a live Gateway: a poll when only its VM's report can have changed
/// ([`poll`]), else the steps in order; then when to look again.
///
/// Up to 128 passes wait at once (on GCP's budget, on an operation), each holding its
/// future: every step's future is boxed and the large values are scoped or boxed, so a
/// pass holds the step it is in and not room for the largest one.
async fn reconcile_gateway<C: Cloud>(gw: &Gateway, ctx: &Context<C>) -> Result<Action, Error> {
    let (ns, name) = (gw.namespace().unwrap_or_default(), gw.name_any());
    let uid = gw.uid().unwrap_or_default();
    let news = ctx.news.of(&ns, &name);
    let began = Instant::now();
    if let Some(quiet) = ctx
        .vm_reports
        .quiet(&uid)
        .filter(|q| q.holds(news, gw.metadata.generation, began, ctx.settings.resync))
        && let Some(action) = Box::pin(poll(ctx, gw, &quiet)).await
    {
        return Ok(action);
    }
    ctx.vm_reports.set_quiet(&uid, None);
    let key = format!("{ns}/{name}");
    // I/O: the Services, Namespaces and key Secret the spec names.
    let count = ctx.settings.policy.max_gateways_per_namespace > 0;
    let observed = Box::pin(observe::inputs(&ctx.client, gw, count)).await?;
    // Pure.
    let valid = validate::validate(gw, &ctx.settings, &observed)?;
    // I/O: the key Secret (created once).
    let keys = Box::pin(apply::keys(ctx, gw, observed.key_secret.as_deref())).await?;
    let target = target_of(gw, &ctx.settings.cluster_id);
    // Pure.
    let desired = build::desired(gw, &valid, &target, &keys);
    // I/O: GCP.
    let progress = Box::pin(ctx.cloud.ensure(&desired, &valid.recorded)).await;
    // What a pass builds is large (the startup script, the link's objects) and the pass
    // may yet wait long on the API server or an operation: nothing of it is held past use.
    drop(desired);
    let address = progress
        .address
        .clone()
        .or_else(|| gw.status.as_ref().and_then(|s| s.address.clone()));
    // Pure, then I/O: the link's objects, pruned to what the spec needs.
    // Boxed: as a value in the pass's future it would reserve room (7 KB) in every pass,
    // whatever step the pass is in.
    let children = Box::new(build::link_children(
        gw,
        &valid,
        &observed.forwards,
        &keys,
        address.as_deref(),
        &ctx.settings,
    ));
    Box::pin(apply::children(
        &ctx.client,
        &ctx.applied,
        &children.params,
        &children.objects,
    ))
    .await?;
    drop((children, observed, keys));
    let dns = Box::pin(apply::dns(ctx, gw, address.as_deref())).await?;
    // I/O: the Lease, its holder's pod, the Deployment. The pod or Deployment read is
    // large, and the pass may yet wait on GCP's budget: it is not held past `tunnel_of`.
    let tunnel = {
        let link = Box::pin(observe::link(&ctx.client, gw)).await?;
        status::tunnel_of(&link)
    };
    // I/O: the VM's guest attributes, unless a settled Gateway keeps its last report.
    let report = match status::settled_report(gw, &progress, &tunnel) {
        Some(kept) => {
            ctx.vm_reports.forget(&target.id.uid);
            Some(kept)
        }
        None if progress.vm_status.as_deref() == Some("RUNNING") => {
            Box::pin(vm_report(ctx, gw, &target, tunnel.ready)).await
        }
        None => None,
    };
    // Pure.
    let status = status::status_of(
        gw,
        &valid.classified,
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
    ctx.metrics
        .gateway_state(&key, now.as_ref().map(|(_, r)| r.as_str()));
    if Some(&status) != gw.status.as_ref() {
        Box::pin(write_status(&ctx.client, gw, |g| {
            g.status = Some(status.clone())
        }))
        .await
        .map_err(Error::Status)?;
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
        tracing::info!(gateway = %key, ready = %s, reason = %r, message = %msg, "Ready changed");
        Box::pin(publish(
            &ctx.recorder,
            gw,
            s != "True" && r != reasons::PROVISIONING,
            r,
            "Reconcile",
            msg,
        ))
        .await;
    }
    if let Some(e) = progress.errors.first() {
        for e in &progress.errors[1..] {
            tracing::warn!(gateway = %key, error = %e, "GCP");
        }
        // The status above carries it; the error policy decides when to retry.
        return Err(Error::Cloud(e.clone()));
    }
    if !progress.recorded.pending.is_empty() {
        // Waiting here (bounded, server side) instead of polling makes each step follow
        // its operation's end by one round trip; status was written above.
        let _ = tokio::time::timeout(
            OPERATION_WAIT,
            Box::pin(ctx.cloud.wait_any(&target, &progress.recorded)),
        )
        .await;
        return Ok(Action::requeue(Duration::from_millis(10)));
    }
    if ready {
        return Ok(Action::requeue(ctx.settings.resync));
    }
    // Everything in GCP as wanted and nothing written: until a watch brings news, only
    // the VM's report can change what this pass found.
    if progress.ready
        && progress.writes == 0
        && let Some(report) = report
    {
        let quiet = reports::Quiet {
            news,
            generation: gw.metadata.generation,
            at: began,
            report,
        };
        ctx.vm_reports.set_quiet(&uid, Some(quiet));
    }
    Ok(Action::requeue(patience(
        not_ready_for(Some(&status)),
        ctx.settings.resync,
    )))
}

/// A scheduled look at a Gateway whose last full pass found it waiting for its VM and
/// that no watch brought news of since: its VM's report, read as [`vm_report`] decides,
/// and nothing else (at thousands of Gateways waiting for their VMs, the full passes'
/// reads of Services, Secrets, Leases and Deployments were most of the API server's
/// load). `None` when the report differs from the one the full pass used, or cannot be
/// read: a full pass follows at once.
async fn poll<C: Cloud>(ctx: &Context<C>, gw: &Gateway, quiet: &reports::Quiet) -> Option<Action> {
    let target = target_of(gw, &ctx.settings.cluster_id);
    let report = vm_report(ctx, gw, &target, false).await?;
    if report != quiet.report {
        return None;
    }
    ctx.metrics.polled(KIND);
    Some(Action::requeue(patience(
        not_ready_for(gw.status.as_ref()),
        ctx.settings.resync,
    )))
}

/// The report of a RUNNING VM whose Gateway is not settled (see [`reports`]): one read
/// less than half its patience ago stands; a poll with an older one to fall back on reads
/// only with budget to spare; a link holding a handshake (news that the VM just came up)
/// or a first look always reads.
async fn vm_report<C: Cloud>(
    ctx: &Context<C>,
    gw: &Gateway,
    target: &Target,
    handshaking: bool,
) -> Option<reports::Report> {
    let uid = &target.id.uid;
    let now = Instant::now();
    let last = if handshaking {
        None
    } else {
        let fresh_for = patience(not_ready_for(gw.status.as_ref()), ctx.settings.resync) / 2;
        if let Some(recent) = ctx.vm_reports.recent(uid, fresh_for, now) {
            return Some(recent);
        }
        ctx.vm_reports.last(uid)
    };
    let read = match last {
        Some(last) => match ctx.cloud.vm_report_if_spare(target).await {
            Ok(Some(r)) => r,
            Ok(None) => return Some(last),
            Err(_) => return None,
        },
        None => ctx.cloud.vm_report(target).await.ok()?,
    };
    ctx.vm_reports.put(uid, read.clone(), now);
    Some(read)
}

/// How soon to look again at a Gateway that is not Ready and has been in its state for
/// `since`: every 2 s at first (a VM booting, a link handshaking), then a tenth of the time
/// waited, up to the resync period, so a Gateway stuck for an hour (a VM that never
/// reports, no link node) does not poll GCP every two seconds. Changes the operator
/// watches (Pods, Services, Namespaces, owned objects) still trigger a pass at once.
pub fn patience(since: Duration, resync: Duration) -> Duration {
    (since / 10).clamp(SETTLING, resync.max(SETTLING))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::LAST_APPLIED;
    use crate::controller::testing::gateway;

    /// A pass in flight holds its future for as long as it waits (on GCP's budget, on an
    /// operation), and up to 128 wait at once. Each step's future is boxed and the large
    /// reads and builds are scoped, so a pass holds only the step it is in: the future
    /// the controller holds per pass was 27,080 bytes, 128 of them 3.4 MB.
    #[test]
    fn a_pass_in_flight_holds_only_the_step_it_is_in() {
        use wgnet_cloud::gcp::GcpCloud;
        fn size<F: Future>(
            _: fn(Arc<DeserializeGuard<Gateway>>, Arc<Context<GcpCloud>>) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let n = size(reconcile::<GcpCloud>);
        assert!(n <= 6 * 1024, "a pass's future is {n} bytes");
    }

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

    /// Status writes (the operator's own) do not start a pass; spec edits, finalizers,
    /// the abandon annotation and deletion do.
    #[test]
    fn only_what_asks_for_action_triggers_a_pass() {
        let base = gateway();
        let key = |g: &Gateway| trigger(&DeserializeGuard(Ok(g.clone())));
        let mut status_only = base.clone();
        status_only.status = Some(crate::api::GatewayStatus {
            address: Some("203.0.113.7".into()),
            ..Default::default()
        });
        status_only.metadata.resource_version = Some("42".into());
        assert_eq!(key(&base), key(&status_only));
        let mut edited = base.clone();
        edited.metadata.generation = Some(2);
        let mut finalized = base.clone();
        finalized.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let mut abandoned = base.clone();
        abandoned.metadata.annotations =
            Some([(ABANDON_ANNOTATION.to_owned(), "true".to_owned())].into());
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        for other in [edited, finalized, abandoned, deleted] {
            assert_ne!(key(&base), key(&other));
        }
    }

    /// The cache drops managedFields and kubectl's copy of the spec, and keeps every
    /// annotation a pass reads.
    #[test]
    fn the_cache_keeps_what_passes_read() {
        let mut g = gateway();
        g.metadata.managed_fields = Some(vec![Default::default()]);
        g.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_owned(), "{\"spec\":{}}".to_owned()),
                (ABANDON_ANNOTATION.to_owned(), "true".to_owned()),
            ]
            .into(),
        );
        let mut cached = DeserializeGuard(Ok(g.clone()));
        slim(&mut cached);
        let m = cached.meta();
        assert!(m.managed_fields.as_ref().is_none_or(Vec::is_empty));
        let kept: Vec<&String> = m.annotations.iter().flat_map(|a| a.keys()).collect();
        assert_eq!(kept, [ABANDON_ANNOTATION]);
        assert_eq!(cached.0.as_ref().ok().map(|c| &c.spec), Some(&g.spec));

        g.metadata.annotations = Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into());
        let mut cached = DeserializeGuard(Ok(g));
        slim(&mut cached);
        assert_eq!(cached.meta().annotations, None);
    }

    #[test]
    fn not_ready_time_counts_only_while_ready_is_false() {
        let mut s = crate::api::GatewayStatus::default();
        assert_eq!(not_ready_for(Some(&s)), Duration::ZERO);
        set_condition(
            &mut s.conditions,
            conditions::READY,
            true,
            "Ready",
            "",
            None,
        );
        assert_eq!(not_ready_for(Some(&s)), Duration::ZERO);
        set_condition(&mut s.conditions, conditions::READY, false, "X", "", None);
        s.conditions[0].last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(120),
        );
        let d = not_ready_for(Some(&s));
        assert!(
            d >= Duration::from_secs(119) && d <= Duration::from_secs(130),
            "{d:?}"
        );
    }
}
