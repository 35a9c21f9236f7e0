//! The HTTP layer: authorized JSON calls to Compute, IAM and Secret Manager with retries of
//! transient failures, Google error bodies turned into [`CloudError`]s, and a per-call
//! observer for metrics and benchmarks.
//!
//! I/O boundary: every request to GCP (or the emulator) leaves through [`Api::call`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable as _};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CloudError;

/// OAuth scope for every call.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Base URLs of the APIs; tests and the sandbox point them at the emulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Compute v1, ending in `/compute/v1/`.
    pub compute: String,
    /// IAM v1, ending in `/v1/`.
    pub iam: String,
    /// Secret Manager v1, ending in `/v1/`.
    pub secrets: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            compute: "https://compute.googleapis.com/compute/v1/".to_owned(),
            iam: "https://iam.googleapis.com/v1/".to_owned(),
            secrets: "https://secretmanager.googleapis.com/v1/".to_owned(),
        }
    }
}

/// Where tokens come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A service-account JSON key file (its `token_uri` decides the token endpoint).
    KeyFile(PathBuf),
    /// Application default credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud, or the
    /// metadata server (GKE workload identity).
    Ambient,
}

/// Retries of transient failures inside one call.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// First backoff.
    pub min_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// Timeout of one HTTP exchange.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retries: 5,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The API family of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Compute Engine.
    Compute,
    /// IAM.
    Iam,
    /// Secret Manager.
    Secrets,
}

impl Service {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Compute => "compute",
            Self::Iam => "iam",
            Self::Secrets => "secretmanager",
        }
    }
}

/// Which failures a call may retry by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reads, deletes and Compute inserts carrying a `requestId`: retry every transient
    /// failure, including lost answers.
    Transient,
    /// Writes that are not idempotent (a second `addVersion` adds a second version): retry
    /// only error answers, never a lost answer, which the next reconcile sorts out by reading.
    AnsweredOnly,
}

/// One finished call, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// API family.
    pub api: &'static str,
    /// What was done, such as `get instance`.
    pub op: &'static str,
    /// HTTP method.
    pub method: String,
    /// Status (0 when there was no answer).
    pub status: u16,
    /// Round-trip time.
    pub elapsed: Duration,
}

/// Receives every call (each retry counts).
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// Which connections a call goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Single resources, operations, writes: small answers over pooled connections.
    Calls,
    /// Pages of lists (up to megabytes each: a page of instances carries their startup
    /// scripts) over connections of their own, of which at most one per host is kept idle. An
    /// HTTP/1 connection keeps the read buffer its largest answer grew (up to 400 KB in
    /// hyper) for as long as it lives: pooled with the calls, every connection a list
    /// page ever passed through held one, 14 MB of the operator's peak heap at 2,000
    /// Gateways.
    Bulk,
}

/// One request, as each attempt of it is sent.
#[derive(Clone, Debug)]
struct Call<'a> {
    lane: Lane,
    service: Service,
    method: Method,
    path: &'a str,
    body: Option<&'a Value>,
}

