//! Compute's long-running operations: sending a mutation with its `requestId`, turning the
//! answer into a state, polling a recorded operation once, waiting server side on any of a
//! gateway's operations, and the generic delete of a Compute resource. I/O through [`Api`].
//!
//! [`Api`]: crate::api::Api

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::wire::Operation;
use super::{GcpCloud, Pass, Step, decode, encode_body};
use crate::api::{Retry, Service};
use crate::error::CloudError;
use crate::{PendingOp, Recorded, ResourceKind, Target, names};

/// State of a Compute operation after one look.
pub(super) enum OpState {
    Done,
    Running(PendingOp),
}

/// One Compute mutation.
pub(super) struct Mutation<'a, B> {
    pub method: Method,
    pub path: String,
    pub body: Option<&'a B>,
    /// Such as `insert instance`.
    pub op: &'static str,
    pub kind: ResourceKind,
    /// The resource's name.
    pub what: &'a str,
    /// `global`, `regions/<r>` or `zones/<z>`.
    pub scope: String,
}

/// One Compute resource to delete.
pub(super) struct Deletion<'a> {
    pub kind: ResourceKind,
    pub path: String,
    pub name: String,
    pub scope: String,
    /// The deleting pass's salt: retries inside the pass reuse its `requestId`, a later
    /// pass asks anew. GCP replays a reused id's operation even when it failed, so an id
    /// fixed per resource would hand the last gateway out the first one's "network in use"
    /// failure for ever, and the shared network would leak.
    pub salt: &'a str,
}

/// The error a failed operation carries, as a [`CloudError::Operation`] with GCP's code.
fn op_error(op: &Operation, what: &str) -> Option<CloudError> {
    let e = op.first_error()?;
    Some(CloudError::Operation {
        operation: op.name.clone(),
        what: what.to_owned(),
        code: e.code.clone(),
        message: e.message.clone(),
    })
}

/// An operation's state: done, failed, or still running (to be recorded).
fn op_state(
    op: &Operation,
    kind: ResourceKind,
    description: &str,
    scope: &str,
) -> Result<OpState, CloudError> {
    if let Some(e) = op_error(op, description) {
        return Err(e);
    }
    if op.is_done() {
        return Ok(OpState::Done);
    }
    Ok(OpState::Running(PendingOp {
        resource: kind,
        name: op.name.clone(),
        scope: op.scope(scope),
        description: description.to_owned(),
    }))
}

impl GcpCloud {
    /// Sends a Compute mutation under `request_id` and turns its operation into a state.
    pub(super) async fn mutate<B: Serialize>(
        &self,
        p: Option<&Pass<'_>>,
        m: Mutation<'_, B>,
        request_id: &str,
    ) -> Result<OpState, CloudError> {
        let sep = if m.path.contains('?') { '&' } else { '?' };
        let full = format!("{}{sep}requestId={request_id}", m.path);
        if let Some(p) = p {
            p.wrote();
        }
        let body = m.body.map(encode_body).transpose()?;
        let op: Operation = self
            .api
            .call(
                Service::Compute,
                m.method,
                &full,
                body.as_ref(),
                m.op,
                m.what,
                Retry::Transient,
            )
            .await?;
        op_state(&op, m.kind, &format!("{} {}", m.op, m.what), &m.scope)
    }

    /// Looks at a recorded operation once.
    pub(super) async fn poll(&self, project: &str, op: &PendingOp) -> Result<OpState, CloudError> {
        let path = format!("projects/{project}/{}/operations/{}", op.scope, op.name);
        match self
            .get::<Operation>(Service::Compute, &path, "get operation", &op.name)
            .await
        {
            Ok(v) => op_state(&v, op.resource, &op.description, &op.scope),
            // Operations are garbage-collected after a while; the resource tells the rest.
            Err(e) if e.is_not_found() => Ok(OpState::Done),
            Err(e) => Err(e),
        }
    }

    /// Polls `kind`'s pending operation; `Some` ends the step.
    pub(super) async fn check_pending<T>(
        &self,
        p: &Pass<'_>,
        kind: ResourceKind,
        out: &mut Vec<PendingOp>,
    ) -> Option<Step<T>> {
        let op = p.pending(kind)?;
        match self.poll(p.project(), op).await {
            Ok(OpState::Done) => None,
            Ok(OpState::Running(op)) => {
                let desc = format!("waiting for {}", op.description);
                out.push(op);
                Some(Step::Waiting(desc))
            }
            Err(e) if e.is_retryable() => {
                out.push(op.clone());
                Some(Step::Failed(e))
            }
            Err(e) => Some(Step::Failed(e)),
        }
    }

    /// A mutation's state as a step: ready with `ready` when done, waiting (and recorded)
    /// while running.
    pub(super) fn finish_op<T>(
        state: Result<OpState, CloudError>,
        ready: T,
        out: &mut Vec<PendingOp>,
    ) -> Step<T> {
        match state {
            Ok(OpState::Done) => Step::Ready(ready),
            Ok(OpState::Running(op)) => {
                let d = format!("waiting for {}", op.description);
                out.push(op);
                Step::Waiting(d)
            }
            Err(e) => Step::Failed(e),
        }
    }

