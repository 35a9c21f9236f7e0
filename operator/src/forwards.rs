//! Forward classification: which of a Gateway's forwards can be served, and why the others
//! cannot. Pure: the controller fetches the Namespaces and Services and hands them in.
//!
//! Reasons and messages are the Go operator's, so existing alerts keep matching. Invalid
//! forwards are excluded from the firewall and the link; valid ones keep working.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Service};

use crate::api::conditions::reasons;
use crate::api::{ALLOW_INGRESS_LABEL, Forward, Protocol};

/// A forward the link can DNAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Public port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service's ClusterIP (IPv4: the link's data plane is IPv4 only).
    pub cluster_ip: std::net::Ipv4Addr,
    /// The Service port.
    pub target_port: u16,
    /// Relayed behind a PROXY protocol header.
    pub proxy_protocol: Option<crate::api::ProxyProtocol>,
}

/// Why a forward cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// One of the reasons in [`reasons`].
    pub reason: &'static str,
    /// The Go operator's message for it.
    pub message: String,
}

/// The verdict on one forward, in spec order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The forward as written.
    pub forward: Forward,
    /// Its effective target namespace.
    pub namespace: String,
    /// Servable, or why not.
    pub result: Result<Resolved, Invalid>,
}

/// What the cluster holds that forwards depend on.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Namespaces by name (only those forwards name).
    pub namespaces: BTreeMap<String, Namespace>,
    /// Services by (namespace, name) (only those forwards name).
    pub services: BTreeMap<(String, String), Service>,
}

/// Classifies every forward of a Gateway in `gw_namespace`.
pub fn classify(gw_namespace: &str, forwards: &[Forward], seen: &Observed) -> Vec<Classified> {
    forwards
        .iter()
        .map(|f| {
            let namespace = f.namespace.clone().unwrap_or_else(|| gw_namespace.into());
            let result = classify_one(gw_namespace, &namespace, f, seen);
            Classified {
                forward: f.clone(),
                namespace,
                result,
            }
        })
        .collect()
}

fn classify_one(
    gw_namespace: &str,
    ns: &str,
    f: &Forward,
    seen: &Observed,
) -> Result<Resolved, Invalid> {
    let invalid = |reason, message| Err(Invalid { reason, message });
    if ns != gw_namespace {
        let Some(n) = seen.namespaces.get(ns) else {
            return invalid(
                reasons::TARGET_NAMESPACE_NOT_FOUND,
                format!("forward target namespace {ns:?} does not exist"),
            );
        };
        let consent = n
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ALLOW_INGRESS_LABEL))
            .is_some_and(|v| v == "true");
        if !consent {
            return invalid(
                reasons::CROSS_NAMESPACE_FORWARD_DENIED,
                format!(
                    "cross-namespace forward to {ns:?} denied: target namespace must carry label {ALLOW_INGRESS_LABEL}=true"
                ),
            );
        }
    }
    let name = &f.service;
    let Some(svc) = seen.services.get(&(ns.to_owned(), name.clone())) else {
        return invalid(
            reasons::SERVICE_NOT_FOUND,
            format!("forward backend Service {name:?} in namespace {ns:?} not found yet"),
        );
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    let Some(ip) = ip.filter(|_| kind != "ExternalName") else {
        return invalid(
            reasons::UNSUPPORTED_SERVICE_TYPE,
            format!(
                "forward backend Service {name:?} in namespace {ns:?} has unsupported type {kind:?}: a ClusterIP is required to DNAT to"
            ),
        );
    };
    let target = f.effective_target_port();
    let publishes =
        spec.ports.unwrap_or_default().iter().any(|p| {
            p.port == target && p.protocol.as_deref().unwrap_or("TCP") == f.protocol.as_str()
        });
    if !publishes {
        return invalid(
            reasons::TARGET_PORT_NOT_LISTENING,
            format!(
                "forward backend Service {name:?} in namespace {ns:?} does not publish {} port {target}",
                f.protocol
            ),
        );
    }
    // The schema bounds both ports to 1..=65535; a value outside it is a server bug, reported
    // like any unusable forward rather than trusted.
    match (u16::try_from(f.port), u16::try_from(target)) {
        (Ok(port), Ok(target_port)) if port > 0 && target_port > 0 => Ok(Resolved {
            port,
            protocol: f.protocol,
            cluster_ip: ip,
            target_port,
            proxy_protocol: f.proxy_protocol,
        }),
        _ => invalid(
            reasons::TARGET_PORT_NOT_LISTENING,
            format!(
                "forward port {} or target port {target} is out of range",
                f.port
            ),
        ),
    }
}

