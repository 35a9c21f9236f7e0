//! The controllers: [`gateway`] reconciles Gateways (GCP through the [`Cloud`] trait, the
//! link's objects through the API server), [`egress`] reconciles EgressGateways,
//! [`loadbalancer`] serves LoadBalancer Services through Gateways it manages.
//!
//! I/O boundary: the Kubernetes API through `kube::Client` and GCP through the `Cloud`
//! implementation handed in; the decisions in between (forward classification, key sets,
//! object builders, status) are pure functions in sibling modules.

pub mod egress;
pub mod error;
pub mod gateway;
pub mod loadbalancer;
#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{Note, Recorder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wgnet_cloud::Cloud;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use self::error::{ChildrenError, Error, KubeCall};
use crate::applied::Applied;
use crate::children::{FIELD_MANAGER, LinkChildren, LinkImage, LinkParams};
use crate::metrics::Metrics;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The link image and its pod-level options.
    pub link: LinkImage,
    /// This cluster's id in GCP names and labels.
    pub cluster_id: String,
    /// How often every object is reconciled even without changes (drift repair).
    pub resync: Duration,
    /// What Gateways may ask for.
    pub policy: crate::policy::Policy,
    /// Projects the orphan sweep looks at besides those of live Gateways.
    pub sweep_projects: Vec<String>,
    /// Resources younger than this are never swept (their Gateway may be being created).
    pub sweep_min_age: Duration,
    /// Which LoadBalancer Services are served, and where their Gateways go by default.
    pub load_balancer: loadbalancer::LoadBalancerSettings,
}

/// Reconciles each controller runs at once. Unbounded, every Gateway waiting on its
/// project's request budget holds a pass (its desired state with the startup script) for
/// as long as it waits; bounded, the rest wait as keys in the queue. The budget, not this,
/// paces GCP calls: 128 passes keep ten projects' budgets busy at GCP's latencies.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(128)
}

/// What `kubectl apply` records of the object it applied: a second copy of it.
pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from an object's metadata what no pass reads: its managedFields (about half of a
/// small object) and kubectl's copy of what it applied. For objects a cache keeps, and for
/// those a pass reads and then holds while it waits (128 passes at once hold them all).
pub(crate) fn slim_meta(m: &mut kube::api::ObjectMeta) {
    m.managed_fields = None;
    if let Some(a) = &mut m.annotations {
        a.remove(LAST_APPLIED);
        if a.is_empty() {
            m.annotations = None;
        }
    }
}

/// The default of [`Settings::sweep_min_age`].
pub const DEFAULT_SWEEP_MIN_AGE: Duration = Duration::from_secs(600);

/// Everything a reconcile needs.
pub struct Context<C> {
    /// The API client.
    pub client: Client,
    /// GCP.
    pub cloud: C,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes events.k8s.io/v1 Events.
    pub recorder: Recorder,
    /// What this process last applied, so unchanged children are not applied again.
    pub applied: crate::applied::Applied,
    /// The VM reports read recently for Gateways that wait for their VM.
    pub vm_reports: gateway::reports::Reports,
    /// Which Gateways the watches brought news of, so a scheduled poll can tell.
    pub news: gateway::news::News,
}

impl<C: Cloud> Context<C> {
    /// A context with a recorder reporting as `instance`.
    pub fn new(
        client: Client,
        cloud: C,
        settings: Settings,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), FIELD_MANAGER, instance);
        Self {
            applied: crate::applied::Applied::new(settings.resync * crate::applied::RESYNCS),
            vm_reports: gateway::reports::Reports::default(),
            news: gateway::news::News::default(),
            client,
            cloud,
            settings,
            metrics,
            recorder,
        }
    }
}

