//! The in-cluster data plane (`wgnet-link`): userspace WireGuard (boringtun), nftables
//! (nftnl/mnl) and addresses/routes (rtnetlink), in ingress and egress modes.
//!
//! Pure parts (`config`, `wgquick`, `plan`, `keys`, `net`, `status`) are unit-tested; the
//! kernel-facing parts (`tun`, `wg`, `nft`, `netlink`, `engine`) are tested end to end in
//! network namespaces by the `wgnet-tests` crate.

pub mod config;
pub mod engine;
pub mod http;
pub mod keys;
pub mod lease;
pub mod net;
pub mod netlink;
pub mod nft;
pub mod plan;
pub mod run;
pub mod source;
pub mod status;
pub mod tun;
pub mod wg;
pub mod wgquick;
