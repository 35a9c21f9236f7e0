//! The controllers' errors: one enum per reconcile step, each wrapped one-to-one in
//! [`Error`], which says how a failure is reported (the `Ready` reason, the metric labels)
//! and when the object is looked at again. Pure.

use std::time::Duration;

use wgnet_cloud::CloudError;

use crate::api::conditions::reasons;
use crate::keys::KeysError;
use crate::policy::Refusal;

/// A Kubernetes API call that failed, named by what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {}", describe(source))]
pub struct KubeCall {
    /// What the call was for, such as `read Service`.
    pub what: &'static str,
    /// The client's error.
    #[source]
    pub source: kube::Error,
}

impl KubeCall {
    /// Names a failed call.
    pub fn new(what: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| Self { what, source }
    }

    /// The API server's reason (`Forbidden`, `Conflict`, ...) or `Transport`.
    pub fn reason(&self) -> &str {
        match &self.source {
            kube::Error::Api(s) if !s.reason.is_empty() => &s.reason,
            kube::Error::Api(_) => "ApiError",
            _ => "Transport",
        }
    }
}

/// The API server's own words for an answer, or the client's for no answer.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

/// Reading what a reconcile decides on failed (observe step).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// An API read failed.
    #[error("observe: {0}")]
    Kube(#[from] KubeCall),
    /// A paged list did not end within a sane number of pages (a server repeating its
    /// continue token): what it listed is incomplete and is not used.
    #[error("observe: {what}: the list did not end after {pages} pages")]
    Unending {
        /// What was listed.
        what: &'static str,
        /// Pages read.
        pages: usize,
    },
}

/// The object asks for something this operator will not do (validate step). Nothing is
/// created; only an edit of the object (or of the operator's settings) changes the answer.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The admin policy refuses the Gateway (a project, machine type, image, disk size,
    /// the namespace's Gateway count or a DNS name).
    #[error(transparent)]
    Policy(#[from] crate::policy::Refusal),
    /// A `spec.wireguard` field the schema should have refused (an object admitted under
    /// an older CRD).
    #[error("spec.wireguard.{0} is not valid")]
    Wireguard(&'static str),
}

/// The Gateway's key Secret could not be read or created (keys step).
#[derive(Debug, thiserror::Error)]
pub enum KeysStepError {
    /// The API refused a read or the create.
    #[error("ensure key secrets: {0}")]
    Kube(#[from] KubeCall),
    /// The Secret exists but does not hold a whole, consistent set.
    #[error("ensure key secrets: {0}")]
    Keys(#[from] KeysError),
}

/// Applying or pruning the link's objects failed (children step).
#[derive(Debug, thiserror::Error)]
pub enum ChildrenError {
    /// The API server refused or could not be reached.
    #[error("apply link objects: {0}")]
    Kube(#[from] KubeCall),
    /// An object of that kind and name exists and is not this owner's.
    #[error(
        "apply link objects: a {kind} named {name:?} already exists and does not belong to this object; it is left untouched (rename or delete one of them)"
    )]
    NameCollision {
        /// The child's kind.
        kind: String,
        /// The child's name.
        name: String,
    },
}

/// A reconcile failed; [`Error::reason`] becomes `Ready=False/<reason>` with the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the inputs.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The spec asks for what this operator will not do.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// The key Secret.
    #[error(transparent)]
    Keys(#[from] KeysStepError),
    /// GCP; the status already carries it (`CloudReady` names GCP's reason).
    #[error("ensure cloud resources: {0}")]
    Cloud(CloudError),
    /// The link's objects.
    #[error(transparent)]
    Children(#[from] ChildrenError),
    /// The DNSEndpoint.
    #[error("dns endpoint: {0}")]
    Dns(KubeCall),
    /// Writing status.
    #[error("write status: {0}")]
    Status(KubeCall),
    /// Adding or removing the finalizer.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Deleting GCP resources failed; the status already says so.
    #[error("delete cloud resources: {0}")]
    Teardown(CloudError),
    /// Not a failure: the pass began from an older copy of the object than the API server
    /// holds (its finalizers changed meanwhile, so the finalizer helper's guarded patch was
    /// refused); the next pass begins from the newer copy.
    #[error("the object's finalizers changed while the pass began; looking again")]
    Stale,
    /// Not a failure: GCP resources are still being deleted, so the finalizer stays.
    #[error("waiting for GCP resources to be deleted: {waiting}")]
    Deleting {
        /// What is still there.
        waiting: String,
        /// When to look again.
        after: Duration,
    },
}

/// The first look again after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The look again after [`Error::Stale`]: the watch delivers the newer copy within
/// moments, and a watch that never did would still cost only one refused patch a second.
pub const STALE_RETRY: Duration = Duration::from_secs(1);

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            // The helper's JSON patch tests the finalizers it saw: 422 when they changed
            // (a pass that ran moments earlier added ours), 409 on a version conflict.
            F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                if s.code == 409 || s.code == 422 =>
            {
                Self::Stale
            }
            other => Self::Finalizer(other.to_string()),
        }
    }
}

