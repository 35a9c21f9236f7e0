//! HTTP front of the emulator: URL routing for Compute, IAM, Secret Manager, the token
//! endpoint and the metadata server; bearer-token checks; fault injection, quotas, latency
//! and the request log.
//!
//! I/O boundary: requests arrive over hyper; state changes go through [`World`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::auth;
use super::discovery::Discovery;
use super::error::{self, Family, GcpError};
use super::lock;
use super::world::World;

type Body = BoxBody<Bytes, std::convert::Infallible>;

const MAX_BODY: usize = 4 * 1024 * 1024;

/// What a fault rule does to a matching request.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    /// Answer with this status and a Google-shaped body, touching nothing.
    Status(u16),
    /// Answer 403 with this message, like a missing IAM permission.
    Deny(String),
    /// Serve the request (state changes happen), then drop the connection unanswered.
    DropResponse,
    /// Wait this long before serving.
    Delay(Duration),
    /// Accept the request (a Compute mutation), then end its operation `DONE` with this
    /// error code and message, as GCP does for `ZONE_RESOURCE_POOL_EXHAUSTED` or
    /// `QUOTA_EXCEEDED`: nothing of the change happens (an insert leaves no resource).
    FailOperation(String, String),
}

/// A fault rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// HTTP method to match, any when `None`.
    pub method: Option<String>,
    /// Substring of the path to match.
    pub path_contains: String,
    /// Matches left; `None` is forever.
    pub remaining: Option<usize>,
    /// What to do.
    pub action: FaultAction,
}

/// One served request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedCall {
    /// `compute`, `iam`, `secretmanager`, `oauth` or `metadata`.
    pub api: &'static str,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query.
    pub query: String,
    /// Status answered (0 when the response was dropped).
    pub status: u16,
    /// Which connection it came on (see [`crate::serve::Connection`]).
    pub connection: u64,
}

impl LoggedCall {
    /// Whether the call changes state.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
            && !self.path.ends_with("/wait")
            && !self.path.ends_with(":getIamPolicy")
    }
}

/// Test controls.
#[derive(Debug, Default)]
pub struct Controls {
    /// Fault rules, first match wins.
    pub faults: Vec<Fault>,
    /// Share of API calls to fail at random.
    pub random_rate: f64,
    /// Statuses for random failures.
    pub random_statuses: Vec<u16>,
    /// Share of writes (non-GET calls) served and then left unanswered at random.
    pub random_drop_rate: f64,
    /// Share of Compute mutations whose operation fails at random, and the codes used.
    pub random_op_failure_rate: f64,
    /// Codes for random operation failures.
    pub random_op_codes: Vec<String>,
    /// Xorshift state for random failures.
    pub rng: u64,
    /// Added latency per API call.
    pub latency: Duration,
    /// Calls per quota group per period (a minute unless set), for every group.
    pub quota: Option<u32>,
    /// Per-group limits that replace `quota` for their group (GCP's defaults differ).
    pub quota_limits: HashMap<&'static str, u32>,
    /// The quota's period; `None` is GCP's minute.
    pub quota_period: Option<Duration>,
    /// Start of the current quota minute and the calls counted in it, per project and
    /// group (GCP's rate quotas are per project).
    pub quota_window: Option<(Instant, QuotaCounts)>,
    /// Calls refused for a rate quota since the start.
    pub quota_refusals: u64,
    /// Every request served.
    pub log: Vec<LoggedCall>,
}

impl Controls {
    fn next_random(&mut self) -> f64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Keys, tokens and who may do what.
#[derive(Debug)]
pub struct AuthState {
    /// Public keys (PKCS#1 DER) by service-account email.
    pub keys: HashMap<String, Vec<Vec<u8>>>,
    /// Identities with every permission.
    pub admins: HashSet<String>,
    /// Live tokens: token → (email, expiry).
    pub tokens: HashMap<String, (String, Instant)>,
    /// Lifetime of new tokens.
    pub token_ttl: Duration,
    /// Tokens issued so far.
    pub issued: usize,
}

impl Default for AuthState {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            admins: HashSet::new(),
            tokens: HashMap::new(),
            token_ttl: Duration::from_secs(3600),
            issued: 0,
        }
    }
}