/// An object the API server accepted but this operator cannot read (an older CRD, a hand
/// edit around validation): say so on the object (`Ready=False/InvalidSpec`) rather than
/// failing in a loop. Written through the dynamic API, since the typed answer would not
/// parse either.
pub async fn report_invalid<K, C>(
    ctx: &Context<C>,
    invalid: &kube::core::error_boundary::InvalidObject,
    kind: &str,
) -> Result<Action, Error>
where
    K: kube::Resource<DynamicType = ()>,
    C: Cloud,
{
    let (Some(name), Some(ns)) = (&invalid.metadata.name, &invalid.metadata.namespace) else {
        return Ok(Action::await_change());
    };
    let ar = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let mut conds = Vec::new();
    set_condition(
        &mut conds,
        crate::api::conditions::READY,
        false,
        crate::api::conditions::reasons::INVALID_SPEC,
        &format!("the {kind} cannot be read: {}", invalid.error),
        invalid.metadata.generation,
    );
    // Read, set, replace: the same `update` on the status subresource as every other
    // status write, so the chart grants no `patch` there.
    let call = |e| Error::Status(KubeCall::new("report invalid object")(e));
    let Some(mut obj) = api.get_opt(name).await.map_err(call)? else {
        return Ok(Action::await_change());
    };
    obj.data["status"]["conditions"] = serde_json::json!(conds);
    api.replace_status(name, &kube::api::PostParams::default(), &obj)
        .await
        .map_err(call)?;
    if kind == "Gateway" {
        ctx.metrics.gateway_state(
            &format!("{ns}/{name}"),
            Some(crate::api::conditions::reasons::INVALID_SPEC),
        );
    }
    Ok(Action::await_change())
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run<C: Cloud + 'static>(
    ctx: Arc<Context<C>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (gateways, writer) = kube::runtime::reflector::store();
    let gw = gateway::run(ctx.clone(), (gateways.clone(), writer), wait(rx.clone()));
    let egw = egress::run(ctx.clone(), wait(rx.clone()));
    let lb = loadbalancer::run(ctx.clone(), wait(rx.clone()));
    let sweep = gateway::sweep_loop(ctx.clone(), gateways, wait(rx));
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    tokio::join!(gw, egw, lb, sweep);
}

/// A namespaced object this operator writes whole (applies, or replaces the status of).
pub trait Written:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Written for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

/// A metadata-only watch of the `K` objects carrying this operator's labels, for a
/// controller's `owns_stream`: every change it sees goes to [`Applied::observed`] first, so
/// the pass it starts applies again what someone else changed or deleted, and is news of
/// the Gateway that owns the object ([`gateway::news`]).
pub fn children_watch<K, C>(
    ctx: &Arc<Context<C>>,
) -> impl futures_util::Stream<
    Item = Result<kube::core::PartialObjectMeta<K>, kube::runtime::watcher::Error>,
> + Send
+ 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: Cloud + 'static,
{
    use futures_util::TryStreamExt as _;
    use kube::runtime::WatchStreamExt as _;
    let ctx = ctx.clone();
    kube::runtime::watcher(
        Api::<kube::core::PartialObjectMeta<K>>::all(ctx.client.clone()),
        kube::runtime::watcher::Config::default().labels(crate::children::MANAGED_SELECTOR),
    )
    .default_backoff()
    .touched_objects()
    .inspect_ok(move |o| {
        ctx.applied.observed(o);
        let meta = o.meta();
        ctx.news.mark_owners(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.owner_references.as_deref().unwrap_or_default(),
        );
    })
}

/// Server-side applies `obj` under the operator's field manager. When `obj` names a
/// controlling owner, an existing object of the same name that lacks that owner is never
/// taken over (a forced apply would adopt it, and the garbage collector would later delete
/// it with the owner): that is a [`ChildrenError::NameCollision`].
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, ChildrenError>
where
    K: Written,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api = Api::<K>::namespaced(client.clone(), ns);
    let owner = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone());
    if let Some(owner) = owner
        && let Some(existing) = api
            .get_opt(&name)
            .await
            .map_err(KubeCall::new("read before apply"))?
    {
        let ours = existing
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner);
        if !ours {
            return Err(ChildrenError::NameCollision {
                kind: K::kind(&()).into_owned(),
                name,
            });
        }
    }
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(KubeCall::new("apply"))?)
}

