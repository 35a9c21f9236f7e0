//! The teardown step, run by the finalizer helper while a Gateway is being deleted: drain
//! its GCP resources and say how far that got. `Ok` lets the finalizer go; an error keeps
//! it ([`Error::Deleting`] while deletions are on their way). I/O: GCP and the status.

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use wgnet_cloud::Cloud;

use super::status::{gcp_status_of, recorded_of};
use super::{OPERATION_WAIT, SETTLING, target_of};
use crate::api::Gateway;
use crate::api::conditions::{self, reasons};
use crate::controller::error::Error;
use crate::controller::{Context, publish, set_condition, write_status};

/// The annotation that lets an admin release a Gateway whose GCP resources cannot be
/// deleted (a project the operator can no longer reach): the finalizer goes, and a Warning
/// Event names what was left in GCP.
pub const ABANDON_ANNOTATION: &str = "wgnet.dev/abandon-cloud-resources";

/// Says why the finalizer may go (the helper removes it when this returns `Ok`).
async fn release<C: Cloud>(
    gw: &Gateway,
    ctx: &Context<C>,
    warning: bool,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    let key = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    ctx.metrics.gateway_state(&key, None);
    ctx.vm_reports.forget(&gw.uid().unwrap_or_default());
    tracing::info!(gateway = %key, reason, "Released");
    publish(&ctx.recorder, gw, warning, reason, "Teardown", note).await;
    Ok(Action::await_change())
}

/// Deletes the Gateway's GCP resources, or releases it when there is nothing to delete or
/// an admin abandoned them.
pub async fn teardown<C: Cloud>(gw: &Gateway, ctx: &Context<C>) -> Result<Action, Error> {
    let key = format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any());
    let target = target_of(gw, &ctx.settings.cluster_id);
    let recorded = recorded_of(gw.status.as_ref());
    let project = &gw.spec.gcp.project_id;
    if gw
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        let left = recorded.created();
        let left = if left.is_empty() {
            "nothing recorded".to_owned()
        } else {
            left.join(", ")
        };
        return release(
            gw,
            ctx,
            true,
            "Abandoned",
            format!(
                "{ABANDON_ANNOTATION}=true: released without deleting; possibly left in GCP project {project}: {left}"
            ),
        )
        .await;
    }
    // A project this operator may not use was never touched: nothing to delete.
    if recorded.is_empty() && !ctx.settings.policy.projects.allows(project) {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            format!("project {project} is not allowed; nothing was created in GCP"),
        )
        .await;
    }
    tracing::info!(gateway = %key, "deleting GCP resources");
    let p = ctx.cloud.delete(&target, &recorded).await;
    if p.done {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            "every GCP resource of the gateway is deleted".into(),
        )
        .await;
    }
    // Nothing was ever created and the project answers only with a denial, or does not
    // exist: waiting would wedge the deletion forever, and there is nothing to leak.
    if recorded.is_empty()
        && !p.errors.is_empty()
        && p.errors
            .iter()
            .all(|e| e.is_permission_denied() || e.is_project_not_found())
    {
        return release(
            gw,
            ctx,
            false,
            "Deleted",
            format!(
                "nothing of the gateway was ever created in GCP, and project {project} denies access or does not exist: {}",
                p.errors[0]
            ),
        )
        .await;
    }
    let mut s = gw.status.clone().unwrap_or_default();
    s.gcp = Some(gcp_status_of(&p.recorded, None));
    let message = match p.errors.first() {
        Some(e) if e.is_permission_denied() => format!(
            "deleting GCP resources failed and will be retried: {e}; to release the Gateway without deleting them, annotate it {ABANDON_ANNOTATION}=true"
        ),
        Some(e) => format!("deleting GCP resources failed and will be retried: {e}"),
        None => format!(
            "waiting for GCP resources to be deleted: {}",
            p.waiting.join("; ")
        ),
    };
    set_condition(
        &mut s.conditions,
        conditions::READY,
        false,
        reasons::TERMINATING,
        &message,
        gw.metadata.generation,
    );
    if Some(&s) != gw.status.as_ref() {
        write_status(&ctx.client, gw, |g| g.status = Some(s))
            .await
            .map_err(Error::Status)?;
    }
    ctx.metrics.gateway_state(&key, Some(reasons::TERMINATING));
    if let Some(e) = p.errors.first() {
        return Err(Error::Teardown(e.clone()));
    }
    let after = if p.recorded.pending.is_empty() {
        // Nothing of ours is pending (another Gateway's delete holds the network, say).
        SETTLING
    } else {
        // Bounded and server side: the next step follows the operation's end.
        let _ =
            tokio::time::timeout(OPERATION_WAIT, ctx.cloud.wait_any(&target, &p.recorded)).await;
        Duration::from_millis(10)
    };
    Err(Error::Deleting {
        waiting: p.waiting.join("; "),
        after,
    })
}
