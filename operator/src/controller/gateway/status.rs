//! The status step: a Gateway's status from what the pass found (the forwards, GCP's
//! progress, the VM's report, the link's Lease and pod, the DNS record), and the mapping
//! between `status.gcp` and the cloud layer's record. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use wgnet_cloud::{PendingOp, Progress, Recorded, ResourceKind};

use super::apply::Dns;
use super::observe::LinkObserved;
use crate::api::conditions::{self, messages, reasons};
use crate::api::{ForwardStatus, Gateway, GatewayStatus, GcpStatus, PendingOperation};
use crate::controller::{condition, pod_ready, remove_condition, set_condition};
use crate::forwards::{self, Classified};

/// `status.gcp` as the cloud layer's record. A pending operation of a kind the cloud layer
/// does not have (status is writable by others) is dropped: the resources' own state tells
/// the next pass what to do.
pub fn recorded_of(status: Option<&GatewayStatus>) -> Recorded {
    let Some(s) = status.and_then(|s| s.gcp.as_ref()) else {
        return Recorded::default();
    };
    Recorded {
        network: s.network.clone(),
        firewall: s.firewall.clone(),
        address_name: s.address_name.clone(),
        // The reserved address's IP, which passes between verifications trust rather
        // than read (before, every pass read the address: 495 of the 552 calls of a steady
        // resync at 500 Gateways); verifying passes read it back.
        address: s
            .address_name
            .as_ref()
            .and(status.and_then(|st| st.address.clone())),
        instance: s.instance.clone(),
        service_account_email: s.service_account_email.clone(),
        secret: s.secret.clone(),
        secret_version: s.secret_version.clone(),
        key_version: s.key_version,
        iam_bound: s.iam_bound,
        pending: s
            .pending_operations
            .iter()
            .filter_map(|p| {
                Some(PendingOp {
                    resource: ResourceKind::parse(&p.resource)?,
                    name: p.name.clone(),
                    scope: p.scope.clone(),
                    description: p.description.clone().unwrap_or_default(),
                })
            })
            .collect(),
    }
}

/// The cloud layer's record as `status.gcp`.
pub fn gcp_status_of(r: &Recorded, vm_state: Option<String>) -> GcpStatus {
    GcpStatus {
        network: r.network.clone(),
        firewall: r.firewall.clone(),
        address_name: r.address_name.clone(),
        instance: r.instance.clone(),
        service_account_email: r.service_account_email.clone(),
        secret: r.secret.clone(),
        key_version: r.key_version,
        vm_state,
        secret_version: r.secret_version.clone(),
        iam_bound: r.iam_bound,
        pending_operations: r
            .pending
            .iter()
            .map(|p| PendingOperation {
                resource: p.resource.as_str().to_owned(),
                name: p.name.clone(),
                scope: p.scope.clone(),
                description: (!p.description.is_empty()).then(|| p.description.clone()),
            })
            .collect(),
    }
}

/// What the operator knows of the link's tunnel: whether the Lease holder's pod is Ready,
/// the `TunnelReady` reason, and a sentence saying so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The holder's pod is Ready (a recent handshake).
    pub ready: bool,
    /// `TunnelReady`'s reason.
    pub reason: &'static str,
    /// `TunnelReady`'s message.
    pub message: String,
}

impl Tunnel {
    fn waiting(message: String) -> Self {
        Self {
            ready: false,
            reason: reasons::PROVISIONING,
            message,
        }
    }
}

