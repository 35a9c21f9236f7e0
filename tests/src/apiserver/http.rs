//! HTTP front of the stand-in API server: URL routing, verbs, content types, watch streams
//! and the test controls (injected faults, latency, request log).
//!
//! The I/O boundary: requests come in over hyper; every state change goes through
//! [`State`](super::store::State).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::registry::ResourceType;
use super::selector::Selector;
use super::store::{EventKind, State, Sub, WatchEvent, WriteOpts};
use super::util::ApiError;

/// Response body: a whole JSON document or a watch stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A fault to inject: the next `remaining` requests matching `method` (if set) and containing
/// `path_contains` in their path are answered with `status` without touching the state.
#[derive(Clone, Debug)]
pub struct Fault {
    /// HTTP method to match, any when `None`.
    pub method: Option<String>,
    /// Substring of the request path to match.
    pub path_contains: String,
    /// How many more requests to fail.
    pub remaining: usize,
    /// Status code to answer with.
    pub status: u16,
}

/// One served request, for assertions on what clients did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Status answered (200 for watches that started streaming).
    pub status: u16,
    /// The bearer token, which this server takes as the user's name (no authentication:
    /// it only tells clients apart, e.g. to check one client's requests against RBAC).
    pub user: String,
}

/// Test controls shared by the server and its handle.
#[derive(Debug, Default)]
pub struct Controls {
    /// Pending faults, consumed in order.
    pub faults: Vec<Fault>,
    /// Delay added before every response.
    pub latency: Duration,
    /// Every request served, in order.
    pub log: Vec<LoggedRequest>,
}

/// Everything a request handler needs.
pub struct Shared {
    /// The object store.
    pub state: Mutex<State>,
    /// Test controls.
    pub controls: Mutex<Controls>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data here (no partial writes), so a
    // poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.body())
}

/// Serves one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let user = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned();
    let (latency, fault) = {
        let mut c = lock(&shared.controls);
        let fault = c
            .faults
            .iter_mut()
            .find(|f| {
                f.remaining > 0
                    && f.method.as_deref().is_none_or(|m| m == method)
                    && path.contains(&f.path_contains)
            })
            .map(|f| {
                f.remaining -= 1;
                f.status
            });
        c.faults.retain(|f| f.remaining > 0);
        (c.latency, fault)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = match fault {
        Some(status) => error_response(&ApiError::new(
            status,
            reason_for(status),
            format!("injected fault: {status}"),
        )),
        None => route(&shared, req, &path, &query)
            .await
            .unwrap_or_else(|e| error_response(&e)),
    };
    lock(&shared.controls).log.push(LoggedRequest {
        method,
        path,
        query,
        status: resp.status().as_u16(),
        user,
    });
    Ok(resp)
}

