//! The in-cluster data plane (`wgnet-link`): userspace WireGuard (boringtun), nftables
//! (nftnl/mnl) and addresses/routes (rtnetlink), in ingress and egress modes.
//!
//! The crate is a workspace member from the start so its lint policy (unsafe denied, not
//! forbidden, for TUN and netlink calls) is in place; its contents arrive with the link issue.