impl AuthState {
    /// Issues a token for `email`: (token, lifetime in seconds).
    pub fn issue(&mut self, email: &str) -> (String, u64) {
        self.issued += 1;
        let token = format!(
            "ya29.emu-{}-{:016x}",
            self.issued,
            (self.issued as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995
        );
        self.tokens.insert(
            token.clone(),
            (email.to_owned(), Instant::now() + self.token_ttl),
        );
        (token, self.token_ttl.as_secs().max(1))
    }
}

/// Everything a handler needs.
pub struct Shared {
    /// Resources.
    pub world: std::sync::Mutex<World>,
    /// Test controls.
    pub controls: std::sync::Mutex<Controls>,
    /// Keys and tokens.
    pub auth: std::sync::Mutex<AuthState>,
    /// Compute schemas.
    pub compute: Discovery,
    /// IAM schemas.
    pub iam: Discovery,
    /// Secret Manager schemas.
    pub secrets: Discovery,
    /// Woken on every metadata change, for `wait_for_change`.
    pub metadata_changed: Notify,
    /// `http://addr`.
    pub base: String,
}

fn respond(status: u16, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    respond(status, "application/json; charset=UTF-8", v.to_string())
}

fn error_response(e: &GcpError, family: Family) -> Response<Body> {
    json_response(e.code, &e.body(family))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which API a path belongs to.
fn api_of(path: &str) -> &'static str {
    if path == "/token" {
        "oauth"
    } else if path.starts_with("/metadata/") {
        "metadata"
    } else if path.starts_with("/compute/v1/") {
        "compute"
    } else if path.starts_with("/v1/projects/") && path.contains("/serviceAccounts") {
        "iam"
    } else if path.starts_with("/v1/projects/") && path.contains("/secrets") {
        "secretmanager"
    } else {
        "unknown"
    }
}

fn quota_group(api: &'static str, method: &str, path: &str) -> &'static str {
    match (api, method) {
        ("compute", _) if path.contains("/operations/") => "compute-operation-reads",
        ("compute", "GET") if path.ends_with('s') => "compute-lists",
        ("compute", "GET") => "compute-reads",
        ("compute", _) => "compute-mutations",
        ("iam", _) => "iam",
        (_, "GET") => "secretmanager-reads",
        _ => "secretmanager-writes",
    }
}

/// Calls counted in the current quota window, by (project, quota group).
pub type QuotaCounts = HashMap<(String, &'static str), u32>;

/// Serves one request. An `Err` drops the connection without an answer.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let api = api_of(&path);
    let connection = req
        .extensions()
        .get::<crate::serve::Connection>()
        .map_or(0, |c| c.0);
    let headers = req.headers().clone();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(respond(413, "text/plain", "request too large".into())),
    };
    let family = if api == "compute" {
        Family::Compute
    } else {
        Family::Rpc
    };
    let mut drop_response = false;
    // The metadata server honours only Delay faults: a slow metadata server is a real
    // condition on a busy host; it never answers with API errors.
    if api == "metadata"
        && let Some(d) = metadata_delay(&shared, &method, &path)
    {
        tokio::time::sleep(d).await;
    }
    let is_api = matches!(api, "compute" | "iam" | "secretmanager");
    if is_api {
        let (fault, latency) = pick_fault(&shared, &method, &path);
        let request_latency = {
            let w = lock(&shared.world);
            w.profile.scaled(w.profile.request)
        };
        let delay = latency
            + request_latency
            + match &fault {
                Some(FaultAction::Delay(d)) => *d,
                _ => Duration::ZERO,
            };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let early = match fault {
            Some(FaultAction::Status(s)) => Some(error::for_status(s)),
            Some(FaultAction::Deny(m)) => Some(GcpError::new(403, "forbidden", m)),
            Some(FaultAction::DropResponse) => {
                drop_response = true;
                None
            }
            Some(FaultAction::FailOperation(code, message)) => {
                lock(&shared.world).fail_next_operation = Some((code, message));
                None
            }
            _ => None,
        };
        let early = early.or_else(|| quota_exceeded(&shared, api, &method, &path));
        if let Some(e) = early {
            let resp = error_response(&e, family);
            log(&shared, (api, &method, &path, &query), e.code, connection);
            return Ok(resp);
        }
    }
    let resp = match api {
        "oauth" => token_endpoint(&shared, &method, &body),
        "metadata" => metadata(&shared, &method, &path, &query, &headers, &body).await,
        "unknown" => error_response(&GcpError::not_found(&path), Family::Rpc),
        _ => {
            let caller = authenticate(&shared, &headers);
            let result = match caller {
                Err(e) => Err(e),
                Ok((email, admin)) => {
                    let access =
                        api == "secretmanager" && method == "GET" && path.ends_with(":access");
                    if !admin && !access {
                        Err(GcpError::new(
                            403,
                            "forbidden",
                            format!("Permission denied for {email} on {path}."),
                        ))
                    } else {
                        dispatch(&shared, api, &method, &path, &query, &body, &email, admin).await
                    }
                }
            };
            // A FailOperation fault applies to the operation this request started, if any.
            lock(&shared.world).fail_next_operation = None;
            // `fields` (a partial response) applies to every successful answer.
            let selector = query_param(&query, "fields");
            match result.and_then(|v| super::fields::select(v, selector.as_deref())) {
                Ok(v) => json_response(200, &v),
                Err(e) => error_response(&e, family),
            }
        }
    };
    let status = if drop_response {
        0
    } else {
        resp.status().as_u16()
    };
    log(&shared, (api, &method, &path, &query), status, connection);
    if drop_response {
        return Err(std::io::Error::other(
            "emulator dropped the response (injected fault)",
        ));
    }
    Ok(resp)
}

/// Logs `(api, method, path, query)` as answered with `status` over `connection`.
fn log(
    shared: &Shared,
    (api, method, path, query): (&'static str, &str, &str, &str),
    status: u16,
    connection: u64,
) {
    lock(&shared.controls).log.push(LoggedCall {
        api,
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        status,
        connection,
    });
}

fn metadata_delay(shared: &Shared, method: &str, path: &str) -> Option<Duration> {
    let mut c = lock(&shared.controls);
    let mut chosen = None;
    for f in &mut c.faults {
        if let FaultAction::Delay(d) = f.action
            && f.remaining != Some(0)
            && f.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&f.path_contains)
        {
            if let Some(r) = f.remaining.as_mut() {
                *r -= 1;
            }
            chosen = Some(d);
            break;
        }
    }
    c.faults.retain(|f| f.remaining != Some(0));
    chosen
}

/// A page of a flat aggregated list grouped as GCP answers it: `items` becomes a map from
/// scope to `{"<kind>": […]}`.
fn by_scope(mut v: Value, kind: &str) -> Value {
    let flat = v
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut scopes = serde_json::Map::new();
    for item in flat {
        let scope = item["scope"].as_str().unwrap_or_default().to_owned();
        let entry = scopes.entry(scope).or_insert_with(|| json!({ kind: [] }));
        if let Some(list) = entry[kind].as_array_mut() {
            list.push(item["item"].clone());
        }
    }
    v["items"] = Value::Object(scopes);
    v
}

/// Page sizes (default, largest) as Google documents them: Compute's `maxResults`, IAM's
/// `pageSize` for service accounts, Secret Manager's `pageSize`.
const COMPUTE_PAGE: (usize, usize) = (500, 500);
const IAM_PAGE: (usize, usize) = (20, 100);
const SECRETS_PAGE: (usize, usize) = (25_000, 25_000);

/// Cuts a list answer to the page `query` asks for (`pageToken`, and `maxResults` or
/// `pageSize`), adding `nextPageToken` when more remain. `cap` makes pages smaller still,
/// as GCP may at any time, so tests need not create hundreds of resources.
fn paged(
    mut v: Value,
    key: &str,
    query: &str,
    (default, largest): (usize, usize),
    cap: Option<usize>,
) -> Result<Value, GcpError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let size = query_param(query, "maxResults")
        .or_else(|| query_param(query, "pageSize"))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
        .min(largest)
        .min(cap.unwrap_or(usize::MAX))
        .max(1);
    let start = match query_param(query, "pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => b64
            .decode(t.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("offset-")?.parse::<usize>().ok())
            .ok_or_else(|| GcpError::invalid("The page token is not valid."))?,
    };
    let items = v
        .get_mut(key)
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    if let Some(m) = v.as_object_mut() {
        m.remove(key);
        if !page.is_empty() {
            m.insert(key.to_owned(), Value::Array(page));
        }
        if start + size < total {
            m.insert(
                "nextPageToken".into(),
                Value::String(b64.encode(format!("offset-{}", start + size))),
            );
        }
    }
    Ok(v)
}