fn reason_for(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// Query parameters, percent-decoded.
fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
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

fn param<'a>(ps: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A resolved resource URL.
struct Target {
    rt: Arc<ResourceType>,
    ns: Option<String>,
    name: Option<String>,
    sub: Sub,
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    path: &str,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get = req.method() == Method::GET;
    // Discovery and version documents.
    {
        let state = lock(&shared.state);
        let reg = &state.registry;
        let doc = match segs.as_slice() {
            ["version"] if get => Some(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-wgnet-standin",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"}),
            ),
            ["healthz" | "readyz" | "livez"] if get => {
                return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
            }
            ["api"] if get => Some(reg.core_versions()),
            ["apis"] if get => Some(reg.group_list()),
            ["api", v] if get => Some(
                reg.resource_list("", v)
                    .ok_or_else(|| ApiError::not_found("versions", v))?,
            ),
            ["apis", g] if get => Some(
                reg.group(g)
                    .ok_or_else(|| ApiError::not_found("groups", g))?,
            ),
            ["apis", g, v] if get => Some(
                reg.resource_list(g, v)
                    .ok_or_else(|| ApiError::not_found("versions", v))?,
            ),
            ["openapi", "v3"] if get => Some(reg.openapi_index()),
            ["openapi", "v3", "api", v] if get => Some(
                reg.openapi_group_version("", v)
                    .ok_or_else(|| ApiError::not_found("openapi", path))?,
            ),
            ["openapi", "v3", "apis", g, v] if get => Some(
                reg.openapi_group_version(g, v)
                    .ok_or_else(|| ApiError::not_found("openapi", path))?,
            ),
            ["openapi", ..] => return Err(ApiError::not_found("openapi", path)),
            _ => None,
        };
        if let Some(doc) = doc {
            return Ok(json_response(200, &doc));
        }
    }
    let target = resolve(shared, &segs)?;
    let ps = params(query);
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let user_agent = req
        .headers()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type})"
            ),
        ));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("failed to read body: {e}")))?
        .to_bytes();
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            "request entity too large",
        ));
    }
    let manager = param(&ps, "fieldManager")
        .map(str::to_owned)
        .unwrap_or_else(|| user_agent.split('/').next().unwrap_or("unknown").to_owned());
    let mut opts = WriteOpts {
        manager,
        strict: param(&ps, "fieldValidation") == Some("Strict"),
        apply: None,
    };
    let ns = target.ns.as_deref();
    let rt = &target.rt;

    match (method, target.name.as_deref()) {
        (Method::GET, None) if matches!(param(&ps, "watch"), Some("true" | "1")) => {
            watch(shared, &target, &ps)
        }
        (Method::GET, None) => {
            let labels = Selector::parse_labels(param(&ps, "labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let fields = Selector::parse_fields(param(&ps, "fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let state = lock(&shared.state);
            let items = state.list(rt, ns, &labels, &fields);
            Ok(json_response(
                200,
                &json!({
                    "apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind),
                    "metadata": {"resourceVersion": state.rv().to_string()}, "items": items,
                }),
            ))
        }
        (Method::GET, Some(name)) => {
            Ok(json_response(200, &lock(&shared.state).get(rt, ns, name)?))
        }
        (Method::POST, None) => {
            let obj = parse_json(&body)?;
            Ok(json_response(
                201,
                &lock(&shared.state).create(rt, ns, obj, &opts)?,
            ))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_json(&body)?;
            Ok(json_response(
                200,
                &lock(&shared.state).update(rt, ns, name, obj, target.sub, &opts)?,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let mut state = lock(&shared.state);
            let result = match content_type.as_str() {
                "application/apply-patch+yaml" => {
                    let applied: Value = serde_yaml::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    opts.apply = Some(matches!(param(&ps, "force"), Some("true" | "1")));
                    state.apply(rt, ns, name, applied, target.sub, &opts)?
                }
                "application/json-patch+json" => {
                    let mut obj = state.get(rt, ns, name)?;
                    let p = json_patch_compat(&obj, &body)?;
                    json_patch::patch(&mut obj, &p).map_err(|e| {
                        // A failed `test` operation is a conflict the client can retry after a re-read.
                        ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
                    })?;
                    state.update(rt, ns, name, obj, target.sub, &opts)?
                }
                "application/merge-patch+json" => {
                    let p = parse_json(&body)?;
                    let mut obj = state.get(rt, ns, name)?;
                    json_patch::merge(&mut obj, &p);
                    state.update(rt, ns, name, obj, target.sub, &opts)?
                }
                "application/strategic-merge-patch+json" => {
                    if rt.schema.is_some() {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            "strategic merge patch is not supported for custom resources",
                        ));
                    }
                    let p = parse_json(&body)?;
                    let mut obj = state.get(rt, ns, name)?;
                    super::patch::strategic_merge(&mut obj, &p);
                    state.update(rt, ns, name, obj, target.sub, &opts)?
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format: {other}"),
                    ));
                }
            };
            Ok(json_response(200, &result))
        }
        (Method::DELETE, Some(name)) => Ok(json_response(
            200,
            &lock(&shared.state).delete(rt, ns, name)?,
        )),
        (Method::DELETE, None) => {
            let labels = Selector::parse_labels(param(&ps, "labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let fields = Selector::parse_fields(param(&ps, "fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?;
            let mut state = lock(&shared.state);
            let names: Vec<(Option<String>, String)> = state
                .list(rt, ns, &labels, &fields)
                .iter()
                .map(|o| {
                    (
                        o["metadata"]["namespace"].as_str().map(str::to_owned),
                        o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let mut items = Vec::new();
            for (n, name) in names {
                items.push(state.delete(rt, n.as_deref(), &name)?);
            }
            Ok(json_response(
                200,
                &json!({"apiVersion": rt.api_version(), "kind": format!("{}List", rt.kind),
                "metadata": {"resourceVersion": state.rv().to_string()}, "items": items}),
            ))
        }
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {m}"),
        )),
    }
}

/// Parses a JSON patch the way the real server's library reads it: a `test` against `null`
/// passes when the path is absent (kube-rs's finalizer helper relies on this).
fn json_patch_compat(obj: &Value, body: &[u8]) -> Result<json_patch::Patch, ApiError> {
    let mut ops: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    ops.retain(|op| {
        let absent_null_test = op["op"] == "test"
            && op["value"].is_null()
            && op["path"]
                .as_str()
                .is_some_and(|p| obj.pointer(p).is_none());
        !absent_null_test
    });
    serde_json::from_value(Value::Array(ops))
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body of the request could not be decoded: {e}"))
    })
}

