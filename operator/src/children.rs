//! Builders of the in-cluster objects the operator owns: the link's ServiceAccount, Role,
//! RoleBinding, Secret, ConfigMap, Deployment, PodDisruptionBudget and NetworkPolicy
//! (together a [`LinkChildren`]), the EgressGateway's Service, a Gateway's key Secret and its
//! DNSEndpoint. Every label is written by [`labels`]. Pure: every function returns a typed
//! object ready for server-side apply under one field manager.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, HostPathVolumeSource, LocalObjectReference, ObjectFieldSelector,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, Secret, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Toleration, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "wgnet-operator";
/// `app.kubernetes.io/managed-by` value on every owned object; the label-scoped watches
/// select on it, so the operator never caches other objects of these kinds.
pub const MANAGED_BY: &str = "wgnet-operator";
/// Label key naming the owning resource (`<kind>.<namespace>.<name>` is not needed: owned
/// objects live in their owner's namespace).
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label key of the component.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Label key of the manager.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The selector of every owned object.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=wgnet-operator";
/// The port the link serves `/healthz`, `/readyz` and `/metrics` on.
pub const LINK_HTTP_PORT: i32 = 9090;

/// Settings shared by every link Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkImage {
    /// Image reference of `wgnet-link`.
    pub image: String,
    /// Pull policy.
    pub pull_policy: String,
    /// Add a privileged init container that turns on IPv4 forwarding in the pod; off where
    /// the cluster allows the `net.ipv4.ip_forward` sysctl or the CNI turns it on.
    pub privileged_init: bool,
}

/// What a link Deployment is for.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkParams<'a> {
    /// Namespace of the owner and every object.
    pub namespace: &'a str,
    /// Base name: `<owner>-link` for Gateways, `<owner>` for EgressGateways.
    pub name: String,
    /// Owner name (the instance label).
    pub owner: &'a str,
    /// `link` or `egress-link`.
    pub component: &'static str,
    /// The owner reference every object carries.
    pub owner_ref: OwnerReference,
    /// The Secret holding the key material and its key.
    pub secret: (String, String),
    /// Replicas (above 1 means hot standbys under the Lease).
    pub replicas: i32,
    /// Pod resources.
    pub resources: Option<ResourceRequirements>,
    /// Pod node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Pod tolerations.
    pub tolerations: Vec<Toleration>,
    /// Pod affinity, as the spec gives it.
    pub affinity: Option<Affinity>,
    /// Image pull Secrets.
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// The labels selecting `owner`'s `component` (a link's pods, a PodDisruptionBudget).
pub fn selector(owner: &str, component: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "wireguard-gateway-operator"),
        (INSTANCE_LABEL, owner),
        (COMPONENT_LABEL, component),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The labels of every object the operator owns: the selector plus `managed-by`, which the
/// operator's label-scoped watches select on. The one place labels are written.
pub fn labels(owner: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector(owner, component);
    l.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    l
}

/// `key=value,...` for a label selector.
pub fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an object of `owner`'s `component`.
fn owned_meta(
    name: &str,
    namespace: &str,
    owner: &str,
    component: &str,
    owner_ref: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(owner, component)),
        owner_references: owner_ref.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

impl LinkParams<'_> {
    /// Labels of every object and of the pods.
    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(self.owner, self.component)
    }

    /// The pods' selector.
    pub fn selector(&self) -> BTreeMap<String, String> {
        selector(self.owner, self.component)
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        owned_meta(
            name,
            self.namespace,
            self.owner,
            self.component,
            Some(self.owner_ref.clone()),
        )
    }

    /// The Lease the replicas elect a leader on (named like the Deployment).
    pub fn lease_name(&self) -> String {
        self.name.clone()
    }
}