fn pick_fault(shared: &Shared, method: &str, path: &str) -> (Option<FaultAction>, Duration) {
    let mut c = lock(&shared.controls);
    let mut chosen = None;
    for f in &mut c.faults {
        if f.remaining != Some(0)
            && f.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&f.path_contains)
        {
            if let Some(r) = f.remaining.as_mut() {
                *r -= 1;
            }
            chosen = Some(f.action.clone());
            break;
        }
    }
    c.faults.retain(|f| f.remaining != Some(0));
    if chosen.is_none() && method != "GET" {
        if c.random_drop_rate > 0.0 && c.next_random() < c.random_drop_rate {
            chosen = Some(FaultAction::DropResponse);
        } else if c.random_op_failure_rate > 0.0
            && !c.random_op_codes.is_empty()
            && path.starts_with("/compute/")
            && !path.contains("/operations/")
            && c.next_random() < c.random_op_failure_rate
        {
            let i = (c.next_random() * c.random_op_codes.len() as f64) as usize;
            let code = c.random_op_codes[i.min(c.random_op_codes.len() - 1)].clone();
            chosen = Some(FaultAction::FailOperation(
                code.clone(),
                format!("{code} (injected at random)"),
            ));
        }
    }
    if chosen.is_none() && c.random_rate > 0.0 && !c.random_statuses.is_empty() {
        let r = c.next_random();
        if r < c.random_rate {
            let i = (c.next_random() * c.random_statuses.len() as f64) as usize;
            let s = c.random_statuses[i.min(c.random_statuses.len() - 1)];
            chosen = Some(FaultAction::Status(s));
        }
    }
    (chosen, c.latency)
}