fn resolve(shared: &Shared, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, version, rest) = match segs {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found("paths", &segs.join("/"))),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..] => {
            (Some((*ns).to_owned()), [&[*plural][..], rest].concat())
        }
        other => (None, other.to_vec()),
    };
    let plural = rest
        .first()
        .ok_or_else(|| ApiError::not_found("paths", &segs.join("/")))?;
    let state = lock(&shared.state);
    let rt = state.registry.get(group, version, plural).ok_or_else(|| {
        ApiError::not_found("the server could not find the requested resource", plural)
    })?;
    let name = rest.get(1).map(|s| (*s).to_owned());
    let sub = match rest.get(2) {
        None => Sub::Main,
        Some(&"status") if rt.status_subresource => Sub::Status,
        Some(other) => return Err(ApiError::not_found("subresources", other)),
    };
    if rest.len() > 3 {
        return Err(ApiError::not_found("paths", &segs.join("/")));
    }
    let ns = if rt.namespaced { ns } else { None };
    Ok(Target { rt, ns, name, sub })
}

/// Starts a watch stream: replay from `resourceVersion` (or the current objects as ADDED),
/// then live changes, BOOKMARKs when allowed, closing after `timeoutSeconds`. A version older
/// than the kept history gets an ERROR event with 410 Gone, as on the real server.
fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    ps: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let labels = Selector::parse_labels(param(ps, "labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = Selector::parse_fields(param(ps, "fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let bookmarks = matches!(param(ps, "allowWatchBookmarks"), Some("true" | "1"));
    let initial_events = matches!(param(ps, "sendInitialEvents"), Some("true" | "1"));
    let timeout = param(ps, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let from = param(ps, "resourceVersion").filter(|v| !v.is_empty() && *v != "0");
    let from = match from {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
        None => None,
    };
    let rt = target.rt.clone();
    let ns = target.ns.clone();
    let type_key = rt.key();

    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (replay, mut sub, start_rv, gone) = {
        let state = lock(&shared.state);
        let sub = state.subscribe();
        let mut replay = Vec::new();
        let mut gone = false;
        match from {
            Some(rv) if !initial_events => match state.history_since(rv) {
                Some(events) => replay.extend(
                    events
                        .into_iter()
                        .filter(|e| e.type_key == type_key)
                        .filter_map(|e| filter_event(&e, ns.as_deref(), &labels, &fields)),
                ),
                None => gone = true,
            },
            _ => {
                for obj in state.list(&rt, ns.as_deref(), &labels, &fields) {
                    replay.push(json!({"type": "ADDED", "object": obj}));
                }
            }
        }
        (replay, sub, state.rv(), gone)
    };
    let bookmark = |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": meta}})
    };
    let initial_bookmark = (initial_events && bookmarks).then(|| bookmark(start_rv, true));
    let rt2 = rt.clone();
    let task = async move {
        let line = |v: &Value| Bytes::from(format!("{v}\n"));
        if gone {
            let status = ApiError::new(410, "Expired", "too old resource version").body();
            let _ = tx
                .send(line(&json!({"type": "ERROR", "object": status})))
                .await;
            return;
        }
        for ev in replay {
            if tx.send(line(&ev)).await.is_err() {
                return;
            }
        }
        if let Some(b) = initial_bookmark
            && tx.send(line(&b)).await.is_err()
        {
            return;
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut last_rv = start_rv;
        loop {
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = sub.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_rv || ev.type_key != type_key {
                            continue;
                        }
                        last_rv = ev.rv;
                        if let Some(v) = filter_event(&ev, ns.as_deref(), &labels, &fields)
                            && tx.send(line(&v)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let status = ApiError::new(410, "Expired", "watch fell behind; relist").body();
                        let _ = tx.send(line(&json!({"type": "ERROR", "object": status}))).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"apiVersion": rt2.api_version(), "kind": rt2.kind,
                        "metadata": {"resourceVersion": last_rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    if deadline.is_some() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    };
    tokio::spawn(task);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "transfer-encoding",
        hyper::header::HeaderValue::from_static("chunked"),
    );
    Ok(resp)
}

/// The event a watcher with these filters sees, if any: objects that stop matching a
/// selector are reported DELETED, objects that start matching ADDED.
fn filter_event(
    ev: &WatchEvent,
    ns: Option<&str>,
    labels: &Selector,
    fields: &Selector,
) -> Option<Value> {
    let in_scope = |o: &Value| {
        ns.is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
            && labels.matches_labels(o)
            && fields.matches_fields(o)
    };
    let now = in_scope(&ev.object);
    let before = ev.old.as_ref().map(in_scope);
    let kind = match (ev.kind, before, now) {
        (EventKind::Modified, Some(true), false) => EventKind::Deleted,
        (EventKind::Modified, Some(false), true) => EventKind::Added,
        (EventKind::Modified, Some(false), false) => return None,
        (k, _, true) => k,
        (_, _, false) => return None,
    };
    Some(json!({"type": kind.as_str(), "object": ev.object}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query strings decode like Go's url.ParseQuery for the characters selectors use.
    #[test]
    fn query_parameters_are_percent_decoded() {
        let ps = params("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=true");
        assert_eq!(param(&ps, "labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(param(&ps, "watch"), Some("true"));
        assert_eq!(decode("100%"), "100%");
    }
}