/// The link pods' affinity: the spec's, and with several replicas a preferred
/// anti-affinity spreading them over nodes unless the spec sets its own.
fn affinity(p: &LinkParams<'_>) -> Option<Affinity> {
    let mut a = p.affinity.clone();
    if p.replicas > 1 && a.as_ref().is_none_or(|a| a.pod_anti_affinity.is_none()) {
        a.get_or_insert_with(Affinity::default).pod_anti_affinity = Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(p.selector()),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        });
    }
    a
}

/// The link's ServiceAccount.
pub fn service_account(p: &LinkParams<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: p.meta(&p.name),
        ..ServiceAccount::default()
    }
}

/// The link's Role: its own Lease, ConfigMap and Secret by name, nothing else. `create` on
/// leases cannot be limited by name in Kubernetes RBAC, so it stands alone.
pub fn role(p: &LinkParams<'_>) -> Role {
    let rule =
        |group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(vec![resource.to_owned()]),
            resource_names: names,
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..PolicyRule::default()
        };
    let read = ["get", "list", "watch"];
    Role {
        metadata: p.meta(&p.name),
        rules: Some(vec![
            rule(
                "coordination.k8s.io",
                "leases",
                Some(vec![p.lease_name()]),
                &["get", "update", "patch"],
            ),
            rule("coordination.k8s.io", "leases", None, &["create"]),
            rule("", "configmaps", Some(vec![p.name.clone()]), &read),
            rule("", "secrets", Some(vec![p.secret.0.clone()]), &read),
        ]),
    }
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(p: &LinkParams<'_>) -> RoleBinding {
    RoleBinding {
        metadata: p.meta(&p.name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: p.name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: p.name.clone(),
            namespace: Some(p.namespace.to_owned()),
            ..Subject::default()
        }]),
    }
}

/// A Secret with one key, such as the link's private key copied out of the full key set.
pub fn secret(p: &LinkParams<'_>, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: p.meta(name),
        type_: Some("Opaque".into()),
        data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Secret::default()
    }
}

/// The link's ConfigMap with its `config.json`.
pub fn config_map(p: &LinkParams<'_>, config_json: String) -> ConfigMap {
    ConfigMap {
        metadata: p.meta(&p.name),
        data: Some([("config.json".to_owned(), config_json)].into()),
        ..ConfigMap::default()
    }
}

