//! Where the configuration comes from: a directory (polled; for tests, the sandbox and
//! plain hosts) or the Kubernetes API (a watch on one named ConfigMap and one named
//! Secret, so edits arrive in well under a second instead of after kubelet's volume sync).
//! Each source publishes the latest [`Raw`] on a `watch` channel.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use zeroize::Zeroize as _;

use crate::config::{CONFIG_KEY, Raw};

/// How often the directory is checked.
const POLL: Duration = Duration::from_millis(200);

/// Polls `dir/config.json` and `dir/<secret_key>`; publishes whenever either changes.
pub async fn files(dir: PathBuf, secret_key: String, tx: watch::Sender<Raw>) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let raw = Raw {
            config: tokio::fs::read(dir.join(CONFIG_KEY)).await.ok(),
            secret: tokio::fs::read(dir.join(&secret_key)).await.ok(),
        };
        tx.send_if_modified(|cur| {
            if *cur == raw {
                false
            } else {
                *cur = raw;
                true
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

/// Watches the named ConfigMap and Secret in `ns`.
pub async fn kube(
    client: kube::Client,
    ns: String,
    configmap: String,
    secret: String,
    secret_key: String,
    tx: watch::Sender<Raw>,
) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let cm_cfg = watcher::Config::default().fields(&format!("metadata.name={configmap}"));
    let sec_cfg = watcher::Config::default().fields(&format!("metadata.name={secret}"));
    let mut cm_stream = watcher::watcher(cms, cm_cfg).boxed();
    let mut sec_stream = watcher::watcher(secrets, sec_cfg).boxed();
    loop {
        tokio::select! {
            ev = cm_stream.next() => match ev {
                Some(Ok(Event::Apply(cm) | Event::InitApply(cm))) => {
                    let v = cm.data.and_then(|mut d| d.remove(CONFIG_KEY)).map(String::into_bytes);
                    tx.send_if_modified(|r| std::mem::replace(&mut r.config, v.clone()) != v);
                }
                Some(Ok(Event::Delete(_))) => {
                    tx.send_if_modified(|r| r.config.take().is_some());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the link ConfigMap failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => return,
            },
            ev = sec_stream.next() => match ev {
                Some(Ok(Event::Apply(s) | Event::InitApply(s))) => {
                    // Every copy of the key is wiped once it is no longer needed: the
                    // Secret's other entries, the value replaced, and this pass's copy.
                    let mut data = s.data.unwrap_or_default();
                    let mut v = data.remove(&secret_key).map(|b| b.0);
                    data.values_mut().for_each(|b| b.0.zeroize());
                    tx.send_if_modified(|r| {
                        if r.secret == v {
                            return false;
                        }
                        if let Some(old) = &mut r.secret {
                            old.zeroize();
                        }
                        r.secret = v.clone();
                        true
                    });
                    if let Some(v) = &mut v {
                        v.zeroize();
                    }
                }
                Some(Ok(Event::Delete(_))) => {
                    tx.send_if_modified(|r| match r.secret.take() {
                        Some(mut old) => {
                            old.zeroize();
                            true
                        }
                        None => false,
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // The error display of a watch never includes object contents.
                    tracing::warn!(error = %e, "watching the link Secret failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => return,
            },
        }
    }
}