fn quota_exceeded(
    shared: &Shared,
    api: &'static str,
    method: &str,
    path: &str,
) -> Option<GcpError> {
    let mut c = lock(&shared.controls);
    let group = quota_group(api, method, path);
    let limit = c.quota_limits.get(group).copied().or(c.quota)?;
    let now = Instant::now();
    let project = path
        .split('/')
        .skip_while(|s| *s != "projects")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let period = c.quota_period.unwrap_or(Duration::from_secs(60));
    let window = c.quota_window.get_or_insert_with(|| (now, HashMap::new()));
    if now.duration_since(window.0) >= period {
        *window = (now, HashMap::new());
    }
    let n = window.1.entry((project, group)).or_insert(0);
    *n += 1;
    let refused = *n > limit;
    if refused {
        c.quota_refusals += 1;
    }
    refused.then(|| {
        if api == "compute" {
            GcpError::new(
                403,
                "rateLimitExceeded",
                format!("Quota exceeded for quota group '{group}' and limit 'Queries per minute' of service 'compute.googleapis.com'."),
            )
        } else {
            GcpError::new(
                429,
                "rateLimitExceeded",
                format!("Quota exceeded for quota metric '{group}' and limit 'Requests per minute' of service '{api}.googleapis.com'."),
            )
        }
    })
}

/// The caller's email and whether it is an admin identity.
fn authenticate(shared: &Shared, headers: &hyper::HeaderMap) -> Result<(String, bool), GcpError> {
    let unauthenticated = || {
        GcpError::new(
            401,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )
    };
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthenticated)?;
    let a = lock(&shared.auth);
    match a.tokens.get(token) {
        Some((email, exp)) if *exp > Instant::now() => {
            Ok((email.clone(), a.admins.contains(email)))
        }
        _ => Err(unauthenticated()),
    }
}

