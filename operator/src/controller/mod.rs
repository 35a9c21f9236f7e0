//! The controllers: [`gateway`] reconciles Gateways (GCP through the [`Cloud`] trait, the
//! link's objects through the API server), [`egress`] reconciles EgressGateways.
//!
//! I/O boundary: the Kubernetes API through `kube::Client` and GCP through the `Cloud`
//! implementation handed in; the decisions in between (forward classification, key sets,
//! object builders, status) are pure functions in sibling modules.

pub mod egress;
pub mod gateway;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wgnet_cloud::Cloud;

use crate::api::conditions::reasons;
use crate::children::{FIELD_MANAGER, LinkImage};
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
    /// Projects Gateways may use; empty allows any the credentials reach.
    pub allowed_projects: Vec<String>,
    /// Projects the orphan sweep looks at besides those of live Gateways.
    pub sweep_projects: Vec<String>,
}

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
    /// Gateways whose last pass met a GCP error, and until when to leave them alone.
    pub holds: Holds,
}

/// Per-object "do not call GCP again before" times after GCP errors.
///
/// A failed pass writes status, and that write is itself a watch event that would start the
/// next pass at once, overriding the error's retry policy (measured: an instance insert
/// refused with 400 was retried about 1,350 times per Gateway in 15 minutes). A hold grows
/// with consecutive failures (5 s, 10 s, 20 s, ...) up to the error's retry policy, so a
/// quickly fixed permission heals quickly and a lasting one costs a call every few minutes.
/// It ends early when the object's generation changes (the user edited it).
#[derive(Debug, Default)]
pub struct Holds(std::sync::Mutex<std::collections::HashMap<String, Hold>>);

/// One object's hold.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    generation: Option<i64>,
    until: Instant,
    failures: u32,
}

/// The first hold after an error.
const FIRST_HOLD: Duration = Duration::from_secs(5);

impl Holds {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Hold>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Another failure of `key` at `generation`: holds it for the next step of the backoff,
    /// at most `cap`, and returns that time.
    pub fn hold(&self, key: &str, generation: Option<i64>, cap: Duration) -> Duration {
        let mut map = self.map();
        let failures = map
            .get(key)
            .filter(|h| h.generation == generation)
            .map_or(1, |h| h.failures.saturating_add(1));
        let delay = FIRST_HOLD
            .saturating_mul(1u32 << (failures - 1).min(16))
            .min(cap);
        map.insert(
            key.to_owned(),
            Hold {
                generation,
                until: Instant::now() + delay,
                failures,
            },
        );
        delay
    }

    /// Releases `key` (its last pass had no GCP error).
    pub fn release(&self, key: &str) {
        self.map().remove(key);
    }

    /// How long `key` at `generation` is still held, if it is. An edited object (another
    /// generation) is released.
    pub fn remaining(&self, key: &str, generation: Option<i64>) -> Option<Duration> {
        let mut map = self.map();
        let h = *map.get(key)?;
        if h.generation != generation {
            map.remove(key);
            return None;
        }
        let left = h.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
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
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance,
            },
        );
        Self {
            client,
            cloud,
            settings,
            metrics,
            recorder,
            holds: Holds::default(),
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
) -> Result<Action, StepError>
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
        "InvalidSpec",
        &format!("the {kind} cannot be read: {}", invalid.error),
        invalid.metadata.generation,
    );
    let patch = serde_json::json!({"status": {"conditions": conds}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| StepError::kube("report invalid object", e))?;
    if kind == "Gateway" {
        ctx.metrics
            .gateway_state(&format!("{ns}/{name}"), Some("InvalidSpec"));
    }
    Ok(Action::await_change())
}

/// A reconcile step that failed; becomes `Ready=False/<reason>` with `"<step>: <message>"`.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct StepError {
    /// What was being done, in the Go operator's words where it had them.
    pub step: &'static str,
    /// Why it failed (never key material).
    pub message: String,
    /// The `Ready` reason it is reported under: `ReconcileFailed` unless the failure has a
    /// name of its own (`NameCollision`).
    pub reason: &'static str,
}