/// Why the link Deployment's pods cannot be created, from its `ReplicaFailure` condition
/// (the ReplicaSet controller's FailedCreate, for example a PodSecurity refusal).
fn pods_rejected(deployment: &Deployment) -> Option<String> {
    deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// The tunnel as the link's Lease, its holder's pod and the Deployment show it.
pub fn tunnel_of(link: &LinkObserved) -> Tunnel {
    let Some(holder) = &link.holder else {
        if let Some(why) = link.deployment.as_ref().and_then(pods_rejected) {
            return Tunnel {
                ready: false,
                reason: reasons::LINK_PODS_REJECTED,
                message: format!("the cluster refuses to create the link's pods: {why}"),
            };
        }
        return Tunnel::waiting("no link replica holds the lease yet".into());
    };
    match &link.holder_pod {
        Some(pod) if pod_ready(pod) => Tunnel {
            ready: true,
            reason: reasons::READY,
            message: format!("link pod {holder} holds the lease and has a recent handshake"),
        },
        Some(_) => Tunnel::waiting(format!(
            "link pod {holder} holds the lease but is not ready (no recent handshake with the VM)"
        )),
        None => Tunnel::waiting(format!("the lease holder {holder} has no pod")),
    }
}

/// The VM's last report, kept instead of read again, when the Gateway is settled: it was
/// Ready with the VM reporting `ready`, this pass found every GCP resource as wanted and
/// changed nothing, the VM is RUNNING, and the link holds a recent handshake with it. The
/// handshake is fresher evidence of a working VM than its guest attributes, and skipping
/// that read makes a steady resync cost no GCP call of its own (issue 23). A VM that
/// reboots, fails or is changed shows in one of those conditions, and the next pass reads.
pub fn settled_report(
    gw: &Gateway,
    progress: &Progress,
    tunnel: &Tunnel,
) -> Option<BTreeMap<String, String>> {
    let status = gw.status.as_ref()?;
    let was_ready =
        condition(&status.conditions, conditions::READY).is_some_and(|(s, _)| s == "True");
    let vm_ready = status.gcp.as_ref()?.vm_state.as_deref() == Some("ready");
    let settled = was_ready
        && vm_ready
        && progress.ready
        && progress.writes == 0
        && progress.errors.is_empty()
        && progress.vm_status.as_deref() == Some("RUNNING")
        && tunnel.ready;
    settled.then(|| BTreeMap::from([("state".to_owned(), "ready".to_owned())]))
}

/// The Gateway's status after a pass: the forwards, `status.gcp`, and the conditions
/// `CloudReady`, `TunnelReady`, `DNSReady` and the summary `Ready`.
pub fn status_of(
    gw: &Gateway,
    classified: &[Classified],
    progress: &Progress,
    report: Option<&BTreeMap<String, String>>,
    address: Option<String>,
    tunnel: &Tunnel,
    dns: Option<Dns>,
) -> GatewayStatus {
    let generation = gw.metadata.generation;
    let mut s = gw.status.clone().unwrap_or_default();
    s.observed_generation = generation;
    s.address = address.clone();
    let vm_state = report.and_then(|r| r.get("state").cloned());
    s.gcp = Some(gcp_status_of(&progress.recorded, vm_state.clone()));
    s.forwards = classified
        .iter()
        .map(|c| ForwardStatus {
            port: c.forward.port,
            protocol: c.forward.protocol,
            active: c.result.is_ok(),
            reason: c.result.as_ref().err().map(|i| i.reason.to_owned()),
            message: c.result.as_ref().err().map(|i| i.message.clone()),
            cluster_ip: c.result.as_ref().ok().map(|r| r.cluster_ip.to_string()),
        })
        .collect();
    let active = classified.iter().filter(|c| c.result.is_ok()).count();
    s.forwards_ready = Some(format!("{active}/{}", classified.len()));

    let vm_ready = vm_state.as_deref() == Some("ready");
    let cloud = if let Some(e) = progress.errors.first() {
        (false, e.reason_code().to_owned(), e.to_string())
    } else if progress.ready && vm_ready {
        (
            true,
            reasons::READY.to_owned(),
            "every GCP resource exists and the VM reports ready".to_owned(),
        )
    } else if progress.ready {
        let err = report
            .and_then(|r| r.get("error"))
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let state = vm_state.as_deref().unwrap_or("nothing yet");
        (
            false,
            reasons::PROVISIONING.to_owned(),
            format!("the VM is running and reports {state}{err}"),
        )
    } else {
        (
            false,
            reasons::PROVISIONING.to_owned(),
            format!("waiting for {}", progress.waiting.join("; ")),
        )
    };
    set_condition(
        &mut s.conditions,
        conditions::CLOUD_READY,
        cloud.0,
        &cloud.1,
        &cloud.2,
        generation,
    );
    set_condition(
        &mut s.conditions,
        conditions::TUNNEL_READY,
        tunnel.ready,
        tunnel.reason,
        &tunnel.message,
        generation,
    );
    match dns {
        Some(d) => set_condition(
            &mut s.conditions,
            conditions::DNS_READY,
            d.ready,
            d.reason,
            &d.message,
            generation,
        ),
        None => remove_condition(&mut s.conditions, conditions::DNS_READY),
    }
    let (ok, reason, message) = if let Some((reason, message)) = forwards::summary(classified) {
        (false, reason.to_owned(), message)
    } else if let Some(e) = progress.errors.first() {
        (
            false,
            reasons::RECONCILE_FAILED.to_owned(),
            format!("ensure cloud resources: {e}"),
        )
    } else if tunnel.reason == reasons::LINK_PODS_REJECTED {
        // Not "Provisioning": nothing will change until an admin or the namespace owner
        // acts on the refusal the message quotes.
        (false, tunnel.reason.to_owned(), tunnel.message.clone())
    } else if address.is_some() && cloud.0 && tunnel.ready {
        (true, reasons::READY.to_owned(), messages::READY.to_owned())
    } else {
        (
            false,
            reasons::PROVISIONING.to_owned(),
            messages::PROVISIONING.to_owned(),
        )
    };
    set_condition(
        &mut s.conditions,
        conditions::READY,
        ok,
        &reason,
        &message,
        generation,
    );
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::controller::testing::{denied, gateway};
    use crate::forwards::{Invalid, Resolved};
    use k8s_openapi::api::core::v1::Pod;

    fn active(gw: &Gateway) -> Vec<Classified> {
        vec![Classified {
            forward: gw.spec.forwards[0].clone(),
            namespace: "apps".into(),
            result: Ok(Resolved {
                port: 8080,
                protocol: crate::api::Protocol::Tcp,
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                target_port: 80,
                proxy_protocol: None,
            }),
        }]
    }

    fn done() -> Progress {
        Progress {
            ready: true,
            address: Some("203.0.113.7".into()),
            vm_status: Some("RUNNING".into()),
            ..Progress::default()
        }
    }

    fn report(state: &str) -> BTreeMap<String, String> {
        [("state".to_owned(), state.to_owned())].into()
    }

    fn up() -> Tunnel {
        tunnel_of(&LinkObserved {
            holder: Some("edge-link-0".into()),
            holder_pod: Some(ready_pod()),
            deployment: None,
        })
    }

    fn ready_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge-link-0"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("pod")
    }

    fn cond<'a>(s: &'a GatewayStatus, t: &str) -> (&'a str, &'a str, &'a str) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("{t} missing"));
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn everything_up_is_ready_with_the_go_operators_words() {
        let gw = gateway();
        let s = status_of(
            &gw,
            &active(&gw),
            &done(),
            Some(&report("ready")),
            Some("203.0.113.7".into()),
            &up(),
            None,
        );
        assert_eq!(
            cond(&s, conditions::READY),
            ("True", "Ready", messages::READY)
        );
        assert_eq!(cond(&s, conditions::CLOUD_READY).0, "True");
        assert_eq!(cond(&s, conditions::TUNNEL_READY).0, "True");
        assert_eq!(s.forwards_ready.as_deref(), Some("1/1"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.forwards[0].cluster_ip.as_deref(), Some("10.96.0.10"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.type_ != conditions::DNS_READY)
        );
        // The same pass again changes nothing, so nothing is written.
        let mut again = gw.clone();
        again.status = Some(s.clone());
        let s2 = status_of(
            &again,
            &active(&gw),
            &done(),
            Some(&report("ready")),
            Some("203.0.113.7".into()),
            &up(),
            None,
        );
        assert_eq!(s, s2);
    }

    #[test]
    fn only_a_settled_gateway_keeps_the_vms_last_report() {
        let gw = gateway();
        let mut ready = gw.clone();
        ready.status = Some(status_of(
            &gw,
            &active(&gw),
            &done(),
            Some(&report("ready")),
            Some("203.0.113.7".into()),
            &up(),
            None,
        ));
        assert_eq!(
            settled_report(&ready, &done(), &up()),
            Some(report("ready"))
        );
        // Never Ready before: read.
        assert_eq!(settled_report(&gw, &done(), &up()), None);
        // The pass wrote, the cloud is not ready, or the VM is not running: read.
        let wrote = Progress {
            writes: 1,
            ..done()
        };
        assert_eq!(settled_report(&ready, &wrote, &up()), None);
        let waiting = Progress {
            ready: false,
            ..done()
        };
        assert_eq!(settled_report(&ready, &waiting, &up()), None);
        let stopped = Progress {
            vm_status: Some("TERMINATED".into()),
            ..done()
        };
        assert_eq!(settled_report(&ready, &stopped, &up()), None);
        // No recent handshake: read.
        let down = tunnel_of(&LinkObserved::default());
        assert_eq!(settled_report(&ready, &done(), &down), None);
    }

    #[test]
    fn a_booting_vm_and_a_waiting_link_are_provisioning() {
        let gw = gateway();
        let mut booting = report("installing");
        booting.insert("error".into(), "apt: retrying".into());
        let s = status_of(
            &gw,
            &active(&gw),
            &done(),
            Some(&booting),
            Some("203.0.113.7".into()),
            &tunnel_of(&LinkObserved::default()),
            None,
        );
        assert_eq!(
            cond(&s, conditions::CLOUD_READY),
            (
                "False",
                "Provisioning",
                "the VM is running and reports installing: apt: retrying"
            )
        );
        assert_eq!(
            cond(&s, conditions::TUNNEL_READY),
            (
                "False",
                "Provisioning",
                "no link replica holds the lease yet"
            )
        );
        assert_eq!(
            cond(&s, conditions::READY),
            ("False", "Provisioning", messages::PROVISIONING)
        );
        let waiting = Progress {
            waiting: vec!["instance wg-x".into(), "firewall wg-x".into()],
            ..Progress::default()
        };
        let s = status_of(&gw, &active(&gw), &waiting, None, None, &up(), None);
        assert_eq!(
            cond(&s, conditions::CLOUD_READY).2,
            "waiting for instance wg-x; firewall wg-x"
        );
    }

    #[test]
    fn a_gcp_error_names_gcps_reason_and_an_inactive_forward_comes_first() {
        let gw = gateway();
        let denied = Progress {
            errors: vec![denied()],
            ..Progress::default()
        };
        let s = status_of(&gw, &active(&gw), &denied, None, None, &up(), None);
        assert_eq!(cond(&s, conditions::CLOUD_READY).1, "PermissionDenied");
        let (st, reason, msg) = cond(&s, conditions::READY);
        assert_eq!((st, reason), ("False", "ReconcileFailed"));
        assert!(
            msg.starts_with("ensure cloud resources: ") && msg.contains("compute.instances.create")
        );

        let missing = vec![Classified {
            forward: gw.spec.forwards[0].clone(),
            namespace: "apps".into(),
            result: Err(Invalid {
                reason: reasons::SERVICE_NOT_FOUND,
                message: "Service apps/web does not exist".into(),
            }),
        }];
        let s = status_of(&gw, &missing, &denied, None, None, &up(), None);
        assert_eq!(cond(&s, conditions::READY).1, reasons::SERVICE_NOT_FOUND);
        assert_eq!(s.forwards_ready.as_deref(), Some("0/1"));
        assert_eq!(
            s.forwards[0].reason.as_deref(),
            Some(reasons::SERVICE_NOT_FOUND)
        );
    }

    #[test]
    fn refused_link_pods_are_their_own_reason_and_dns_is_reported_beside_ready() {
        let gw = gateway();
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "status": {"conditions": [{"type": "ReplicaFailure", "status": "True",
                "message": "pods \"edge-link-x\" is forbidden: violates PodSecurity \"baseline:latest\""}]}
        }))
        .expect("deployment");
        let refused = tunnel_of(&LinkObserved {
            deployment: Some(deployment),
            ..LinkObserved::default()
        });
        assert_eq!(refused.reason, reasons::LINK_PODS_REJECTED);
        let dns = Dns {
            ready: false,
            reason: "DNSEndpointCRDMissing",
            message: "not installed".into(),
        };
        let s = status_of(
            &gw,
            &active(&gw),
            &done(),
            Some(&report("ready")),
            Some("203.0.113.7".into()),
            &refused,
            Some(dns),
        );
        let (st, reason, msg) = cond(&s, conditions::READY);
        assert_eq!((st, reason), ("False", reasons::LINK_PODS_REJECTED));
        assert!(msg.contains("violates PodSecurity"), "{msg}");
        assert_eq!(cond(&s, conditions::DNS_READY).1, "DNSEndpointCRDMissing");
        // A holder without its pod, and one not yet Ready, are both still provisioning.
        let gone = tunnel_of(&LinkObserved {
            holder: Some("edge-link-0".into()),
            ..LinkObserved::default()
        });
        assert_eq!(gone.message, "the lease holder edge-link-0 has no pod");
        let mut pod = ready_pod();
        pod.status = None;
        let not_ready = tunnel_of(&LinkObserved {
            holder: Some("edge-link-0".into()),
            holder_pod: Some(pod),
            deployment: None,
        });
        assert!(!not_ready.ready && not_ready.reason == reasons::PROVISIONING);
    }

    #[test]
    fn status_gcp_round_trips_the_cloud_record() {
        let r = Recorded {
            network: Some("wgnet".into()),
            firewall: Some("wg-a".into()),
            address_name: Some("wg-a".into()),
            address: Some("203.0.113.7".into()),
            instance: Some("wg-a".into()),
            service_account_email: Some("wg-a@p.iam.gserviceaccount.com".into()),
            secret: Some("wg-a".into()),
            secret_version: Some("projects/1/secrets/wg-a/versions/2".into()),
            key_version: Some(2),
            iam_bound: true,
            pending: vec![PendingOp {
                resource: ResourceKind::Instance,
                name: "op-1".into(),
                scope: "zones/us-central1-a".into(),
                description: "insert instance wg-a".into(),
            }],
        };
        // The reserved address's IP is kept in status.address, not in status.gcp, and comes
        // back from there: without it every pass read the address from GCP (issue 23).
        let back = recorded_of(Some(&GatewayStatus {
            gcp: Some(gcp_status_of(&r, Some("ready".into()))),
            address: Some("203.0.113.7".into()),
            ..GatewayStatus::default()
        }));
        assert_eq!(back, r);
        // An ephemeral IP (no reserved address) is not a record of one.
        let ephemeral = Recorded {
            address_name: None,
            ..r.clone()
        };
        let back = recorded_of(Some(&GatewayStatus {
            gcp: Some(gcp_status_of(&ephemeral, None)),
            address: Some("198.51.100.140".into()),
            ..GatewayStatus::default()
        }));
        assert_eq!(back.address, None);
        // A kind nobody records (someone else wrote the status) is not passed on.
        let mut odd = gcp_status_of(&r, None);
        odd.pending_operations[0].resource = "instance/../stop".into();
        let odd = GatewayStatus {
            gcp: Some(odd),
            ..GatewayStatus::default()
        };
        assert!(recorded_of(Some(&odd)).pending.is_empty());
    }
}