/// Authorized JSON calls.
pub struct Api {
    http: reqwest::Client,
    /// The connections of [`Lane::Bulk`].
    bulk: reqwest::Client,
    tokens: Arc<dyn gcp_auth::TokenProvider>,
    endpoints: Endpoints,
    retry: RetryPolicy,
    observer: Option<CallObserver>,
    budget: crate::budget::RequestBudget,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Builds the client and loads credentials.
    pub async fn new(
        credentials: &Credentials,
        endpoints: Endpoints,
        retry: RetryPolicy,
        observer: Option<CallObserver>,
        budget: crate::budget::Budget,
    ) -> Result<Self, CloudError> {
        let tokens: Arc<dyn gcp_auth::TokenProvider> = match credentials {
            Credentials::KeyFile(path) => Arc::new(
                gcp_auth::CustomServiceAccount::from_file(path).map_err(|e| {
                    CloudError::Config(format!("cannot use the key file {}: {e}", path.display()))
                })?,
            ),
            Credentials::Ambient => gcp_auth::provider()
                .await
                .map_err(|e| CloudError::Config(format!("no ambient GCP credentials: {e}")))?,
        };
        let client = |idle: usize| {
            reqwest::Client::builder()
                .timeout(retry.request_timeout)
                .pool_max_idle_per_host(idle)
                .user_agent(concat!("wgnet-operator/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| CloudError::Config(format!("HTTP client: {e}")))
        };
        Ok(Self {
            http: client(usize::MAX)?,
            bulk: client(1)?,
            tokens,
            endpoints,
            retry,
            observer,
            budget: crate::budget::RequestBudget::new(budget),
        })
    }

    /// Whether `project`'s request budget has room to spare (see
    /// [`crate::budget::RequestBudget::has_spare`]).
    pub fn has_spare(&self, project: &str) -> bool {
        self.budget.has_spare(project, Instant::now())
    }

    /// Replaces the request budget (buckets start full again).
    pub fn set_budget(&mut self, budget: crate::budget::Budget) {
        self.budget = crate::budget::RequestBudget::new(budget);
    }

    fn url(&self, service: Service, path: &str) -> String {
        let base = match service {
            Service::Compute => &self.endpoints.compute,
            Service::Iam => &self.endpoints.iam,
            Service::Secrets => &self.endpoints.secrets,
        };
        format!("{}{}", base.trim_end_matches('/'), format_args!("/{path}"))
    }

    /// One JSON call with retries, its answer read as a `T` straight from the bytes (no
    /// intermediate `Value`: a page of a hundred instances is megabytes of JSON, and a
    /// `Value` tree of it several times that). `what` names the resource for error messages.
    #[allow(clippy::too_many_arguments)]
    pub async fn call<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
        op: &'static str,
        what: &str,
        retry: Retry,
    ) -> Result<T, CloudError> {
        let call = Call {
            lane: Lane::Calls,
            service,
            method,
            path,
            body,
        };
        self.exchange(call, op, what, retry).await
    }

    /// One page of a list (a GET, retried like any read), over the list pages' own
    /// connections ([`Lane::Bulk`]).
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        op: &'static str,
        what: &str,
    ) -> Result<T, CloudError> {
        let call = Call {
            lane: Lane::Bulk,
            service,
            method: Method::GET,
            path,
            body: None,
        };
        self.exchange(call, op, what, Retry::Transient).await
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        op: &'static str,
        what: &str,
        retry: Retry,
    ) -> Result<T, CloudError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let attempt = || self.once(call.clone(), op, what);
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &CloudError| match retry {
                Retry::Transient => e.is_retryable(),
                Retry::AnsweredOnly => {
                    e.is_retryable() && !matches!(e, CloudError::Transport { .. })
                }
            })
            .notify(|e: &CloudError, after: Duration| {
                tracing::debug!(error = %e, ?after, "retrying GCP call");
            })
            .await
    }

    async fn once<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        op: &'static str,
        what: &str,
    ) -> Result<T, CloudError> {
        let Call {
            lane,
            service,
            method,
            path,
            body,
        } = call;
        // Every attempt, retries included, spends from its project's budget.
        if let Some(project) = crate::budget::project_of(path) {
            self.budget.acquire(project).await;
        }
        let token = self
            .tokens
            .token(&[SCOPE])
            .await
            .map_err(|e| CloudError::Auth(e.to_string()))?;
        let http = match lane {
            Lane::Calls => &self.http,
            Lane::Bulk => &self.bulk,
        };
        let mut req = http
            .request(method.clone(), self.url(service, path))
            .bearer_auth(token.as_str());
        if let Some(b) = body {
            req = req.json(b);
        }
        let started = Instant::now();
        let result = req.send().await;
        let (status, outcome) = match result {
            Err(e) => (
                0,
                Err(CloudError::Transport {
                    api: service.name(),
                    method: op,
                    what: what.to_owned(),
                    message: transport_message(&e),
                }),
            ),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| CloudError::Transport {
                    api: service.name(),
                    method: op,
                    what: what.to_owned(),
                    message: transport_message(&e),
                });
                match bytes {
                    Err(e) => (0, Err(e)),
                    Ok(bytes) if (200..300).contains(&status) => {
                        // An empty answer (a DELETE's) reads as an empty object.
                        let json: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
                        (status, decode_answer(json, service, op, what))
                    }
                    Ok(bytes) => (status, Err(api_error(service, op, what, status, &bytes))),
                }
            }
        };
        if let Some(obs) = &self.observer {
            obs(&CallRecord {
                api: service.name(),
                op,
                method: method.to_string(),
                status,
                elapsed: started.elapsed(),
            });
        }
        outcome
    }
}

