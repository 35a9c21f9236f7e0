//! Typed GCP errors with the predicates the reconciler decides on. Pure.

use std::time::Duration;

/// An error from the cloud layer. Messages carry GCP's own wording and never secrets.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CloudError {
    /// GCP answered with an error status.
    #[error("{api} {method} {what}: HTTP {status} {reason}: {message}")]
    Api {
        /// `compute`, `iam` or `secretmanager`.
        api: &'static str,
        /// What was being done, such as `insert firewall`.
        method: &'static str,
        /// The resource name.
        what: String,
        /// HTTP status.
        status: u16,
        /// Compute `errors[].reason` or the RPC status name.
        reason: String,
        /// Google's message.
        message: String,
    },
    /// No answer: connection refused or dropped, or a timeout.
    #[error("{api} {method} {what}: no answer from GCP: {message}")]
    Transport {
        /// API family.
        api: &'static str,
        /// What was being done.
        method: &'static str,
        /// The resource name.
        what: String,
        /// What went wrong, from the HTTP client.
        message: String,
    },
    /// Credentials could not produce a token.
    #[error("GCP credentials: {0}")]
    Auth(String),
    /// A resource with our name exists but does not belong to this gateway.
    #[error(
        "GCP {kind} {name} already exists and does not belong to this gateway ({detail}); delete or rename it"
    )]
    NameCollision {
        /// Resource kind.
        kind: &'static str,
        /// Resource name.
        name: String,
        /// What we found instead of our marker.
        detail: String,
    },
    /// A long-running operation finished with an error.
    #[error("GCP operation {operation} ({what}) failed: {message}")]
    Operation {
        /// Operation name.
        operation: String,
        /// What it was doing.
        what: String,
        /// GCP's error code.
        code: String,
        /// GCP's error message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("{0}")]
    Protocol(String),
    /// Bad configuration of this process.
    #[error("configuration: {0}")]
    Config(String),
}