impl Error {
    /// The `step` label of `wgnet_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Observe(_) => "observe",
            Self::Validate(_) => "validate",
            Self::Keys(_) => "keys",
            Self::Cloud(_) => "cloud",
            Self::Children(_) => "children",
            Self::Dns(_) => "dns",
            Self::Status(_) => "status",
            Self::Finalizer(_) | Self::Stale => "finalizer",
            Self::Teardown(_) | Self::Deleting { .. } => "teardown",
        }
    }

    /// The `reason` label of `wgnet_reconcile_errors_total`: GCP's classified reason, the
    /// API server's reason, or the failure's own name.
    pub fn reason_label(&self) -> String {
        match self {
            Self::Cloud(e) | Self::Teardown(e) => e.reason_code().to_owned(),
            Self::Observe(ObserveError::Kube(k))
            | Self::Keys(KeysStepError::Kube(k))
            | Self::Children(ChildrenError::Kube(k))
            | Self::Dns(k)
            | Self::Status(k) => k.reason().to_owned(),
            Self::Keys(KeysStepError::Keys(_)) => "InvalidKeySecret".into(),
            Self::Observe(ObserveError::Unending { .. }) => "UnendingList".into(),
            Self::Validate(_) => self.reason().into(),
            Self::Children(ChildrenError::NameCollision { .. }) => reasons::NAME_COLLISION.into(),
            Self::Finalizer(_) => "Finalizer".into(),
            Self::Stale => "Stale".into(),
            Self::Deleting { .. } => reasons::TERMINATING.into(),
        }
    }

    /// The `Ready` reason it is reported under: `ReconcileFailed` unless the failure has a
    /// name of its own.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Validate(ValidateError::Policy(Refusal::Project { .. })) => {
                reasons::PROJECT_NOT_ALLOWED
            }
            Self::Validate(ValidateError::Policy(_)) => reasons::POLICY_REFUSED,
            Self::Validate(ValidateError::Wireguard(_)) => reasons::INVALID_SPEC,
            Self::Children(ChildrenError::NameCollision { .. }) => reasons::NAME_COLLISION,
            Self::Teardown(_) | Self::Deleting { .. } => reasons::TERMINATING,
            _ => reasons::RECONCILE_FAILED,
        }
    }

    /// Whether another pass can succeed without an edit of the object. GCP errors count as
    /// retryable even when GCP's request cannot succeed as it stands (a denied permission):
    /// a human fixes those outside the cluster, so they are looked at again, slowly.
    pub fn is_retryable(&self) -> bool {
        // The namespace's Gateway count changes without an edit of this one (an older
        // Gateway is deleted), so that refusal is looked at again.
        !matches!(self, Self::Validate(_)) || self.over_count()
    }

    fn over_count(&self) -> bool {
        matches!(
            self,
            Self::Validate(ValidateError::Policy(Refusal::Count { .. }))
        )
    }

    /// The longest wait before the next pass: GCP's retry policy for GCP errors, a short
    /// one for the API server; `None` when only an edit helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            _ if !self.is_retryable() => None,
            Self::Deleting { after, .. } => Some(*after),
            Self::Stale => Some(STALE_RETRY),
            Self::Cloud(e) | Self::Teardown(e) => Some(e.retry_after()),
            // Another Gateway's deletion is not watched from this one: looked at slowly.
            _ if self.over_count() => Some(Duration::from_secs(300)),
            // Someone must rename or delete the other object, which is not watched.
            Self::Children(ChildrenError::NameCollision { .. }) => Some(Duration::from_secs(300)),
            _ => Some(FIRST_RETRY),
        }
    }

    /// Whether the failure is already in the status the pass wrote (so the reconcile
    /// wrapper neither rewrites `Ready` nor publishes a second event).
    pub fn in_status(&self) -> bool {
        matches!(
            self,
            Self::Cloud(_) | Self::Teardown(_) | Self::Deleting { .. }
        )
    }

    /// Whether it is a failure at all (a deletion still in progress, or a pass that began
    /// from a stale copy, is not).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Deleting { .. } | Self::Stale)
    }
}

