//! The build step: from a validated Gateway and its keys, GCP's desired state, the link's
//! `config.json` and every child object of the link. Pure.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use wgnet_cloud::vm::{self, VmConfig};
use wgnet_cloud::{Desired, SecretBytes, Target};

use super::validate::ValidatedGateway;
use super::{link_key_secret_name, link_name};
use crate::api::{Gateway, Protocol};
use crate::children::{EgressPort, LinkChildren, LinkInputs, LinkParams};
use crate::controller::Settings;
use crate::forwards::{Classified, Observed};
use crate::keys::KeySet;

/// The key of the link's private key in its Secret (the link's default `--secret-key`).
const LINK_KEY: &str = "private-key";

/// What GCP should hold for `gw`: the VM with its metadata, the firewall's ports (those of
/// the active forwards), the VM's private key for Secret Manager.
pub fn desired(gw: &Gateway, v: &ValidatedGateway, target: &Target, keys: &KeySet) -> Desired {
    let wg = &v.wireguard;
    let cfg = VmConfig {
        listen_port: wg.listen_port,
        mtu: wg.mtu,
        gateway_address: wg.gateway_address,
        link_address: wg.link_address,
        subnet: wg.subnet.clone(),
        link_public_key: keys.link.public.clone(),
        vm_public_key: keys.vm.public.clone(),
    };
    let mut ports: Vec<(u16, wgnet_cloud::Protocol)> = v
        .classified
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|r| {
            let p = match r.protocol {
                Protocol::Tcp => wgnet_cloud::Protocol::Tcp,
                Protocol::Udp => wgnet_cloud::Protocol::Udp,
            };
            (r.port, p)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Desired {
        target: target.clone(),
        machine_type: gw.spec.gcp.machine_type.clone(),
        image: gw.spec.gcp.image.clone(),
        disk_size_gb: gw.spec.gcp.disk_size_gb,
        reserved_ip: gw.spec.gcp.reserved_ip,
        spot: gw.spec.gcp.spot,
        listen_port: wg.listen_port,
        ports,
        source_ranges: gw.spec.source_ranges.clone(),
        metadata: vm::metadata(&cfg),
        vm_key: SecretBytes::new(keys.vm.private.expose().as_bytes().to_vec()),
        key_version: keys.version,
    }
}

/// The link's `config.json`: the VM as its one peer (its endpoint empty until the address
/// is known, so the link waits), the active forwards, and the Gateway's reconcileInterval
/// as the link's resync period.
pub fn link_config(v: &ValidatedGateway, keys: &KeySet, address: Option<&str>) -> String {
    use wgnet_link::config::{IngressDocument, IngressForward, LinkDocument, PeerDocument};
    let wg = &v.wireguard;
    let forwards = v
        .classified
        .iter()
        .filter_map(|c| c.result.as_ref().ok())
        .map(|r| IngressForward {
            port: r.port,
            protocol: link_protocol(r.protocol),
            cluster_ip: r.cluster_ip,
            target_port: r.target_port,
            proxy_protocol: r
                .proxy_protocol
                .map(|crate::api::ProxyProtocol::V2| wgnet_link::config::ProxyProtocol::V2),
        })
        .collect();
    LinkDocument::Ingress(IngressDocument {
        address: format!("{}/{}", wg.link_address, wg.prefix),
        mtu: wg.mtu,
        peer: PeerDocument {
            endpoint: address
                .map(|a| format!("{a}:{}", wg.listen_port))
                .unwrap_or_default(),
            public_key: keys.vm.public.clone(),
            persistent_keepalive: wg.keepalive,
            // Clients' packets keep their own addresses through the VM.
            allowed_ips: vec!["0.0.0.0/0".into()],
        },
        forwards,
        resync_seconds: wg.resync_seconds,
    })
    .to_json()
}

/// The link crate's spelling of a protocol.
pub fn link_protocol(p: Protocol) -> wgnet_link::net::Protocol {
    match p {
        Protocol::Tcp => wgnet_link::net::Protocol::Tcp,
        Protocol::Udp => wgnet_link::net::Protocol::Udp,
    }
}

/// What the link Deployment of `gw` is.
pub fn link_params(gw: &Gateway) -> LinkParams<'_> {
    let name = gw.meta().name.as_deref().unwrap_or_default();
    LinkParams {
        namespace: gw.meta().namespace.as_deref().unwrap_or_default(),
        name: link_name(name),
        owner: name,
        component: "link",
        owner_ref: gw.controller_owner_ref(&()).unwrap_or_default(),
        secret: (link_key_secret_name(name), LINK_KEY.to_owned()),
        replicas: gw.spec.link.replicas.max(1),
        resources: gw.spec.link.resources.clone(),
        node_selector: gw.spec.link.node_selector.clone(),
        tolerations: gw.spec.link.tolerations.clone(),
        affinity: gw.spec.link.affinity.clone(),
        image_pull_secrets: gw.spec.link.image_pull_secrets.clone(),
    }
}

/// The ports the link pods send to, for their NetworkPolicy: each active forward's Service
/// port and, since after Service DNAT the destination is the endpoint's port, the
/// Service's targetPort (number or name) as well.
pub fn egress_ports(classified: &[Classified], services: &Observed) -> Vec<EgressPort> {
    let mut ports = Vec::new();
    for cl in classified {
        let Ok(r) = &cl.result else { continue };
        let proto = r.protocol.as_str().to_owned();
        ports.push(EgressPort {
            protocol: proto.clone(),
            port: IntOrString::Int(i32::from(r.target_port)),
        });
        let target = services
            .services
            .get(&(cl.namespace.clone(), cl.forward.service.clone()))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| {
                ps.iter().find(|sp| {
                    sp.port == i32::from(r.target_port)
                        && sp.protocol.as_deref().unwrap_or("TCP") == proto
                })
            })
            .and_then(|sp| sp.target_port.clone());
        if let Some(tp) = target {
            ports.push(EgressPort {
                protocol: proto,
                port: tp,
            });
        }
    }
    ports
}