/// An answer as a `T`: unreadable JSON and JSON of another shape are both protocol errors,
/// named by the call and where the error is. serde's message for a value of the wrong type
/// quotes the value, and a Secret Manager answer holds key material: never shown.
fn decode_answer<T: DeserializeOwned>(
    json: &[u8],
    service: Service,
    op: &str,
    what: &str,
) -> Result<T, CloudError> {
    serde_json::from_slice(json).map_err(|e| {
        let api = service.name();
        CloudError::Protocol(match e.classify() {
            serde_json::error::Category::Data => format!(
                "{api} {op} {what}: GCP's answer does not have the expected shape (at line {}, column {})",
                e.line(),
                e.column()
            ),
            _ => format!(
                "{api} {op} {what}: unreadable answer ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    })
}

fn transport_message(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL, which names project and resources but never
    // credentials (tokens travel in headers).
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Google's error body: `{"error": {"code", "message", "status", "errors": [{"reason"}],
/// "details": [{"reason"}]}}` (Compute fills `errors`, the RPC-style APIs `status` and
/// `details`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ErrorBody {
    error: ErrorStatus,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ErrorStatus {
    message: Option<String>,
    status: Option<String>,
    errors: Vec<ErrorReason>,
    details: Vec<ErrorReason>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ErrorReason {
    reason: Option<String>,
}

/// Turns a Google error body into a [`CloudError::Api`].
fn api_error(
    service: Service,
    op: &'static str,
    what: &str,
    status: u16,
    body: &[u8],
) -> CloudError {
    let e = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let message = e
        .message
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let first = |l: &[ErrorReason]| l.first().and_then(|r| r.reason.clone());
    let reason = first(&e.errors)
        .or(e.status)
        .or_else(|| first(&e.details))
        .unwrap_or_default();
    CloudError::Api {
        api: service.name(),
        method: op,
        what: what.to_owned(),
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(body: &str) -> (String, String) {
        match api_error(
            Service::Compute,
            "insert instance",
            "wg-x",
            400,
            body.as_bytes(),
        ) {
            CloudError::Api {
                reason, message, ..
            } => (reason, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn google_error_bodies_give_their_reason_and_message() {
        // Compute: errors[].reason.
        assert_eq!(
            reason(
                r#"{"error":{"code":403,"message":"denied","errors":[{"reason":"forbidden"}]}}"#
            ),
            ("forbidden".into(), "denied".into())
        );
        // RPC style: status, then details[].reason.
        assert_eq!(
            reason(r#"{"error":{"code":409,"message":"m","status":"ABORTED"}}"#).0,
            "ABORTED"
        );
        assert_eq!(
            reason(r#"{"error":{"code":429,"message":"m","details":[{"reason":"RATE_LIMIT_EXCEEDED"}]}}"#).0,
            "RATE_LIMIT_EXCEEDED"
        );
        // Not Google's shape (a proxy's page): the start of the body, no reason.
        assert_eq!(
            reason("<html>bad gateway</html>"),
            (String::new(), "<html>bad gateway</html>".into())
        );
    }

    /// An answer of the wrong shape (a Secret Manager payload where a number was expected)
    /// or cut short is an error that says where, never what: serde's own message would
    /// quote the value.
    #[test]
    fn answers_that_do_not_read_are_errors_that_never_quote_them() {
        #[derive(Debug, serde::Deserialize)]
        struct Shape {
            data: u64,
        }
        for body in [
            r#"{"data": "c2VjcmV0LWtleS1tYXRlcmlhbA=="}"#,
            r#"{"data": 1, "#,
        ] {
            let e = decode_answer::<Shape>(
                body.as_bytes(),
                Service::Secrets,
                "access secret version",
                "wg-x",
            )
            .expect_err("not a Shape");
            let msg = e.to_string();
            assert!(!msg.contains("c2VjcmV0"), "{msg}");
            assert!(msg.contains("access secret version wg-x"), "{msg}");
            assert!(msg.contains("line 1"), "{msg}");
        }
        let ok: Shape =
            decode_answer(b"{\"data\": 7}", Service::Compute, "get", "x").expect("reads");
        assert_eq!(ok.data, 7);
    }
}