/// The `Ready=False` reason and message when any forward is invalid: the first invalid
/// forward's reason, and every message.
pub fn summary(classified: &[Classified]) -> Option<(&'static str, String)> {
    let invalid: Vec<&Invalid> = classified
        .iter()
        .filter_map(|c| c.result.as_ref().err())
        .collect();
    let first = invalid.first()?;
    let messages: Vec<&str> = invalid.iter().map(|i| i.message.as_str()).collect();
    Some((
        first.reason,
        format!(
            "{} forward(s) invalid: {}",
            invalid.len(),
            messages.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    fn fwd(
        port: i32,
        proto: Protocol,
        svc: &str,
        ns: Option<&str>,
        target: Option<i32>,
    ) -> Forward {
        Forward {
            port,
            protocol: proto,
            service: svc.into(),
            namespace: ns.map(Into::into),
            target_port: target,
            proxy_protocol: None,
        }
    }

    fn service(kind: &str, ip: &str, ports: &[(i32, &str)]) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(kind.into()),
                cluster_ip: (!ip.is_empty()).then(|| ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(p, proto)| ServicePort {
                            port: *p,
                            protocol: Some((*proto).into()),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn ns(name: &str, consent: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: consent.map(|v| [(ALLOW_INGRESS_LABEL.to_owned(), v.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn seen() -> Observed {
        let mut o = Observed::default();
        for (n, c) in [("yes", Some("true")), ("no", Some("TRUE")), ("bare", None)] {
            o.namespaces.insert(n.into(), ns(n, c));
        }
        let svcs = [
            (
                "app",
                "web",
                service("ClusterIP", "10.96.0.10", &[(80, "TCP"), (53, "UDP")]),
            ),
            (
                "app",
                "np",
                service("NodePort", "10.96.0.11", &[(8080, "TCP")]),
            ),
            ("app", "ext", service("ExternalName", "", &[])),
            (
                "app",
                "headless",
                service("ClusterIP", "None", &[(80, "TCP")]),
            ),
            (
                "yes",
                "web",
                service("ClusterIP", "10.96.1.10", &[(80, "TCP")]),
            ),
            (
                "no",
                "web",
                service("ClusterIP", "10.96.2.10", &[(80, "TCP")]),
            ),
        ];
        for (n, s, svc) in svcs {
            o.services.insert((n.into(), s.into()), svc);
        }
        o
    }

    #[test]
    fn each_reason_with_the_go_operators_message() {
        let forwards = [
            fwd(443, Protocol::Tcp, "web", None, Some(80)),
            fwd(53, Protocol::Udp, "web", None, None),
            fwd(8080, Protocol::Tcp, "np", None, None),
            fwd(1, Protocol::Tcp, "web", Some("gone"), Some(80)),
            fwd(2, Protocol::Tcp, "web", Some("no"), Some(80)),
            fwd(3, Protocol::Tcp, "web", Some("bare"), Some(80)),
            fwd(4, Protocol::Tcp, "web", Some("yes"), Some(80)),
            fwd(5, Protocol::Tcp, "missing", None, None),
            fwd(6, Protocol::Tcp, "ext", None, None),
            fwd(7, Protocol::Tcp, "headless", None, Some(80)),
            fwd(8, Protocol::Udp, "web", None, Some(80)),
        ];
        let c = classify("app", &forwards, &seen());
        let got: Vec<Result<String, &str>> = c
            .iter()
            .map(|c| match &c.result {
                Ok(r) => Ok(format!("{}:{}", r.cluster_ip, r.target_port)),
                Err(i) => Err(i.reason),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                Ok("10.96.0.10:80".into()),
                Ok("10.96.0.10:53".into()),
                Ok("10.96.0.11:8080".into()),
                Err(reasons::TARGET_NAMESPACE_NOT_FOUND),
                Err(reasons::CROSS_NAMESPACE_FORWARD_DENIED),
                Err(reasons::CROSS_NAMESPACE_FORWARD_DENIED),
                Ok("10.96.1.10:80".into()),
                Err(reasons::SERVICE_NOT_FOUND),
                Err(reasons::UNSUPPORTED_SERVICE_TYPE),
                Err(reasons::UNSUPPORTED_SERVICE_TYPE),
                Err(reasons::TARGET_PORT_NOT_LISTENING),
            ]
        );
        let msg = |i: usize| c[i].result.clone().expect_err("invalid").message;
        assert_eq!(msg(3), "forward target namespace \"gone\" does not exist");
        assert_eq!(
            msg(4),
            "cross-namespace forward to \"no\" denied: target namespace must carry label wgnet.dev/allow-gateway-ingress=true"
        );
        assert_eq!(
            msg(7),
            "forward backend Service \"missing\" in namespace \"app\" not found yet"
        );
        assert_eq!(
            msg(8),
            "forward backend Service \"ext\" in namespace \"app\" has unsupported type \"ExternalName\": a ClusterIP is required to DNAT to"
        );
        assert_eq!(
            msg(10),
            "forward backend Service \"web\" in namespace \"app\" does not publish UDP port 80"
        );
        let (reason, message) = summary(&c).expect("some invalid");
        assert_eq!(reason, reasons::TARGET_NAMESPACE_NOT_FOUND);
        assert!(
            message.starts_with("7 forward(s) invalid: forward target namespace"),
            "{message}"
        );
        assert_eq!(summary(&c[..3]), None);
    }
}