/// Applies every object of a link in the order of [`LinkChildren`]'s fields: identity and
/// rights, key, config, network policy, pods, budget, then the Service that sends traffic
/// to them. What the spec no longer needs (a budget after scaling to one replica) is
/// pruned by the owner's labels. An object `applied` says is current is not sent again.
pub async fn apply_children(
    client: &Client,
    applied: &Applied,
    p: &LinkParams<'_>,
    c: &LinkChildren,
) -> Result<(), ChildrenError> {
    let ns = p.namespace;
    apply_unless_current(client, applied, ns, &c.service_account).await?;
    apply_unless_current(client, applied, ns, &c.role).await?;
    apply_unless_current(client, applied, ns, &c.role_binding).await?;
    if let Some(key) = &c.key {
        apply_unless_current(client, applied, ns, key).await?;
    }
    apply_unless_current(client, applied, ns, &c.config_map).await?;
    apply_unless_current(client, applied, ns, &c.network_policy).await?;
    apply_unless_current(client, applied, ns, &c.deployment).await?;
    // The link's budget, by the name it has when there is one: a watch event about it
    // (someone created one) then makes the next pass prune again.
    let pruned = applied.key::<PodDisruptionBudget>(ns, &p.name);
    match &c.pdb {
        // The same entry as the budget's own: an applied budget is not `absent`, so
        // dropping to one replica prunes it, and going back applies it again.
        Some(pdb) => apply_unless_current(client, applied, ns, pdb).await?,
        None => {
            let now = Instant::now();
            if !applied.is_current(pruned, applied.absent(), now) {
                prune::<PodDisruptionBudget>(client, p, None).await?;
                applied.record(pruned, applied.absent(), None, now);
            }
        }
    }
    if let Some(svc) = &c.service {
        apply_unless_current(client, applied, ns, svc).await?;
    }
    Ok(())
}

/// [`apply`], unless `applied` says this very object was applied within the resync period
/// and no watch has seen it change since.
async fn apply_unless_current<K>(
    client: &Client,
    applied: &Applied,
    ns: &str,
    obj: &K,
) -> Result<(), ChildrenError>
where
    K: Written,
{
    let key = applied.key::<K>(ns, obj.meta().name.as_deref().unwrap_or_default());
    let digest = applied.digest(obj);
    // Taken before the write: an entry never claims more than it knows.
    let now = Instant::now();
    if digest.is_some_and(|d| applied.is_current(key, d, now)) {
        return Ok(());
    }
    match apply(client, ns, obj).await {
        Ok(done) => {
            if let Some(d) = digest {
                applied.record(key, d, done.meta().resource_version.as_deref(), now);
            }
            Ok(())
        }
        Err(e) => {
            applied.forget(key);
            Err(e)
        }
    }
}

/// Deletes the objects of kind `K` carrying the link's labels, except `keep`.
async fn prune<K>(
    client: &Client,
    p: &LinkParams<'_>,
    keep: Option<&str>,
) -> Result<(), ChildrenError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), p.namespace);
    let selector = crate::children::selector_string(&p.labels());
    let listed = api
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await
        .map_err(KubeCall::new("list for pruning"))?;
    for obj in listed.items {
        let Some(name) = obj.metadata.name else {
            continue;
        };
        if Some(name.as_str()) == keep {
            continue;
        }
        delete_quietly::<K>(client, p.namespace, &name)
            .await
            .map_err(KubeCall::new("prune"))?;
    }
    Ok(())
}

/// Replaces the status on the freshest copy of `obj` (a custom resource's status PUT needs
/// the current resourceVersion, and a PUT, unlike a merge patch, clears fields that became
/// empty); a conflict is an error the next pass retries. A deleted object is left alone.
pub async fn write_status<K>(
    client: &Client,
    obj: &K,
    set: impl FnOnce(&mut K),
) -> Result<(), KubeCall>
where
    K: Written,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let Some(mut fresh) = api
        .get_opt(&name)
        .await
        .map_err(KubeCall::new("read for status"))?
    else {
        return Ok(());
    };
    set(&mut fresh);
    api.replace_status(&name, &kube::api::PostParams::default(), &fresh)
        .await
        .map_err(KubeCall::new("replace status"))?;
    Ok(())
}

/// Whether a Pod's Ready condition is True.
pub fn pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Maps a link Pod to its owner (the `app.kubernetes.io/instance` label, same namespace).
pub fn owner_of_pod<K: Resource>(
    pod: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<kube::runtime::reflector::ObjectRef<K>>
where
    K::DynamicType: Default,
{
    let ns = pod.namespace.clone()?;
    let owner = pod.labels.as_ref()?.get(crate::children::INSTANCE_LABEL)?;
    Some(kube::runtime::reflector::ObjectRef::new(owner).within(&ns))
}

/// Deletes `name`, treating "already gone" as success.
pub async fn delete_quietly<K>(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets condition `type_` in `conditions`, keeping its transition time when the status
/// did not change (so an unchanged status compares equal and is not written).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::now());
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    });
}

/// Removes condition `type_`.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The status of condition `type_` and its reason, if set.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<(&'a str, &'a str)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Publishes an event, logging (not failing) when the API refuses it.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Note {
        warning,
        reason,
        action,
        note: &note,
    };
    if let Err(e) = recorder.publish(ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}
