//! Addresses, MTU, link state and routes of wg0 through rtnetlink (no `ip` binary in the
//! image). I/O boundary: one `NETLINK_ROUTE` connection driven on the tokio runtime.

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::net::Ipv4Net;

/// A failed netlink request, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

fn ctx(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// A route-netlink connection.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection; its driver runs on the current tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .map_err(ctx(format!("looking up {name}")))?;
        link.map(|l| l.header.index).ok_or_else(|| NetlinkError {
            what: format!("looking up {name}"),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    /// Gives `name` exactly the address `addr`, the MTU, and brings it up.
    pub async fn configure(&self, name: &str, addr: Ipv4Net, mtu: u16) -> Result<(), NetlinkError> {
        let index = self.index(name).await?;
        let mut existing = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        let mut have = false;
        while let Some(msg) = existing
            .try_next()
            .await
            .map_err(ctx(format!("listing addresses of {name}")))?
        {
            let mine = msg.attributes.iter().any(|a| {
                matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == addr.addr)
            }) && msg.header.prefix_len == addr.prefix;
            if mine {
                have = true;
            } else {
                stale.push(msg);
            }
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(ctx(format!("removing an old address of {name}")))?;
        }
        if !have
            && let Err(e) = self
                .handle
                .address()
                .add(index, IpAddr::V4(addr.addr), addr.prefix)
                .execute()
                .await
            && !exists(&e)
        {
            return Err(ctx(format!("adding {addr} to {name}"))(e));
        }
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(u32::from(mtu))
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(ctx(format!("setting MTU {mtu} and bringing {name} up")))
    }

    /// Routes `dst` through `name`.
    pub async fn add_route(&self, name: &str, dst: Ipv4Net) -> Result<(), NetlinkError> {
        let index = self.index(name).await?;
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix)
            .output_interface(index)
            .build();
        match self.handle.route().add(msg).execute().await {
            Err(e) if exists(&e) => Ok(()),
            r => r.map_err(ctx(format!("routing {dst} through {name}"))),
        }
    }

    /// Routes packets carrying `mark` into `name`: a rule (priority `priority`) sending
    /// them to `table`, whose one route is the default through `name`. The route goes
    /// with the device; the rule stays and is harmless while the table is empty.
    pub async fn route_marked(
        &self,
        name: &str,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        let index = self.index(name).await?;
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(index)
            .table_id(table)
            .build();
        match self.handle.route().add(msg).execute().await {
            Err(e) if exists(&e) => {}
            r => r.map_err(ctx(format!("routing table {table} into {name}")))?,
        }
        let rule = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(mark)
            .table_id(table)
            .priority(priority)
            .action(rtnetlink::packet_route::rule::RuleAction::ToTable);
        match rule.execute().await {
            Err(e) if exists(&e) => Ok(()),
            r => r.map_err(ctx(format!(
                "adding the rule fwmark {mark:#x} lookup {table}"
            ))),
        }
    }

    /// Removes the route to `dst` through `name`, if present.
    pub async fn del_route(&self, name: &str, dst: Ipv4Net) -> Result<(), NetlinkError> {
        let index = self.index(name).await?;
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix)
            .output_interface(index)
            .build();
        match self.handle.route().del(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ESRCH => Ok(()),
            r => r.map_err(ctx(format!("removing the route to {dst}"))),
        }
    }
}
