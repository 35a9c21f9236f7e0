//! The in-cluster data plane (`wgnet-link`): userspace WireGuard (boringtun), nftables
//! (nftnl/mnl) and addresses/routes (rtnetlink), in ingress and egress modes.
//!
//! Pure parts (`config`, `wgquick`, `plan` with the whole data-plane plan, `keys`, `net`,
//! `status`, `offload`) are unit-tested, and so is `engine`'s apply over fake backends (its
//! `Tunnel`, `Interfaces` and `Firewall` traits); the kernel-facing parts (`tun`, `udp`,
//! `wg`, `nft`, `netlink`) are tested end to end in network namespaces by the
//! `wgnet-tests` crate.

pub mod config;
#[cfg(feature = "dataplane")]
pub mod dns;
#[cfg(feature = "dataplane")]
pub mod engine;
#[cfg(feature = "dataplane")]
pub mod http;
pub mod keys;
#[cfg(feature = "lease")]
pub mod lease;
pub mod net;
#[cfg(feature = "dataplane")]
pub mod netlink;
#[cfg(feature = "dataplane")]
pub mod nft;
pub mod offload;
pub mod plan;
#[cfg(feature = "dataplane")]
pub mod relay;
#[cfg(feature = "dataplane")]
pub mod run;
#[cfg(feature = "dataplane")]
pub mod source;
#[cfg(feature = "dataplane")]
pub mod status;
#[cfg(feature = "dataplane")]
pub mod tun;
#[cfg(feature = "dataplane")]
pub mod udp;
#[cfg(feature = "dataplane")]
pub mod wg;
pub mod wgquick;
