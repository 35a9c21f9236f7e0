//! The operator's forward classification over arbitrary forwards, Services and
//! Namespaces: never panics, one verdict per forward in spec order, and a servable forward
//! always points at its own Service's ClusterIP and one of its ports.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wgnet_operator::api::{Forward, Protocol};
use wgnet_operator::forwards::{Observed, classify};

/// Names from a small alphabet, so forwards and Services meet often.
fn name(n: u8) -> String {
    ["web", "db", "dns", "", "a-b", "WEB"][usize::from(n) % 6].to_owned()
}

#[derive(Arbitrary, Debug)]
struct In {
    forwards: Vec<F>,
    services: Vec<S>,
    namespaces: Vec<(u8, bool)>,
}

#[derive(Arbitrary, Debug)]
struct F {
    port: i32,
    udp: bool,
    service: u8,
    namespace: Option<u8>,
    target_port: Option<i32>,
}

#[derive(Arbitrary, Debug)]
struct S {
    namespace: u8,
    name: u8,
    type_: u8,
    cluster_ip: u8,
    ports: Vec<(i32, bool, Option<u8>)>,
}

fuzz_target!(|input: In| {
    let forwards: Vec<Forward> = input
        .forwards
        .iter()
        .map(|f| Forward {
            port: f.port,
            protocol: if f.udp { Protocol::Udp } else { Protocol::Tcp },
            service: name(f.service),
            namespace: f.namespace.map(name),
            target_port: f.target_port,
        })
        .collect();
    let mut seen = Observed::default();
    for (n, consents) in &input.namespaces {
        let labels = if *consents {
            serde_json::json!({"wgnet.dev/allow-gateway-ingress": "true"})
        } else {
            serde_json::json!({})
        };
        if let Ok(ns) = serde_json::from_value(serde_json::json!({"metadata": {"name": name(*n), "labels": labels}})) {
            seen.namespaces.insert(name(*n), ns);
        }
    }
    let mut ips = BTreeMap::new();
    for s in &input.services {
        let ip = ["10.96.0.10", "None", "", "fd00::1", "10.96.0.300"][usize::from(s.cluster_ip) % 5];
        let type_ = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"][usize::from(s.type_) % 4];
        let ports: Vec<serde_json::Value> = s
            .ports
            .iter()
            .map(|(p, udp, n)| {
                serde_json::json!({"port": p, "protocol": if *udp {"UDP"} else {"TCP"},
                    "name": n.map(name)})
            })
            .collect();
        let svc = serde_json::json!({"metadata": {"name": name(s.name), "namespace": name(s.namespace)},
            "spec": {"type": type_, "clusterIP": ip, "ports": ports}});
        if let Ok(svc) = serde_json::from_value(svc) {
            ips.insert((name(s.namespace), name(s.name)), ip);
            seen.services.insert((name(s.namespace), name(s.name)), svc);
        }
    }
    let out = classify("apps", &forwards, &seen);
    assert_eq!(out.len(), forwards.len());
    for (c, f) in out.iter().zip(&forwards) {
        assert_eq!(&c.forward, f, "spec order");
        if let Ok(r) = &c.result {
            let key = (c.namespace.clone(), f.service.clone());
            assert_eq!(ips.get(&key).copied(), Some(r.cluster_ip.to_string().as_str()));
            assert!(r.port > 0 && r.target_port > 0);
        }
    }
});
