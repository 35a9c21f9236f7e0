//! The validate step: what a Gateway asks for, checked against the operator's settings and
//! the cluster's state as observed, and turned into the typed values every later step
//! uses. Pure.

use std::net::Ipv4Addr;

use wgnet_cloud::Recorded;

use super::observe::Inputs;
use super::status::recorded_of;
use crate::api::Gateway;
use crate::controller::Settings;
use crate::controller::error::ValidateError;
use crate::forwards::{self, Classified};

/// A Gateway this operator will serve, with its spec parsed.
#[derive(Clone, Debug)]
pub struct ValidatedGateway {
    /// Every forward, with what it resolves to or why it is inactive.
    pub classified: Vec<Classified>,
    /// The WireGuard settings, parsed.
    pub wireguard: Wireguard,
    /// What `status.gcp` records of earlier passes.
    pub recorded: Recorded,
}

/// `spec.wireguard` as typed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wireguard {
    /// The VM's UDP port.
    pub listen_port: u16,
    /// The tunnel's MTU.
    pub mtu: u16,
    /// The VM's tunnel address.
    pub gateway_address: Ipv4Addr,
    /// The link's tunnel address.
    pub link_address: Ipv4Addr,
    /// The tunnel subnet, as written.
    pub subnet: String,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Keepalive in seconds.
    pub keepalive: u16,
    /// The link's resync period in seconds.
    pub resync_seconds: u64,
}

/// Checks `gw` against `settings` and classifies its forwards against `observed`.
pub fn validate(
    gw: &Gateway,
    settings: &Settings,
    observed: &Inputs,
) -> Result<ValidatedGateway, ValidateError> {
    settings.policy.check(gw, observed.rank)?;
    let ns = gw.metadata.namespace.as_deref().unwrap_or_default();
    Ok(ValidatedGateway {
        classified: forwards::classify(ns, &gw.spec.forwards, &observed.forwards),
        wireguard: wireguard(gw)?,
        recorded: recorded_of(gw.status.as_ref()),
    })
}

/// Parses `spec.wireguard`. The schema bounds every field; these checks only catch objects
/// admitted under an older CRD.
fn wireguard(gw: &Gateway) -> Result<Wireguard, ValidateError> {
    let wg = &gw.spec.wireguard;
    let prefix = wg
        .subnet
        .split_once('/')
        .and_then(|(_, p)| p.parse::<u8>().ok())
        .filter(|p| *p <= 32)
        .ok_or(ValidateError::Wireguard("subnet"))?;
    Ok(Wireguard {
        listen_port: u16::try_from(wg.listen_port)
            .map_err(|_| ValidateError::Wireguard("listenPort"))?,
        mtu: u16::try_from(wg.mtu).map_err(|_| ValidateError::Wireguard("mtu"))?,
        gateway_address: wg
            .gateway_address
            .parse()
            .map_err(|_| ValidateError::Wireguard("gatewayAddress"))?,
        link_address: wg
            .link_address
            .parse()
            .map_err(|_| ValidateError::Wireguard("linkAddress"))?,
        subnet: wg.subnet.clone(),
        prefix,
        keepalive: u16::try_from(wg.keepalive)
            .map_err(|_| ValidateError::Wireguard("keepalive"))?,
        resync_seconds: wg.reconcile_interval_seconds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing::{gateway_with as gateway, settings};

    #[test]
    fn the_defaults_parse_and_the_forward_waits_for_its_service() {
        let v = validate(
            &gateway(serde_json::json!({})),
            &settings(&[]),
            &Inputs::default(),
        )
        .expect("valid");
        assert_eq!(v.wireguard.listen_port, 51820);
        assert_eq!(v.wireguard.prefix, 29);
        assert_eq!(v.wireguard.link_address, Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(v.classified.len(), 1);
        assert_eq!(
            v.classified[0].result.as_ref().err().map(|i| i.reason),
            Some(crate::api::conditions::reasons::SERVICE_NOT_FOUND)
        );
        assert_eq!(v.recorded, Recorded::default());
    }

    #[test]
    fn a_project_outside_the_allowed_list_is_refused_by_name() {
        let e = validate(
            &gateway(serde_json::json!({})),
            &settings(&["a", "b"]),
            &Inputs::default(),
        )
        .expect_err("refused");
        assert!(matches!(
            e,
            ValidateError::Policy(crate::policy::Refusal::Project { .. })
        ));
        assert_eq!(
            e.to_string(),
            "project \"p\" is not in this operator's allowed projects (a, b); nothing was created"
        );
        assert!(
            validate(
                &gateway(serde_json::json!({})),
                &settings(&["p"]),
                &Inputs::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn fields_an_older_crd_let_through_are_named() {
        for (spec, field) in [
            (serde_json::json!({"listenPort": 70000}), "listenPort"),
            (
                serde_json::json!({"linkAddress": "10.99.0.300"}),
                "linkAddress",
            ),
            (serde_json::json!({"subnet": "10.99.0.0"}), "subnet"),
        ] {
            let e = validate(&gateway(spec), &settings(&[]), &Inputs::default()).expect_err(field);
            assert_eq!(
                e.to_string(),
                format!("spec.wireguard.{field} is not valid")
            );
        }
    }
}