/// How soon to look again after a failure that has lasted `failing` so far: quickly at
/// first (a permission granted a minute later heals within seconds), then half the time
/// already waited, so a lasting failure costs a call every few minutes, never a tight loop.
pub fn backoff(failing: Duration, cap: Duration) -> Duration {
    (failing / 2).clamp(FIRST_RETRY.min(cap), cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::denied;

    /// The finalizer helper's refused patch (the pass saw finalizers that changed since) is
    /// no failure: not reported in status, looked at again at once; other refusals are.
    #[test]
    fn a_finalizer_patch_refused_for_a_stale_copy_is_not_a_failure() {
        use kube::runtime::finalizer::Error as F;
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "code": code, "reason": "Invalid",
                    "message": "the server rejected our request due to an error in our request",
                }))
                .expect("a Status"),
            ))
        };
        for e in [F::AddFinalizer(api(422)), F::RemoveFinalizer(api(409))] {
            let e = Error::from(e);
            assert!(matches!(e, Error::Stale), "{e}");
            assert!(!e.is_failure());
            assert_eq!(e.retry_after(), Some(STALE_RETRY));
        }
        let denied = Error::from(F::<Error>::AddFinalizer(api(403)));
        assert!(matches!(denied, Error::Finalizer(_)) && denied.is_failure());
        let inner = Error::from(F::ApplyFailed(Error::Dns(KubeCall {
            what: "apply DNSEndpoint",
            source: api(500),
        })));
        assert!(matches!(inner, Error::Dns(_)));
    }

    #[test]
    fn backoff_starts_quick_and_grows_to_the_cap() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(Duration::ZERO, cap), FIRST_RETRY);
        assert_eq!(
            backoff(Duration::from_secs(60), cap),
            Duration::from_secs(30)
        );
        assert_eq!(backoff(Duration::from_secs(3600), cap), cap);
        // A cap below the first retry wins.
        assert_eq!(
            backoff(Duration::from_secs(3600), Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        // Fifteen minutes of a lasting denial cost about a dozen passes, not hundreds.
        let (mut t, mut passes) = (Duration::ZERO, 0);
        while t < Duration::from_secs(900) {
            t += backoff(t, cap);
            passes += 1;
        }
        assert!((8..=20).contains(&passes), "{passes}");
    }

    #[test]
    fn gcp_errors_carry_gcps_reason_and_retry_policy() {
        let e = Error::Cloud(denied());
        assert_eq!(e.metric_label(), "cloud");
        assert_eq!(e.reason_label(), "PermissionDenied");
        assert_eq!(e.reason(), reasons::RECONCILE_FAILED);
        assert!(e.is_retryable() && e.in_status() && e.is_failure());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(300)));
        assert!(
            e.to_string()
                .starts_with("ensure cloud resources: compute insert instance")
        );
    }

    #[test]
    fn validation_waits_for_an_edit_and_collisions_have_their_own_reason() {
        let e = Error::from(ValidateError::Policy(Refusal::Project {
            project: "other".into(),
            allowed: "p1, p2".into(),
        }));
        assert!(!e.is_retryable());
        assert_eq!(e.retry_after(), None);
        assert_eq!(e.reason(), "ProjectNotAllowed");
        let e = Error::from(ChildrenError::NameCollision {
            kind: "ConfigMap".into(),
            name: "edge-link".into(),
        });
        assert_eq!(e.reason(), reasons::NAME_COLLISION);
        assert_eq!(e.reason_label(), reasons::NAME_COLLISION);
        assert!(e.is_retryable());
        let e = Error::Deleting {
            waiting: "instance wg-x".into(),
            after: Duration::from_millis(10),
        };
        assert!(!e.is_failure() && e.in_status());
    }
}
