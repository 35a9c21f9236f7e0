//! The VM's service account (marked by its description) and its one right: reading the
//! gateway's own secret (`roles/secretmanager.secretAccessor` on that secret only). I/O.

use super::wire::{
    Binding, CreateServiceAccountRequest, Policy, ServiceAccount, SetIamPolicyRequest,
};
use super::{GcpCloud, Pass, Step, collision, marker_ours, secret};
use crate::api::{Retry, Service};

/// The role the VM's account gets on its secret.
const ROLE: &str = "roles/secretmanager.secretAccessor";

/// The service account email of gateway resource `name` in `project`.
pub(super) fn email(name: &str, project: &str) -> String {
    format!("{name}@{project}.iam.gserviceaccount.com")
}

pub(super) fn path(project: &str, email: &str) -> String {
    format!("projects/{project}/serviceAccounts/{email}")
}

impl GcpCloud {
    /// Ready with the account's email.
    pub(super) async fn ensure_service_account(&self, p: &Pass<'_>) -> Step<String> {
        let email = email(&p.name, p.project());
        if !p.verify
            && p.rec.service_account_email.as_deref() == Some(email.as_str())
            && p.rec.iam_bound
        {
            return Step::Ready(email);
        }
        let t = &p.d.target;
        let path = path(p.project(), &email);
        let check = |v: &ServiceAccount| {
            if marker_ours(&v.description, &self.install, p.id()) {
                Step::Ready(email.clone())
            } else {
                Step::Failed(collision("service account", &email, &v.description))
            }
        };
        if let Some(v) = p.snap.as_ref().and_then(|s| s.account(&email)) {
            return check(&v);
        }
        match self
            .get_opt::<ServiceAccount>(Service::Iam, &path, "get service account", &email)
            .await
        {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) => return check(&v),
            Ok(None) => {}
        }
        let body = CreateServiceAccountRequest {
            account_id: p.name.clone(),
            service_account: ServiceAccount {
                email: None,
                display_name: t.id.display_name(),
                description: t.id.compact_marker(&self.install, &t.zone),
            },
        };
        p.wrote();
        // A new account of the same email does not inherit the old one's grant.
        p.recreated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let created = self
            .send::<_, ServiceAccount>(
                Service::Iam,
                &format!("projects/{}/serviceAccounts", p.project()),
                &body,
                "create service account",
                &email,
                Retry::Transient,
            )
            .await;
        match created {
            Ok(v) => check(&v),
            Err(e) if e.is_already_exists() => {
                // An earlier attempt whose answer was lost, or IAM's eventual consistency.
                match self
                    .get_opt::<ServiceAccount>(Service::Iam, &path, "get service account", &email)
                    .await
                {
                    Ok(Some(v)) => check(&v),
                    Ok(None) => Step::Waiting(format!(
                        "waiting for service account {email} to become visible"
                    )),
                    Err(e) => Step::Failed(e),
                }
            }
            Err(e) => Step::Failed(e),
        }
    }

    /// Grants the account read access to the secret: read-modify-write with the etag; a
    /// concurrent change (409 ABORTED) re-reads.
    pub(super) async fn ensure_binding(&self, p: &Pass<'_>, email: &str, id: &str) -> Step<()> {
        let recreated = p.recreated.load(std::sync::atomic::Ordering::Relaxed);
        if !p.deep
            && !recreated
            && p.rec.iam_bound
            && p.rec.service_account_email.as_deref() == Some(email)
        {
            return Step::Ready(());
        }
        let path = secret::path(p.project(), id);
        let member = format!("serviceAccount:{email}");
        for _ in 0..3 {
            let mut policy = match self
                .get::<Policy>(
                    Service::Secrets,
                    &format!("{path}:getIamPolicy"),
                    "get secret policy",
                    id,
                )
                .await
            {
                Ok(v) => v,
                Err(e) => return Step::Failed(e),
            };
            let present = policy
                .bindings
                .iter()
                .any(|b| b.role == ROLE && b.members.contains(&member));
            if present {
                return Step::Ready(());
            }
            match policy.bindings.iter_mut().find(|b| b.role == ROLE) {
                Some(b) => b.members.push(member.clone()),
                None => policy.bindings.push(Binding {
                    role: ROLE.into(),
                    members: vec![member.clone()],
                }),
            }
            p.wrote();
            match self
                .send::<_, Policy>(
                    Service::Secrets,
                    &format!("{path}:setIamPolicy"),
                    &SetIamPolicyRequest { policy },
                    "set secret policy",
                    id,
                    Retry::AnsweredOnly,
                )
                .await
            {
                Ok(_) => return Step::Ready(()),
                Err(e) if e.is_aborted() => continue,
                Err(e) if e.is_unknown_member() => {
                    return Step::Waiting(format!(
                        "waiting for service account {email} to propagate in IAM"
                    ));
                }
                Err(e) => return Step::Failed(e),
            }
        }
        Step::Waiting(format!("secret {id} policy keeps changing; retrying"))
    }
}