impl StepError {
    /// A failure with the generic `ReconcileFailed` reason.
    pub fn new(step: &'static str, message: String) -> Self {
        Self {
            step,
            message,
            reason: reasons::RECONCILE_FAILED,
        }
    }

    /// Wraps a Kubernetes API error.
    pub fn kube(step: &'static str, e: kube::Error) -> Self {
        Self::new(
            step,
            match e {
                kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
                other => other.to_string(),
            },
        )
    }

    /// Wraps a failed apply of a child object.
    pub fn apply(step: &'static str, e: ApplyError) -> Self {
        match e {
            ApplyError::Kube(e) => Self::kube(step, e),
            collision @ ApplyError::NameCollision { .. } => Self {
                step,
                message: collision.to_string(),
                reason: reasons::NAME_COLLISION,
            },
        }
    }
}

/// Why a child object was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// An object of that kind and name exists and is not this owner's.
    #[error(
        "a {kind} named {name:?} already exists and does not belong to this object; it is left untouched (rename or delete one of them)"
    )]
    NameCollision {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
    },
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
    let gw = gateway::run(ctx.clone(), wait(rx.clone()));
    let egw = egress::run(ctx.clone(), wait(rx.clone()));
    let sweep = gateway::sweep_loop(ctx.clone(), wait(rx));
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    tokio::join!(gw, egw, sweep);
}

/// Server-side applies `obj` under the operator's field manager. When `obj` names a
/// controlling owner, an existing object of the same name that lacks that owner is never
/// taken over (a forced apply would adopt it, and the garbage collector would later delete
/// it with the owner): that is an [`ApplyError::NameCollision`].
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, ApplyError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
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
        && let Some(existing) = api.get_opt(&name).await?
    {
        let ours = existing
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner);
        if !ours {
            return Err(ApplyError::NameCollision {
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
        .await?)
}

/// Replaces the status on the freshest copy of `obj` (a custom resource's status PUT needs
/// the current resourceVersion, and a PUT, unlike a merge patch, clears fields that became
/// empty); a conflict is an error the next pass retries. A deleted object is left alone.
pub async fn write_status<K>(
    client: &Client,
    obj: &K,
    set: impl FnOnce(&mut K),
) -> Result<(), StepError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let Some(mut fresh) = api
        .get_opt(&name)
        .await
        .map_err(|e| StepError::kube("write status", e))?
    else {
        return Ok(());
    };
    set(&mut fresh);
    api.replace_status(&name, &kube::api::PostParams::default(), &fresh)
        .await
        .map_err(|e| StepError::kube("write status", e))?;
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
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Option<kube::runtime::reflector::ObjectRef<K>>
where
    K::DynamicType: Default,
{
    let ns = pod.metadata.namespace.clone()?;
    let owner = pod
        .metadata
        .labels
        .as_ref()?
        .get(crate::children::INSTANCE_LABEL)?;
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
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

/// Labels selecting a map of `key=value` pairs, for watcher configs.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn a_hold_grows_with_failures_up_to_the_cap_and_ends_on_release_or_an_edit() {
        let h = Holds::default();
        let cap = Duration::from_secs(300);
        assert_eq!(h.remaining("apps/edge", Some(1)), None);
        let steps: Vec<u64> = (0..8)
            .map(|_| h.hold("apps/edge", Some(1), cap).as_secs())
            .collect();
        assert_eq!(steps, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert!(h.remaining("apps/edge", Some(1)).is_some());
        assert_eq!(h.remaining("apps/other", Some(1)), None);
        // The user edited the Gateway: act on the new spec at once, and start over.
        assert_eq!(h.remaining("apps/edge", Some(2)), None);
        assert_eq!(h.hold("apps/edge", Some(2), cap).as_secs(), 5);
        h.release("apps/edge");
        assert_eq!(h.remaining("apps/edge", Some(2)), None);
        assert_eq!(
            h.hold("apps/edge", Some(2), cap).as_secs(),
            5,
            "a release resets the backoff"
        );
        // A policy shorter than the backoff caps it.
        assert_eq!(h.hold("apps/q", None, Duration::from_secs(2)).as_secs(), 2);
    }
}