    /// Deletes a Compute resource when `ours` says it is this gateway's (anything else with
    /// the name is as good as gone to this gateway), following a recorded delete first.
    pub(super) async fn delete_compute<T: DeserializeOwned>(
        &self,
        project: &str,
        d: Deletion<'_>,
        rec: &Recorded,
        ours: impl Fn(&T) -> bool,
    ) -> (Step<()>, Vec<PendingOp>) {
        let mut ops = Vec::new();
        if let Some(op) = rec.pending.iter().find(|o| o.resource == d.kind) {
            match self.poll(project, op).await {
                Ok(OpState::Running(op)) => {
                    let w = format!("waiting for {}", op.description);
                    ops.push(op);
                    return (Step::Waiting(w), ops);
                }
                Ok(OpState::Done) => {}
                Err(e) => return (Step::Failed(e), ops),
            }
        }
        let (get_op, del_op) = d.kind.get_and_delete();
        // The id makes a second delete of a recreated resource a new request.
        let found = self
            .get_opt::<serde_json::Value>(Service::Compute, &d.path, get_op, &d.name)
            .await
            .and_then(|v| {
                v.map(|v| {
                    let id = v
                        .get("id")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    decode::<T>(v, get_op, &d.name).map(|t| (id, t))
                })
                .transpose()
            });
        match found {
            // A read refused as malformed (GCP's "Unknown zone" for a mistyped zone) names
            // a place where nothing can exist: there is nothing to delete, and waiting
            // would wedge the deletion for ever.
            Err(e) if e.is_invalid_argument() => (Step::Ready(()), ops),
            Err(e) => (Step::Failed(e), ops),
            Ok(None) => (Step::Ready(()), ops),
            Ok(Some((_, v))) if !ours(&v) => (Step::Ready(()), ops),
            Ok(Some((gcp_id, _))) => {
                let rid = names::request_id(&[del_op, project, &d.name, &gcp_id, d.salt]);
                let r = self
                    .mutate::<()>(
                        None,
                        Mutation {
                            method: Method::DELETE,
                            path: d.path.clone(),
                            body: None,
                            op: del_op,
                            kind: d.kind,
                            what: &d.name,
                            scope: d.scope.clone(),
                        },
                        &rid,
                    )
                    .await;
                match r {
                    Ok(OpState::Done) => {
                        (Step::Waiting(format!("{} {} deleted", d.kind, d.name)), ops)
                    }
                    Err(e) if e.is_not_found() => (Step::Ready(()), ops),
                    other => (Self::finish_op(other, (), &mut ops), ops),
                }
            }
        }
    }

    /// Deletes an IAM or Secret Manager resource (`kind` names it in errors) when `ours`
    /// says it is this gateway's; gone already is done. These deletes are synchronous.
    pub(super) async fn delete_rpc<T: DeserializeOwned>(
        &self,
        s: Service,
        path: &str,
        (get_op, del_op): (&'static str, &'static str),
        what: &str,
        ours: impl Fn(&T) -> bool,
    ) -> Step<()> {
        match self.get_opt::<T>(s, path, get_op, what).await {
            Err(e) => return Step::Failed(e),
            Ok(None) => return Step::Ready(()),
            Ok(Some(v)) if !ours(&v) => return Step::Ready(()),
            Ok(Some(_)) => {}
        }
        match self
            .api
            .call::<serde::de::IgnoredAny>(
                s,
                Method::DELETE,
                path,
                None,
                del_op,
                what,
                Retry::Transient,
            )
            .await
        {
            Ok(_) => Step::Ready(()),
            Err(e) if e.is_not_found() => Step::Ready(()),
            Err(e) => Step::Failed(e),
        }
    }

    /// Waits (server side, through `operations.wait`) until any of `target`'s recorded
    /// operations ends or the wait call returns.
    pub(super) async fn wait_for_any(&self, target: &Target, recorded: &Recorded) {
        let project = target.project.as_str();
        let waits: Vec<_> = recorded
            .pending
            .iter()
            .filter(|op| op.belongs_to(target))
            .map(|op| {
                let path = format!(
                    "projects/{project}/{}/operations/{}/wait",
                    op.scope, op.name
                );
                Box::pin(async move {
                    let _ = self
                        .api
                        .call::<serde::de::IgnoredAny>(
                            Service::Compute,
                            Method::POST,
                            &path,
                            None,
                            "wait operation",
                            &op.name,
                            Retry::Transient,
                        )
                        .await;
                })
            })
            .collect();
        // select_all refuses an empty set: nothing to wait for.
        if waits.is_empty() {
            return;
        }
        futures_util::future::select_all(waits).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operations_state_comes_from_its_status_error_and_urls() {
        let running: Operation = serde_json::from_value(serde_json::json!({
            "name": "operation-1", "status": "RUNNING",
            "zone": "https://compute.googleapis.com/compute/v1/projects/p/zones/us-central1-a"
        }))
        .expect("operation");
        match op_state(
            &running,
            ResourceKind::Instance,
            "insert instance wg-x",
            "global",
        ) {
            Ok(OpState::Running(op)) => {
                assert_eq!(op.scope, "zones/us-central1-a");
                assert_eq!(op.resource, ResourceKind::Instance);
            }
            _ => panic!("running"),
        }
        let failed: Operation = serde_json::from_value(serde_json::json!({
            "name": "operation-2", "status": "DONE",
            "error": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED", "message": "no capacity"}]}
        }))
        .expect("operation");
        let e = op_state(
            &failed,
            ResourceKind::Instance,
            "insert instance wg-x",
            "zones/z",
        )
        .err()
        .expect("failed");
        assert!(
            matches!(&e, CloudError::Operation { code, .. } if code == "ZONE_RESOURCE_POOL_EXHAUSTED")
        );
        let done: Operation =
            serde_json::from_value(serde_json::json!({"name": "operation-3", "status": "DONE"}))
                .expect("operation");
        assert!(matches!(
            op_state(&done, ResourceKind::Network, "insert network", "global"),
            Ok(OpState::Done)
        ));
    }
}