/// The link Deployment. Configuration arrives through the API (no volumes, no restart on
/// change); `/dev/net/tun` comes from the node, which container runtimes allow by default.
pub fn deployment(p: &LinkParams<'_>, img: &LinkImage) -> Deployment {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..ObjectFieldSelector::default()
        }),
        ..EnvVarSource::default()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let mut args: Vec<String> = [
        "--configmap",
        &p.name,
        "--secret",
        &p.secret.0,
        "--secret-key",
        &p.secret.1,
        "--http",
        &format!("0.0.0.0:{LINK_HTTP_PORT}"),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Every link holds its Lease: a Gateway's for TunnelReady and standbys, an
    // EgressGateway's to publish its last handshake (the Lease's annotation).
    args.extend(["--lease".to_owned(), p.lease_name()]);
    let link = Container {
        name: "link".into(),
        image: Some(img.image.clone()),
        image_pull_policy: Some(img.pull_policy.clone()),
        args: Some(args),
        env: Some(vec![
            EnvVar {
                name: "POD_NAMESPACE".into(),
                value_from: Some(field("metadata.namespace")),
                ..EnvVar::default()
            },
            EnvVar {
                name: "HOSTNAME".into(),
                value_from: Some(field("metadata.name")),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: LINK_HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Every second: readiness is how the operator learns of the first handshake (a
        // watch on the pod), so the probe period is most of what Ready lags behind the
        // tunnel (issue 23); the probe is one local HTTP request.
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: p.resources.clone(),
        security_context: Some(SecurityContext {
            // Netlink, nftables and the TUN device need CAP_NET_ADMIN and nothing more.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tun".into(),
            mount_path: "/dev/net/tun".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let init = img.privileged_init.then(|| {
        vec![Container {
            name: "ip-forward".into(),
            image: Some(img.image.clone()),
            image_pull_policy: Some(img.pull_policy.clone()),
            // /proc/sys is read-only in unprivileged containers and ip_forward is not a
            // "safe" sysctl, so this one-shot step is the only privileged part.
            args: Some(vec!["enable-forwarding".into()]),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                run_as_user: Some(0),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }]
    });
    let strategy = if p.replicas > 1 {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    } else {
        // One replica holds the only copy of the key: never run two during an update.
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        }
    };
    Deployment {
        metadata: p.meta(&p.name),
        spec: Some(DeploymentSpec {
            replicas: Some(p.replicas),
            selector: LabelSelector {
                match_labels: Some(p.selector()),
                ..LabelSelector::default()
            },
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(p.labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(p.name.clone()),
                    automount_service_account_token: Some(true),
                    termination_grace_period_seconds: Some(30),
                    init_containers: init,
                    containers: vec![link],
                    node_selector: (!p.node_selector.is_empty()).then(|| p.node_selector.clone()),
                    tolerations: (!p.tolerations.is_empty()).then(|| p.tolerations.clone()),
                    affinity: affinity(p),
                    image_pull_secrets: (!p.image_pull_secrets.is_empty())
                        .then(|| p.image_pull_secrets.clone()),
                    volumes: Some(vec![Volume {
                        name: "tun".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/dev/net/tun".into(),
                            type_: Some("CharDevice".into()),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A PodDisruptionBudget keeping one replica through voluntary disruptions (replicas > 1).
pub fn pdb(p: &LinkParams<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: p.meta(&p.name),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(p.selector()),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// One port a link may send to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPort {
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// Number or container port name.
    pub port: IntOrString,
}

/// The link's egress NetworkPolicy: DNS, the API server, the tunnel, and the listed ports.
///
/// CNIs differ in whether egress rules see a Service's port (before DNAT) or the endpoint's
/// port (after DNAT, Cilium and Calico's eBPF modes): `ports` lists both, the Service port and
/// its targetPort, number or name, so the policy holds either way. Destinations stay open
/// because endpoints move; the ports are the restriction.
pub fn network_policy(
    p: &LinkParams<'_>,
    tunnel: Option<(&str, u16)>,
    ports: &[EgressPort],
    clients: Option<&Clients>,
) -> NetworkPolicy {
    let port = |proto: &str, port: IntOrString| NetworkPolicyPort {
        protocol: Some(proto.into()),
        port: Some(port),
        ..NetworkPolicyPort::default()
    };
    let mut rules = vec![
        NetworkPolicyEgressRule {
            ports: Some(vec![
                port("UDP", IntOrString::Int(53)),
                port("TCP", IntOrString::Int(53)),
            ]),
            to: None,
        },
        // The API server (the Lease, the ConfigMap and Secret watches).
        NetworkPolicyEgressRule {
            ports: Some(vec![
                port("TCP", IntOrString::Int(443)),
                port("TCP", IntOrString::Int(6443)),
            ]),
            to: None,
        },
    ];
    if let Some((proto, p)) = tunnel {
        rules.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(proto, IntOrString::Int(i32::from(p)))]),
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
        });
    }
    let mut ports = ports.to_vec();
    let key = |e: &EgressPort| {
        let port = match &e.port {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::String(s) => s.clone(),
        };
        (e.protocol.clone(), port)
    };
    ports.sort_by_key(key);
    ports.dedup_by_key(|e| key(e));
    if !ports.is_empty() {
        rules.push(NetworkPolicyEgressRule {
            ports: Some(
                ports
                    .into_iter()
                    .map(|e| port(&e.protocol, e.port))
                    .collect(),
            ),
            to: None,
        });
    }
    let ingress = clients.map(|c| {
        let from = if c.namespaces.iter().any(|n| n == "*") {
            vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            }]
        } else {
            let mut names: Vec<String> = c.namespaces.clone();
            names.push(p.namespace.to_owned());
            names.sort();
            names.dedup();
            vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "In".into(),
                        values: Some(names),
                    }]),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]
        };
        vec![NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(
                c.ports
                    .iter()
                    .map(|e| port(&e.protocol, e.port.clone()))
                    .collect(),
            ),
        }]
    });
    let mut types = vec!["Egress".to_owned()];
    if ingress.is_some() {
        types.push("Ingress".into());
    }
    NetworkPolicy {
        metadata: p.meta(&p.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(p.selector()),
                ..LabelSelector::default()
            }),
            policy_types: Some(types),
            egress: Some(rules),
            ingress,
        }),
    }
}

