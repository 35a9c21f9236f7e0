//! The Secret Manager secret holding the VM's WireGuard private key: created once with
//! ownership labels, a version added when the key set changes (or adopted when the latest
//! version already holds the key, after a lost answer). The key is compared in constant
//! time and never appears in errors or logs. I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::wire::{AddSecretVersionRequest, Replication, Secret, SecretPayload, SecretVersion};
use super::{GcpCloud, Pass, Step, collision, labels_ours};
use crate::api::{Retry, Service};

/// The secret's path.
pub(super) fn path(project: &str, id: &str) -> String {
    format!("projects/{project}/secrets/{id}")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl GcpCloud {
    /// Ready with (secret id, version name).
    pub(super) async fn ensure_secret(&self, p: &Pass<'_>) -> Step<(String, String)> {
        let id = p.name.clone();
        if !p.verify
            && p.rec.secret.as_deref() == Some(id.as_str())
            && p.rec.key_version == Some(p.d.key_version)
            && let Some(v) = &p.rec.secret_version
        {
            return Step::Ready((id, v.clone()));
        }
        let path = path(p.project(), &id);
        let ours = |v: &Secret| labels_ours(&v.labels, &self.install, p.id());
        // The snapshot shows the secret exists and is ours; its latest version, which no
        // list shows, is read on deep passes and whenever the key changes.
        if !p.deep
            && p.rec.secret.as_deref() == Some(id.as_str())
            && p.rec.key_version == Some(p.d.key_version)
            && let Some(v) = &p.rec.secret_version
            && let Some(found) = p.snap.as_ref().and_then(|s| s.secret(&id))
        {
            return if ours(&found) {
                Step::Ready((id, v.clone()))
            } else {
                Step::Failed(collision("secret", &id, ""))
            };
        }
        let not_ours = || Step::Failed(collision("secret", &id, ""));
        match self
            .get_opt::<Secret>(Service::Secrets, &path, "get secret", &id)
            .await
        {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) if !ours(&v) => return not_ours(),
            Ok(Some(_)) => {}
            Ok(None) => {
                p.recreated
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let body = Secret {
                    name: String::new(),
                    labels: p.labels(&self.install),
                    replication: Some(Replication::default()),
                    create_time: None,
                };
                p.wrote();
                let r = self
                    .send::<_, Secret>(
                        Service::Secrets,
                        &format!("projects/{}/secrets?secretId={id}", p.project()),
                        &body,
                        "create secret",
                        &id,
                        Retry::Transient,
                    )
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if e.is_already_exists() => {
                        match self
                            .get_opt::<Secret>(Service::Secrets, &path, "get secret", &id)
                            .await
                        {
                            Ok(Some(v)) if ours(&v) => {}
                            Ok(Some(_)) => return not_ours(),
                            Ok(None) => return Step::Waiting(format!("waiting for secret {id}")),
                            Err(e) => return Step::Failed(e),
                        }
                    }
                    Err(e) => return Step::Failed(e),
                }
            }
        }
        // The key: adopt the latest version when it already holds it (a lost answer to an
        // earlier addVersion), otherwise add one.
        let latest = self
            .get_opt::<SecretVersion>(
                Service::Secrets,
                &format!("{path}/versions/latest:access"),
                "access secret",
                &id,
            )
            .await;
        match latest {
            Err(e) => return Step::Failed(e),
            Ok(Some(v)) => {
                let same = v
                    .payload
                    .as_ref()
                    .and_then(|pl| STANDARD.decode(&pl.data).ok())
                    .is_some_and(|b| constant_time_eq(&b, p.d.vm_key.expose()));
                if same {
                    return Step::Ready((id, v.name));
                }
            }
            Ok(None) => {}
        }
        let body = AddSecretVersionRequest {
            payload: SecretPayload {
                data: STANDARD.encode(p.d.vm_key.expose()),
            },
        };
        p.wrote();
        match self
            .send::<_, SecretVersion>(
                Service::Secrets,
                &format!("{path}:addVersion"),
                &body,
                "add secret version",
                &id,
                Retry::AnsweredOnly,
            )
            .await
        {
            Ok(v) => Step::Ready((id, v.name)),
            Err(e) => Step::Failed(e),
        }
    }
}