impl CloudError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Self::Api { reason, .. } => reason,
            Self::Operation { code, .. } => code,
            _ => "",
        }
    }

    /// 404 for the resource asked for (not for its project: see
    /// [`Self::is_project_not_found`]).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404) && !self.is_project_not_found()
    }

    /// 404 for the project itself (it does not exist, or was deleted), which must not be
    /// read as "the resource is absent": creating would fail for ever, and a delete would
    /// believe everything gone. GCP gives it no code of its own; its message names the
    /// project alone (`The resource 'projects/x' was not found`), where a missing resource
    /// is named by its full path.
    pub fn is_project_not_found(&self) -> bool {
        let Self::Api {
            status: 404,
            message,
            ..
        } = self
        else {
            return false;
        };
        message.split("'projects/").skip(1).any(|rest| {
            rest.split_once('\'')
                .is_some_and(|(id, _)| !id.is_empty() && !id.contains('/'))
        })
    }

    /// 409 alreadyExists / ALREADY_EXISTS.
    pub fn is_already_exists(&self) -> bool {
        self.status() == Some(409) && !self.is_aborted()
    }

    /// 409 ABORTED: a concurrent change (stale IAM policy etag).
    pub fn is_aborted(&self) -> bool {
        self.status() == Some(409) && self.reason().eq_ignore_ascii_case("aborted")
    }

    /// 412: a stale fingerprint.
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(412)
    }

    /// 400 resourceInUseByAnotherResource.
    pub fn is_in_use(&self) -> bool {
        self.reason() == "resourceInUseByAnotherResource"
            || self.reason() == "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"
    }

    /// 400 from `setIamPolicy` naming a service account the policy's service does not
    /// know yet (IAM's eventual consistency after a create). Google gives this case no
    /// code of its own (the status is INVALID_ARGUMENT), so this is the one predicate that
    /// reads Google's message; it lives here, with the other classifications.
    pub fn is_unknown_member(&self) -> bool {
        match self {
            Self::Api {
                status: 400,
                message,
                ..
            } => message.starts_with("Service account ") && message.ends_with(" does not exist."),
            _ => false,
        }
    }

    /// 403 for a missing permission (not a rate limit).
    pub fn is_permission_denied(&self) -> bool {
        self.status() == Some(403) && !self.is_rate_limited()
    }

    /// 429, or 403 rateLimitExceeded (Compute's quota answer).
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
            || (self.status() == Some(403)
                && matches!(
                    self.reason(),
                    "rateLimitExceeded" | "userRateLimitExceeded" | "RESOURCE_EXHAUSTED"
                ))
    }

    /// Quota or rate limits of any kind.
    pub fn is_quota(&self) -> bool {
        self.is_rate_limited()
            || self.reason().contains("QUOTA")
            || self.reason() == "quotaExceeded"
    }

    /// The zone has no capacity for the VM right now (`ZONE_RESOURCE_POOL_EXHAUSTED`, and
    /// its `_WITH_DETAILS` form; common for Spot VMs, on insert and on start).
    pub fn is_capacity_exhausted(&self) -> bool {
        self.reason().starts_with("ZONE_RESOURCE_POOL_EXHAUSTED")
    }

    /// 401: the token was rejected.
    pub fn is_unauthenticated(&self) -> bool {
        self.status() == Some(401)
    }

    /// 400: the request itself is wrong; retrying cannot help.
    pub fn is_invalid_argument(&self) -> bool {
        self.status() == Some(400) && !self.is_in_use()
    }

    /// Worth retrying the same request: rate limits, 5xx and no answer at all.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { status, .. } => *status >= 500 || self.is_rate_limited() || *status == 401,
            Self::Transport { .. } => true,
            Self::Auth(_) => true,
            _ => false,
        }
    }

    /// A short machine-readable reason for conditions and metrics.
    pub fn reason_code(&self) -> &'static str {
        if self.is_permission_denied() {
            "PermissionDenied"
        } else if self.is_quota() {
            "QuotaExceeded"
        } else if self.is_capacity_exhausted() {
            "CapacityExhausted"
        } else if self.is_project_not_found() {
            "ProjectNotFound"
        } else if matches!(self, Self::NameCollision { .. }) {
            "NameCollision"
        } else if self.is_invalid_argument() {
            "InvalidArgument"
        } else if matches!(self, Self::Auth(_) | Self::Config(_)) || self.is_unauthenticated() {
            "CredentialsInvalid"
        } else if matches!(self, Self::Operation { .. }) {
            "OperationFailed"
        } else {
            "CloudUnavailable"
        }
    }

    /// How long to wait before the reconcile that retries this error.
    pub fn retry_after(&self) -> Duration {
        if self.is_permission_denied() || self.is_invalid_argument() || self.is_project_not_found()
        {
            // A human must act; look again now and then, never in a tight loop.
            Duration::from_secs(300)
        } else if self.is_quota() || self.is_capacity_exhausted() {
            // Compute quotas refill at the start of each minute; a zone's capacity comes
            // back on its own, so a minute apart is soon enough and never a tight loop.
            Duration::from_secs(60)
        } else {
            Duration::from_secs(10)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, reason: &str) -> CloudError {
        CloudError::Api {
            api: "compute",
            method: "insert instance",
            what: "wg-x".into(),
            status,
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn predicates() {
        assert!(api(404, "notFound").is_not_found());
        assert!(api(409, "alreadyExists").is_already_exists());
        assert!(api(409, "ABORTED").is_aborted() && !api(409, "ABORTED").is_already_exists());
        assert!(api(403, "rateLimitExceeded").is_rate_limited());
        assert!(api(403, "rateLimitExceeded").is_retryable());
        assert!(!api(403, "rateLimitExceeded").is_permission_denied());
        assert!(api(403, "forbidden").is_permission_denied());
        assert!(!api(403, "forbidden").is_retryable());
        assert!(!api(400, "invalid").is_retryable());
        assert!(api(503, "backendError").is_retryable());
        assert!(api(429, "RESOURCE_EXHAUSTED").is_quota());
        assert!(api(400, "resourceInUseByAnotherResource").is_in_use());
        assert_eq!(api(403, "forbidden").reason_code(), "PermissionDenied");
        let unknown = CloudError::Api {
            api: "secretmanager",
            method: "set secret policy",
            what: "wg-x".into(),
            status: 400,
            reason: "INVALID_ARGUMENT".into(),
            message: "Service account wg-x@p.iam.gserviceaccount.com does not exist.".into(),
        };
        assert!(unknown.is_unknown_member());
        assert!(!api(400, "INVALID_ARGUMENT").is_unknown_member());
    }
}