fn token_endpoint(shared: &Shared, method: &str, body: &[u8]) -> Response<Body> {
    let err = |status: u16, error: &str, desc: &str| {
        json_response(status, &json!({"error": error, "error_description": desc}))
    };
    if method != "POST" {
        return err(405, "invalid_request", "POST required");
    }
    let form = String::from_utf8_lossy(body);
    let grant = query_param(&form, "grant_type").unwrap_or_default();
    if grant != auth::JWT_BEARER {
        return err(400, "unsupported_grant_type", "Invalid grant_type");
    }
    let assertion = query_param(&form, "assertion").unwrap_or_default();
    let audience = format!("{}/token", shared.base);
    let mut a = lock(&shared.auth);
    match auth::verify_assertion(&assertion, &a.keys, &audience) {
        Ok(g) => {
            let (token, ttl) = a.issue(&g.email);
            json_response(
                200,
                &json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"}),
            )
        }
        Err(e) => err(400, "invalid_grant", &e),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, GcpError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| GcpError::invalid(format!("Invalid JSON payload received. {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    shared: &Shared,
    api: &str,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    caller: &str,
    admin: bool,
) -> Result<Value, GcpError> {
    let now = Instant::now();
    match api {
        "compute" => compute(shared, method, path, query, body, caller, now).await,
        "iam" => {
            let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
            let mut w = lock(&shared.world);
            w.tick(now);
            if let ["projects", p, ..] = segs.as_slice()
                && *p != "-"
            {
                w.project(p)?;
            }
            match (method, segs.as_slice()) {
                ("POST", ["projects", p, "serviceAccounts"]) => {
                    w.project(p)?;
                    let v = parse_body(body)?;
                    shared
                        .iam
                        .check("CreateServiceAccountRequest", &v)
                        .map_err(GcpError::invalid)?;
                    w.create_service_account(now, p, &v)
                }
                ("GET", ["projects", p, "serviceAccounts"]) => {
                    w.project(p)?;
                    paged(
                        w.list_service_accounts(p),
                        "accounts",
                        query,
                        IAM_PAGE,
                        w.page_cap,
                    )
                }
                ("GET", ["projects", p, "serviceAccounts", email]) => {
                    w.get_service_account(p, email)
                }
                ("DELETE", ["projects", p, "serviceAccounts", email]) => {
                    w.delete_service_account(p, email)
                }
                _ => Err(GcpError::new(
                    404,
                    "notFound",
                    format!("Method not found: {method} {path}"),
                )),
            }
        }
        _ => {
            let mut w = lock(&shared.world);
            // Secret Manager takes the project's number as well as its id (its own names,
            // such as a version's, use the number).
            let by_number = |p: &str| {
                w.projects
                    .iter()
                    .find(|(_, n)| n.to_string() == p)
                    .map(|(id, _)| id.clone())
            };
            let mut segs: Vec<String> = path
                .trim_start_matches("/v1/")
                .split('/')
                .map(str::to_owned)
                .collect();
            if segs.len() > 1
                && segs[0] == "projects"
                && let Some(id) = by_number(&segs[1])
            {
                segs[1] = id;
            }
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            if let ["projects", p, ..] = segs.as_slice() {
                w.project(p)?;
            }
            match (method, segs.as_slice()) {
                ("POST", ["projects", p, "secrets"]) => {
                    w.project(p)?;
                    let v = parse_body(body)?;
                    shared
                        .secrets
                        .check("Secret", &v)
                        .map_err(GcpError::invalid)?;
                    let id = query_param(query, "secretId").unwrap_or_default();
                    w.create_secret(p, &id, v)
                }
                ("GET", ["projects", p, "secrets"]) => {
                    w.project(p)?;
                    w.list_secrets(p, query_param(query, "filter").as_deref())
                        .and_then(|v| paged(v, "secrets", query, SECRETS_PAGE, w.page_cap))
                }
                ("GET", ["projects", p, "secrets", rest]) if rest.ends_with(":getIamPolicy") => {
                    w.get_secret_policy(p, rest.trim_end_matches(":getIamPolicy"))
                }
                ("POST", ["projects", p, "secrets", rest]) if rest.ends_with(":setIamPolicy") => {
                    let v = parse_body(body)?;
                    shared
                        .secrets
                        .check("SetIamPolicyRequest", &v)
                        .map_err(GcpError::invalid)?;
                    w.set_secret_policy(now, p, rest.trim_end_matches(":setIamPolicy"), &v)
                }
                ("POST", ["projects", p, "secrets", rest]) if rest.ends_with(":addVersion") => {
                    let v = parse_body(body)?;
                    shared
                        .secrets
                        .check("AddSecretVersionRequest", &v)
                        .map_err(GcpError::invalid)?;
                    w.add_version(p, rest.trim_end_matches(":addVersion"), &v)
                }
                ("GET", ["projects", p, "secrets", id]) => w.get_secret(p, id),
                ("DELETE", ["projects", p, "secrets", id]) => w.delete_secret(p, id),
                ("GET", ["projects", p, "secrets", id, "versions", v])
                    if v.ends_with(":access") =>
                {
                    w.access(p, id, v.trim_end_matches(":access"), caller, admin, now)
                }
                _ => Err(GcpError::new(
                    404,
                    "notFound",
                    format!("Method not found: {method} {path}"),
                )),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn compute(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    caller: &str,
    now: Instant,
) -> Result<Value, GcpError> {
    let segs: Vec<String> = path
        .trim_start_matches("/compute/v1/")
        .split('/')
        .map(str::to_owned)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let rid = query_param(query, "requestId");
    let rid = rid.as_deref();
    let filter = query_param(query, "filter");
    // Operation waits release the lock while they sleep.
    if let (["projects", p, scope @ .., "operations", name, "wait"], "POST") =
        (s.as_slice(), method)
    {
        let scope = scope.join("/");
        let deadline = now + Duration::from_secs(120);
        loop {
            let due = {
                let mut w = lock(&shared.world);
                w.tick(Instant::now());
                let op = w.get_operation(p, &scope, name, false)?;
                if op["status"] == "DONE" {
                    return Ok(op);
                }
                match w.operation_due(p, &scope, name) {
                    Some(d) => d,
                    None => {
                        // Poll-driven profiles finish on wait.
                        w.complete_operation(p, &scope, name);
                        return w.get_operation(p, &scope, name, false);
                    }
                }
            };
            let until = due.min(deadline);
            if until <= Instant::now() && Instant::now() >= deadline {
                let mut w = lock(&shared.world);
                return w.get_operation(p, &scope, name, false);
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
    }
    let mut w = lock(&shared.world);
    w.tick(now);
    if let Some(p) = s.get(1)
        && !(s.len() >= 5 && s[3] == "images")
    {
        w.project(p)?;
    }
    if let ["projects", _, kind @ ("regions" | "zones"), where_, ..] = s.as_slice() {
        crate::gcp::world::check_location(kind, where_)?;
    }
    let parsed = || parse_body(body);
    let check =
        |schema: &str, v: &Value| shared.compute.check(schema, v).map_err(GcpError::invalid);
    match (method, s.as_slice()) {
        ("GET", ["projects", p, scope @ .., "operations", name]) => {
            w.get_operation(p, &scope.join("/"), name, true)
        }
        ("POST", ["projects", p, "global", "networks"]) => {
            let v = parsed()?;
            check("Network", &v)?;
            w.insert_network(now, p, v, caller, rid)
        }
        ("GET", ["projects", p, "global", "networks"]) => w
            .list("networks", p, None, filter.as_deref())
            .and_then(|v| paged(v, "items", query, COMPUTE_PAGE, w.page_cap)),
        ("GET", ["projects", p, "global", "networks", n]) => w.get_network(p, n),
        ("DELETE", ["projects", p, "global", "networks", n]) => {
            w.delete_network(now, p, n, caller, rid)
        }
        ("POST", ["projects", p, "global", "firewalls"]) => {
            let v = parsed()?;
            check("Firewall", &v)?;
            w.insert_firewall(now, p, v, caller, rid)
        }
        ("GET", ["projects", p, "global", "firewalls"]) => w
            .list("firewalls", p, None, filter.as_deref())
            .and_then(|v| paged(v, "items", query, COMPUTE_PAGE, w.page_cap)),
        ("GET", ["projects", p, "global", "firewalls", n]) => {
            w.look_at(&format!("projects/{p}/global/firewalls/{n}"));
            w.get_firewall(p, n)
        }
        ("PATCH", ["projects", p, "global", "firewalls", n]) => {
            let v = parsed()?;
            check("Firewall", &v)?;
            w.patch_firewall(now, p, n, v, caller, rid)
        }
        ("DELETE", ["projects", p, "global", "firewalls", n]) => {
            w.delete_firewall(now, p, n, caller, rid)
        }
        ("POST", ["projects", p, "regions", r, "addresses"]) => {
            let v = parsed()?;
            check("Address", &v)?;
            w.insert_address(now, p, r, v, caller, rid)
        }
        ("GET", ["projects", p, "regions", r, "addresses"]) => w
            .list("addresses", p, Some(r), filter.as_deref())
            .and_then(|v| paged(v, "items", query, COMPUTE_PAGE, w.page_cap)),
        ("GET", ["projects", p, "regions", r, "addresses", n]) => {
            w.look_at(&format!("projects/{p}/regions/{r}/addresses/{n}"));
            w.get_address(p, r, n)
        }
        ("DELETE", ["projects", p, "regions", r, "addresses", n]) => {
            w.delete_address(now, p, r, n, caller, rid)
        }
        ("POST", ["projects", p, "zones", z, "instances"]) => {
            let v = parsed()?;
            check("Instance", &v)?;
            w.insert_instance(now, p, z, v, caller, rid)
        }
        (
            "GET",
            [
                "projects",
                p,
                "aggregated",
                kind @ ("instances" | "addresses"),
            ],
        ) => w
            .aggregated(kind, p, filter.as_deref())
            .and_then(|v| paged(v, "items", query, COMPUTE_PAGE, w.page_cap))
            .map(|v| by_scope(v, kind)),
        ("GET", ["projects", p, "zones", z, "instances"]) => w
            .list("instances", p, Some(z), filter.as_deref())
            .and_then(|v| paged(v, "items", query, COMPUTE_PAGE, w.page_cap)),
        ("GET", ["projects", p, "zones", z, "instances", n]) => {
            w.look_at(&format!("projects/{p}/zones/{z}/instances/{n}"));
            w.get_instance(p, z, n)
        }
        ("DELETE", ["projects", p, "zones", z, "instances", n]) => {
            w.instance_action(now, p, z, n, "delete", json!({}), caller, rid)
        }
        (
            "GET",
            [
                "projects",
                p,
                "zones",
                z,
                "instances",
                n,
                "getGuestAttributes",
            ],
        ) => {
            let q = query_param(query, "queryPath").unwrap_or_default();
            w.guest_attributes(p, z, n, &q)
        }
        ("POST", ["projects", p, "zones", z, "instances", n, action]) => {
            let v = parsed()?;
            match *action {
                "setMetadata" => check("Metadata", &v)?,
                "setLabels" => check("InstancesSetLabelsRequest", &v)?,
                _ => {}
            }
            let out = w.instance_action(now, p, z, n, action, v, caller, rid);
            if *action == "setMetadata" && out.is_ok() {
                shared.metadata_changed.notify_waiters();
            }
            out
        }
        ("GET", ["projects", _, "zones", z, "machineTypes", mt]) => {
            Ok(json!({"kind": "compute#machineType", "name": mt, "zone": z}))
        }
        ("GET", ["projects", ip, "global", "images", "family", f]) => Ok(
            json!({"kind": "compute#image", "name": format!("{f}-v20261101"), "family": f, "selfLink": format!("{}/compute/v1/projects/{ip}/global/images/{f}-v20261101", shared.base), "status": "READY"}),
        ),
        _ => Err(GcpError::new(
            404,
            "notFound",
            format!("The emulator does not serve {method} {path}"),
        )),
    }
}

// -------------------------------------------------------------------- metadata server

fn metadata_text(status: u16, body: String, etag: Option<&str>) -> Response<Body> {
    let mut r = respond(status, "application/text", body);
    r.headers_mut().insert(
        "metadata-flavor",
        hyper::header::HeaderValue::from_static("Google"),
    );
    if let Some(e) = etag.and_then(|e| hyper::header::HeaderValue::from_str(e).ok()) {
        r.headers_mut().insert("etag", e);
    }
    r
}

fn etag_of(s: &str) -> String {
    // FNV-1a: stable and good enough to tell versions apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

async fn metadata(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Response<Body> {
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return metadata_text(403, "Missing Metadata-Flavor:Google header.".into(), None);
    }
    let rest = path.trim_start_matches("/metadata/");
    let mut parts = rest.splitn(4, '/');
    let (Some(project), Some(zone), Some(instance), Some(tail)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return metadata_text(404, "not found".into(), None);
    };
    let Some(key) = tail.strip_prefix("computeMetadata/v1/") else {
        return metadata_text(404, "not found".into(), None);
    };
    if let Some(attr) = key.strip_prefix("instance/guest-attributes/") {
        let enabled = lock(&shared.world)
            .instance_metadata(project, zone, instance)
            .is_some_and(|(v, _)| {
                attribute(&v, "enable-guest-attributes")
                    .is_some_and(|x| x.eq_ignore_ascii_case("true"))
            });
        if !enabled {
            return metadata_text(
                403,
                "Guest attributes endpoint access is disabled.".into(),
                None,
            );
        }
        return match method {
            "PUT" => {
                let ok = lock(&shared.world).put_guest_attribute(
                    project,
                    zone,
                    instance,
                    attr,
                    String::from_utf8_lossy(body).into_owned(),
                );
                if ok {
                    metadata_text(200, String::new(), None)
                } else {
                    metadata_text(400, "bad guest attribute".into(), None)
                }
            }
            _ => match lock(&shared.world).guest_attribute(project, zone, instance, attr) {
                Some(v) => metadata_text(200, v, None),
                None => metadata_text(404, "not found".into(), None),
            },
        };
    }
    if key == "instance/service-accounts/default/token" {
        let email = lock(&shared.world)
            .instance_metadata(project, zone, instance)
            .and_then(|(v, _)| {
                v.pointer("/serviceAccounts/0/email")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let Some(email) = email else {
            return metadata_text(404, "no service account".into(), None);
        };
        let (token, ttl) = lock(&shared.auth).issue(&email);
        let mut r = json_response(
            200,
            &json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"}),
        );
        r.headers_mut().insert(
            "metadata-flavor",
            hyper::header::HeaderValue::from_static("Google"),
        );
        return r;
    }
    let wait = query_param(query, "wait_for_change").is_some_and(|v| v == "true");
    let last = query_param(query, "last_etag");
    let timeout = query_param(query, "timeout_sec")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(60)
        .min(3600);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let notified = shared.metadata_changed.notified();
        let answer = {
            let w = lock(&shared.world);
            let Some((inst, _)) = w.instance_metadata(project, zone, instance) else {
                return metadata_text(404, "instance not found".into(), None);
            };
            let number = w.projects.get(project).copied().unwrap_or(0);
            metadata_value(&inst, key, query, project, number, zone)
        };
        let Some(body) = answer else {
            return metadata_text(404, format!("{key} not found"), None);
        };
        let etag = etag_of(&body);
        if !wait || last.as_deref() != Some(etag.as_str()) || Instant::now() >= deadline {
            return metadata_text(200, body, Some(&etag));
        }
        let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), notified).await;
    }
}

fn attribute(inst: &Value, key: &str) -> Option<String> {
    inst.pointer("/metadata/items")?
        .as_array()?
        .iter()
        .find(|i| i["key"] == key)
        .and_then(|i| i["value"].as_str())
        .map(str::to_owned)
}

fn metadata_value(
    inst: &Value,
    key: &str,
    query: &str,
    project: &str,
    number: u64,
    zone: &str,
) -> Option<String> {
    let recursive = query_param(query, "recursive").is_some_and(|v| v == "true")
        || query_param(query, "alt").is_some_and(|v| v == "json");
    match key {
        "instance/attributes/" | "instance/attributes" => {
            let items = inst.pointer("/metadata/items")?.as_array()?.clone();
            if recursive {
                let map: serde_json::Map<String, Value> = items
                    .iter()
                    .filter_map(|i| Some((i["key"].as_str()?.to_owned(), i["value"].clone())))
                    .collect();
                Some(Value::Object(map).to_string())
            } else {
                Some(
                    items
                        .iter()
                        .filter_map(|i| i["key"].as_str())
                        .map(|k| format!("{k}\n"))
                        .collect(),
                )
            }
        }
        "instance/name" => inst["name"].as_str().map(str::to_owned),
        "instance/id" => inst["id"].as_str().map(str::to_owned),
        "instance/zone" => Some(format!("projects/{number}/zones/{zone}")),
        "instance/hostname" => Some(format!(
            "{}.{zone}.c.{project}.internal",
            inst["name"].as_str()?
        )),
        "instance/service-accounts/default/email" => inst
            .pointer("/serviceAccounts/0/email")?
            .as_str()
            .map(str::to_owned),
        "instance/network-interfaces/0/ip" => inst
            .pointer("/networkInterfaces/0/networkIP")?
            .as_str()
            .map(str::to_owned),
        "instance/network-interfaces/0/access-configs/0/external-ip" => inst
            .pointer("/networkInterfaces/0/accessConfigs/0/natIP")?
            .as_str()
            .map(str::to_owned),
        "project/project-id" => Some(project.to_owned()),
        "project/numeric-project-id" => Some(number.to_string()),
        k => k
            .strip_prefix("instance/attributes/")
            .and_then(|a| attribute(inst, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_values() {
        assert_eq!(percent_decode("a%3Ab+c%2Fd"), "a:b c/d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            query_param("x=1&filter=labels.a%3D%22b%22", "filter").as_deref(),
            Some("labels.a=\"b\"")
        );
    }

    #[test]
    fn classifies_paths() {
        assert_eq!(api_of("/compute/v1/projects/p/global/networks"), "compute");
        assert_eq!(api_of("/v1/projects/p/serviceAccounts"), "iam");
        assert_eq!(
            api_of("/v1/projects/p/secrets/s:addVersion"),
            "secretmanager"
        );
        assert_eq!(api_of("/token"), "oauth");
        assert_eq!(
            quota_group("compute", "GET", "/compute/v1/projects/p/global/networks"),
            "compute-lists"
        );
    }
}