/// Who may send to a link pod: pods of these namespaces (the owner's is added; `*` is
/// every namespace), on these ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Clients {
    /// Namespaces besides the owner's, or `*`.
    pub namespaces: Vec<String>,
    /// The ports they may reach.
    pub ports: Vec<EgressPort>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// The port on the link pod.
    pub port: i32,
    /// The Service's port (often `port`).
    pub service_port: i32,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

/// The EgressGateway's ClusterIP Service: one named port per forward, to the forward's port
/// on the link pod (the link DNATs it into the tunnel).
pub fn egress_service(p: &LinkParams<'_>, name: &str, ports: &[NamedPort]) -> Service {
    Service {
        metadata: p.meta(name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(p.selector()),
            ports: Some(
                ports
                    .iter()
                    .map(|np| ServicePort {
                        name: Some(np.name.clone()),
                        port: np.service_port,
                        protocol: Some(np.protocol.clone()),
                        target_port: Some(IntOrString::Int(np.port)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A Gateway's full key set (both keypairs; the link gets only its own key, in the Secret
/// its Role names). Created once, never applied over: a second set would split the VM and
/// the link.
pub fn key_secret(
    name: &str,
    namespace: &str,
    owner: &str,
    owner_ref: Option<OwnerReference>,
    data: BTreeMap<String, Vec<u8>>,
) -> Secret {
    Secret {
        metadata: owned_meta(name, namespace, owner, "keys", owner_ref),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Secret::default()
    }
}

/// external-dns's `DNSEndpoint` publishing `hostnames` as A records of `address`.
pub fn dns_endpoint(
    name: &str,
    namespace: &str,
    owner_ref: Option<OwnerReference>,
    hostnames: &[String],
    address: &str,
) -> serde_json::Value {
    let endpoints: Vec<_> = hostnames
        .iter()
        .map(|h| serde_json::json!({"dnsName": h, "recordType": "A", "targets": [address]}))
        .collect();
    serde_json::json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": owned_meta(name, namespace, name, "dns", owner_ref),
        "spec": {"endpoints": endpoints},
    })
}

/// Every object of one link, built together from the owner's spec. Applied by one
/// function in the order of the fields; the optional ones are pruned (by label) when the
/// spec no longer needs them.
#[derive(Clone, Debug)]
pub struct LinkChildren {
    /// The link's identity.
    pub service_account: ServiceAccount,
    /// Its rights: its own Lease, ConfigMap and Secret.
    pub role: Role,
    /// Binds the two.
    pub role_binding: RoleBinding,
    /// The Secret holding only the link's private key, when the operator makes the key
    /// (Gateways); an EgressGateway's link reads the user's Secret.
    pub key: Option<Secret>,
    /// The link's `config.json`.
    pub config_map: ConfigMap,
    /// What the link pods may send to.
    pub network_policy: NetworkPolicy,
    /// The pods.
    pub deployment: Deployment,
    /// One replica kept through voluntary disruptions, with more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
    /// The EgressGateway's Service, last: traffic is sent only once the pods exist.
    pub service: Option<Service>,
}

/// What differs between the links of the two kinds.
#[derive(Clone, Debug, Default)]
pub struct LinkInputs {
    /// The `config.json` document.
    pub config_json: String,
    /// The protocol and port the tunnel's UDP goes to, when known.
    pub tunnel: Option<(&'static str, u16)>,
    /// The in-cluster ports the link forwards to.
    pub egress_ports: Vec<EgressPort>,
    /// The link's private key, when the operator makes it: `(data key, base64 value)`.
    pub key: Option<(String, String)>,
    /// The Service's name and ports, for an EgressGateway.
    pub service: Option<(String, Vec<NamedPort>)>,
    /// Who may send to the link pods (none: the policy restricts only egress).
    pub clients: Option<Clients>,
}

impl LinkChildren {
    /// Builds every object of the link described by `p`.
    pub fn build(p: &LinkParams<'_>, img: &LinkImage, inputs: LinkInputs) -> Self {
        Self {
            service_account: service_account(p),
            role: role(p),
            role_binding: role_binding(p),
            key: inputs
                .key
                .map(|(key, value)| secret(p, &p.secret.0, &key, &value)),
            config_map: config_map(p, inputs.config_json),
            network_policy: network_policy(
                p,
                inputs.tunnel,
                &inputs.egress_ports,
                inputs.clients.as_ref(),
            ),
            deployment: deployment(p, img),
            pdb: (p.replicas > 1).then(|| pdb(p)),
            service: inputs
                .service
                .map(|(name, ports)| egress_service(p, &name, &ports)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(replicas: i32) -> LinkParams<'static> {
        LinkParams {
            namespace: "apps",
            name: "web-link".into(),
            owner: "web",
            component: "link",
            owner_ref: OwnerReference {
                api_version: "wgnet.dev/v1alpha1".into(),
                kind: "Gateway".into(),
                name: "web".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            secret: ("web-keys".into(), "link-private-key".into()),
            replicas,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            affinity: None,
            image_pull_secrets: vec![],
        }
    }

    fn image(privileged_init: bool) -> LinkImage {
        LinkImage {
            image: "ghcr.io/wgnet-dev/wgnet-link:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            privileged_init,
        }
    }

    #[test]
    fn one_replica_recreates_and_more_surge_with_a_budget() {
        let d = deployment(&params(1), &image(true));
        let spec = d.spec.expect("spec");
        assert_eq!(
            spec.strategy.and_then(|s| s.type_).as_deref(),
            Some("Recreate")
        );
        let d = deployment(&params(3), &image(true));
        let spec = d.spec.expect("spec");
        let s = spec.strategy.expect("strategy");
        assert_eq!(s.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            s.rolling_update.and_then(|r| r.max_unavailable),
            Some(IntOrString::Int(0))
        );
        assert!(spec.template.spec.expect("pod").affinity.is_some());
        let b = pdb(&params(3)).spec.expect("pdb");
        assert_eq!(b.min_available, Some(IntOrString::Int(1)));
    }

    #[test]
    fn the_children_carry_one_set_of_labels_and_a_budget_only_with_standbys() {
        let one = LinkChildren::build(&params(1), &image(false), LinkInputs::default());
        assert!(one.pdb.is_none() && one.key.is_none() && one.service.is_none());
        let three = LinkChildren::build(
            &params(3),
            &image(false),
            LinkInputs {
                key: Some(("private-key".into(), "k".into())),
                service: Some((
                    "web".into(),
                    vec![NamedPort {
                        name: "http".into(),
                        port: 80,
                        service_port: 8080,
                        protocol: "TCP".into(),
                    }],
                )),
                ..LinkInputs::default()
            },
        );
        let want = labels("web", "link");
        let metas = [
            &three.service_account.metadata,
            &three.role.metadata,
            &three.role_binding.metadata,
            &three.config_map.metadata,
            &three.network_policy.metadata,
            &three.deployment.metadata,
            &three.pdb.as_ref().expect("pdb").metadata,
            &three.key.as_ref().expect("key").metadata,
            &three.service.as_ref().expect("service").metadata,
        ];
        for m in metas {
            assert_eq!(m.labels.as_ref(), Some(&want), "{:?}", m.name);
            assert_eq!(m.owner_references.as_ref().map(Vec::len), Some(1));
        }
        assert_eq!(
            selector_string(&want),
            "app.kubernetes.io/component=link,app.kubernetes.io/instance=web,app.kubernetes.io/managed-by=wgnet-operator,app.kubernetes.io/name=wireguard-gateway-operator"
        );
    }

    #[test]
    fn only_the_init_container_is_privileged_and_only_when_asked() {
        let pod = deployment(&params(1), &image(true))
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let link = &pod.containers[0];
        let sc = link.security_context.clone().expect("sc");
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.expect("caps");
        assert_eq!(caps.add, Some(vec!["NET_ADMIN".to_owned()]));
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
        let init = pod.init_containers.expect("init");
        assert_eq!(
            init[0].security_context.clone().and_then(|s| s.privileged),
            Some(true)
        );
        let args = link.args.clone().expect("args");
        for want in [
            "--configmap",
            "web-link",
            "--secret",
            "web-keys",
            "--secret-key",
            "link-private-key",
            "--lease",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        let pod = deployment(&params(1), &image(false))
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert!(pod.init_containers.is_none());
    }

    #[test]
    fn the_role_names_only_the_links_own_objects() {
        let r = role(&params(1));
        for rule in r.rules.expect("rules") {
            let verbs = rule.verbs.join(",");
            match rule.resource_names {
                Some(names) => assert_eq!(names.len(), 1, "{names:?}"),
                None => assert_eq!(verbs, "create", "only create is unnamed"),
            }
            assert!(!verbs.contains("delete") && !verbs.contains('*'));
        }
    }

    #[test]
    fn the_policy_allows_both_sides_of_service_dnat() {
        let np = network_policy(
            &params(1),
            Some(("UDP", 51820)),
            &[
                EgressPort {
                    protocol: "TCP".into(),
                    port: IntOrString::Int(80),
                },
                EgressPort {
                    protocol: "TCP".into(),
                    port: IntOrString::String("http".into()),
                },
                EgressPort {
                    protocol: "TCP".into(),
                    port: IntOrString::Int(80),
                },
            ],
            None,
        );
        let rules = np.spec.and_then(|s| s.egress).expect("egress");
        let last = rules.last().and_then(|r| r.ports.clone()).expect("ports");
        assert_eq!(last.len(), 2, "deduplicated: {last:?}");
        assert!(rules.iter().any(|r| {
            r.ports
                .as_ref()
                .is_some_and(|p| p.iter().any(|p| p.port == Some(IntOrString::Int(51820))))
        }));
    }

    #[test]
    fn the_service_port_may_differ_and_pods_take_affinity_and_pull_secrets() {
        let svc = egress_service(
            &params(1),
            "corp",
            &[NamedPort {
                name: "mssql-b".into(),
                port: 1434,
                service_port: 1433,
                protocol: "TCP".into(),
            }],
        );
        let port = &svc.spec.and_then(|s| s.ports).unwrap_or_default()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (1433, Some(IntOrString::Int(1434)))
        );

        let mut p = params(2);
        p.image_pull_secrets = vec![LocalObjectReference {
            name: "registry".into(),
        }];
        p.affinity = Some(Affinity {
            node_affinity: Some(k8s_openapi::api::core::v1::NodeAffinity::default()),
            ..Affinity::default()
        });
        let pod = deployment(&p, &image(false))
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        assert_eq!(
            pod.image_pull_secrets.as_deref(),
            Some(&p.image_pull_secrets[..])
        );
        let a = pod.affinity.expect("affinity");
        assert!(a.node_affinity.is_some(), "the spec's affinity is kept");
        assert!(
            a.pod_anti_affinity.is_some(),
            "two replicas still spread over nodes"
        );
    }
}