/// The link's parameters and every one of its objects.
pub struct Link<'a> {
    /// Names, owner and pod settings.
    pub params: LinkParams<'a>,
    /// The objects.
    pub objects: LinkChildren,
}

/// Every child object of `gw`'s link.
pub fn link_children<'a>(
    gw: &'a Gateway,
    v: &ValidatedGateway,
    services: &Observed,
    keys: &KeySet,
    address: Option<&str>,
    settings: &Settings,
) -> Link<'a> {
    let params = link_params(gw);
    let objects = LinkChildren::build(
        &params,
        &settings.link,
        LinkInputs {
            config_json: link_config(v, keys, address),
            tunnel: Some(("UDP", v.wireguard.listen_port)),
            egress_ports: egress_ports(&v.classified, services),
            key: Some((LINK_KEY.to_owned(), keys.link.private.expose().to_owned())),
            service: None,
            clients: None,
        },
    );
    Link { params, objects }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::controller::gateway::observe::Inputs;
    use crate::controller::gateway::validate::validate;
    use crate::controller::testing;

    fn gateway() -> Gateway {
        testing::gateway_with(serde_json::json!({"reconcileInterval": "1m30s", "keepalive": 7}))
    }

    fn settings() -> Settings {
        testing::settings(&[])
    }

    /// A Service `web` in `apps` with port 80 → targetPort `http`, observed.
    fn observed() -> Inputs {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"clusterIP": "10.96.0.10", "type": "ClusterIP",
                     "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]}
        }))
        .expect("service");
        let mut i = Inputs::default();
        i.forwards
            .services
            .insert(("apps".into(), "web".into()), svc);
        i
    }

    /// The document the operator writes is one the link's own parser accepts, with the
    /// forwards, the VM as peer and the Gateway's reconcileInterval as the resync period.
    #[test]
    fn link_config_is_what_the_link_reads() {
        use wgnet_link::config::{self as link, LinkConfig, Raw};
        let gw = gateway();
        let v = validate(&gw, &settings(), &observed()).expect("valid");
        let keys = KeySet::generate(1).expect("keys");
        let json = link_config(&v, &keys, Some("203.0.113.7"));
        let raw = Raw {
            config: Some(json.into_bytes()),
            secret: Some(keys.link.private.expose().as_bytes().to_vec()),
        };
        let LinkConfig::Ingress(i) = link::parse(&raw).expect("the link accepts it") else {
            panic!("ingress expected")
        };
        assert_eq!(i.resync, Duration::from_secs(90));
        assert_eq!(i.address.to_string(), "10.99.0.2/29");
        assert_eq!(i.forwards.len(), 1);
        assert_eq!(
            i.forwards[0].cluster_ip,
            std::net::Ipv4Addr::new(10, 96, 0, 10)
        );
        let peer = i.peer.expect("the VM is the peer");
        assert_eq!(peer.endpoint, Some(("203.0.113.7".into(), 51820)));
        assert_eq!(peer.keepalive, Some(7));
        assert_eq!(peer.public_key.to_base64(), keys.vm.public);
        // Before the address is known the link has no endpoint and waits.
        let raw = Raw {
            config: Some(link_config(&v, &keys, None).into_bytes()),
            secret: Some(keys.link.private.expose().as_bytes().to_vec()),
        };
        let LinkConfig::Ingress(i) = link::parse(&raw).expect("accepted") else {
            panic!("ingress expected")
        };
        assert_eq!(i.peer.and_then(|p| p.endpoint), None);
    }

    #[test]
    fn the_policy_allows_the_service_port_and_its_named_target() {
        let gw = gateway();
        let v = validate(&gw, &settings(), &observed()).expect("valid");
        let ports = egress_ports(&v.classified, &observed().forwards);
        assert_eq!(
            ports,
            vec![
                EgressPort {
                    protocol: "TCP".into(),
                    port: IntOrString::Int(80)
                },
                EgressPort {
                    protocol: "TCP".into(),
                    port: IntOrString::String("http".into())
                },
            ]
        );
    }

    #[test]
    fn desired_state_opens_the_active_forwards_only() {
        let gw = gateway();
        let keys = KeySet::generate(3).expect("keys");
        let target = super::super::target_of(&gw, "c1");
        let v = validate(&gw, &settings(), &observed()).expect("valid");
        let d = desired(&gw, &v, &target, &keys);
        assert_eq!(d.ports, vec![(8080, wgnet_cloud::Protocol::Tcp)]);
        assert_eq!(d.key_version, 3);
        let v = validate(&gw, &settings(), &Inputs::default()).expect("valid");
        assert!(
            desired(&gw, &v, &target, &keys).ports.is_empty(),
            "no Service, no port"
        );
        let link = link_children(
            &gw,
            &v,
            &Inputs::default().forwards,
            &keys,
            None,
            &settings(),
        );
        assert_eq!(
            link.objects
                .key
                .as_ref()
                .and_then(|s| s.metadata.name.as_deref()),
            Some("edge-link-key")
        );
        assert!(link.objects.pdb.is_none());
    }
}
