//! Applies a [`Plan`] to the kernel through libnftnl/libmnl: the table is added, deleted
//! and rebuilt in one netlink batch, so the kernel switches rulesets atomically and
//! conntrack keeps every established flow. I/O boundary: one `NETLINK_NETFILTER` socket
//! per apply.

use std::ffi::CString;
use std::ptr;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, ConntrackStatus, Expression, Immediate, InterfaceName, Masquerade, Meta,
    Nat, NatType, Payload, Register, States,
};
use nftnl::{
    Batch, Chain as NftChain, ChainType, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table,
};
use nftnl_sys as sys;

use crate::plan::{Hook, Plan, Stmt};

/// A failed apply, with the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The socket could not be opened or the batch not sent.
    #[error("nftables netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel refused the batch.
    #[error("the kernel refused the nftables batch: {0}")]
    Refused(std::io::Error),
    /// An interface name with a NUL byte.
    #[error("interface name {0:?} is not valid")]
    BadName(String),
}

/// `tcp option maxseg size`: nftnl has no wrapper for the TCP-option form of `exthdr`.
struct TcpMss {
    /// Load into reg1 when `false`, write reg1 into the option when `true`.
    write: bool,
}

const TCPOPT_MAXSEG: u8 = 2;
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;

impl Expression for TcpMss {
    #[allow(unsafe_code)]
    fn to_expr(&self, _rule: &Rule<'_>) -> ptr::NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns an owned expression or NULL (checked); the
        // setters copy plain integers into it; the caller (Rule::add_expr) takes ownership.
        unsafe {
            let expr = sys::nftnl_expr_alloc(c"exthdr".as_ptr());
            let expr = ptr::NonNull::new(expr)
                .expect("libnftnl could not allocate an expression (out of memory)");
            let e = expr.as_ptr();
            sys::nftnl_expr_set_u8(e, sys::NFTNL_EXPR_EXTHDR_TYPE as u16, TCPOPT_MAXSEG);
            // The MSS value sits after the kind and length bytes.
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_EXTHDR_OFFSET as u16, 2);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_EXTHDR_LEN as u16, 2);
            sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_EXTHDR_OP as u16, NFT_EXTHDR_OP_TCPOPT);
            let reg = libc::NFT_REG_1 as u32;
            if self.write {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_EXTHDR_SREG as u16, reg);
            } else {
                sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_EXTHDR_DREG as u16, reg);
            }
            expr
        }
    }
}

fn ifname(name: &str) -> Result<InterfaceName, NftError> {
    CString::new(name)
        .map(InterfaceName::Exact)
        .map_err(|_| NftError::BadName(name.to_owned()))
}

fn add_stmt(rule: &mut Rule<'_>, s: &Stmt) -> Result<(), NftError> {
    match s {
        Stmt::Iif(n) | Stmt::IifNot(n) => {
            rule.add_expr(&Meta::IifName);
            let op = if matches!(s, Stmt::Iif(_)) {
                CmpOp::Eq
            } else {
                CmpOp::Neq
            };
            rule.add_expr(&Cmp::new(op, ifname(n)?));
        }
        Stmt::Oif(n) | Stmt::OifNot(n) => {
            rule.add_expr(&Meta::OifName);
            let op = if matches!(s, Stmt::Oif(_)) {
                CmpOp::Eq
            } else {
                CmpOp::Neq
            };
            rule.add_expr(&Cmp::new(op, ifname(n)?));
        }
        Stmt::L4(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, p.number()));
        }
        Stmt::Dport(port) => {
            // TCP and UDP both keep the destination port at offset 2.
            rule.add_expr(&Payload::Transport(nftnl::expr::TransportHeaderField::Tcp(
                nftnl::expr::TcpHeaderField::Dport,
            )));
            rule.add_expr(&Cmp::new(CmpOp::Eq, port.to_be()));
        }
        Stmt::Daddr(a) => {
            rule.add_expr(&Payload::Network(nftnl::expr::NetworkHeaderField::Ipv4(
                nftnl::expr::Ipv4HeaderField::Daddr,
            )));
            rule.add_expr(&Cmp::new(CmpOp::Eq, *a));
        }
        Stmt::Established => {
            rule.add_expr(&nftnl::expr::Conntrack::State);
            let bits = (States::ESTABLISHED | States::RELATED).bits();
            rule.add_expr(&Bitwise::new(bits, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Stmt::New => {
            rule.add_expr(&nftnl::expr::Conntrack::State);
            rule.add_expr(&Bitwise::new(States::NEW.bits(), 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Stmt::Dnatted => {
            rule.add_expr(&nftnl::expr::Conntrack::Status);
            rule.add_expr(&Bitwise::new(ConntrackStatus::DST_NAT.bits(), 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        Stmt::Syn => {
            // The flags byte is at offset 13 of the TCP header; SYN set and RST clear.
            rule.add_expr(&Payload::Transport(
                nftnl::expr::TransportHeaderField::Raw {
                    offset_bits: 13,
                    length_bits: 1,
                },
            ));
            rule.add_expr(&Bitwise::new(0x06u8, 0u8));
            rule.add_expr(&Cmp::new(CmpOp::Eq, 0x02u8));
        }
        Stmt::ClampMss(mss) => {
            rule.add_expr(&TcpMss { write: false });
            // Big-endian bytes compare as numbers in the kernel's memcmp.
            rule.add_expr(&Cmp::new(CmpOp::Gt, mss.to_be()));
            rule.add_expr(&Immediate::new(mss.to_be(), Register::Reg1));
            rule.add_expr(&TcpMss { write: true });
        }
        Stmt::Dnat(a, port) => {
            rule.add_expr(&Immediate::new(a.octets(), Register::Reg1));
            rule.add_expr(&Immediate::new(port.to_be(), Register::Reg2));
            rule.add_expr(&Nat {
                nat_type: NatType::DNat,
                family: ProtoFamily::Ipv4,
                ip_register: Register::Reg1,
                port_register: Some(Register::Reg2),
            });
        }
        Stmt::Masquerade => rule.add_expr(&Masquerade),
        Stmt::CtMarkSet(m) => {
            rule.add_expr(&Immediate::new(*m, Register::Reg1));
            rule.add_expr(&nftnl::expr::Conntrack::Mark { set: true });
        }
        Stmt::CtMark(m) => {
            rule.add_expr(&nftnl::expr::Conntrack::Mark { set: false });
            rule.add_expr(&Cmp::new(CmpOp::Eq, *m));
        }
        Stmt::MarkSet(m) => {
            rule.add_expr(&Immediate::new(*m, Register::Reg1));
            rule.add_expr(&Meta::Mark { set: true });
        }
        Stmt::Accept => rule.add_expr(&nftnl::expr::Verdict::Accept),
        Stmt::Drop => rule.add_expr(&nftnl::expr::Verdict::Drop),
    }
    Ok(())
}

/// [`crate::plan::TABLE`] as libnftnl wants it; a test keeps the two equal.
const TABLE_C: &std::ffi::CStr = c"wgnet_link";

fn table() -> Table {
    Table::new(TABLE_C, ProtoFamily::Ipv4)
}

/// Replaces the link's table with `plan` in one atomic batch.
pub fn apply(plan: &Plan) -> Result<(), NftError> {
    let table = table();
    let mut batch = Batch::new();
    // add + delete + add: deleting a table that may not exist would fail the batch.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let names: Vec<CString> = plan
        .chains
        .iter()
        .map(|c| CString::new(c.name).map_err(|_| NftError::BadName(c.name.to_owned())))
        .collect::<Result<_, _>>()?;
    let mut chains = Vec::new();
    for (c, name) in plan.chains.iter().zip(&names) {
        let mut chain = NftChain::new(name, &table);
        let (hook, prio, kind) = match c.hook {
            Hook::Prerouting => (nftnl::Hook::PreRouting, -100, ChainType::Nat),
            Hook::Postrouting => (nftnl::Hook::PostRouting, 100, ChainType::Nat),
            Hook::Forward => (nftnl::Hook::Forward, 0, ChainType::Filter),
            Hook::Input => (nftnl::Hook::In, 0, ChainType::Filter),
            Hook::Mangle => (nftnl::Hook::PreRouting, -150, ChainType::Filter),
            Hook::Reroute => (nftnl::Hook::Out, -150, ChainType::Route),
        };
        chain.set_hook(hook, prio);
        chain.set_type(kind);
        chain.set_policy(if c.accept_by_default {
            Policy::Accept
        } else {
            Policy::Drop
        });
        batch.add(&chain, MsgType::Add);
        chains.push(chain);
    }
    for (c, chain) in plan.chains.iter().zip(&chains) {
        for stmts in &c.rules {
            let mut rule = Rule::new(chain);
            for s in stmts {
                add_stmt(&mut rule, s)?;
            }
            batch.add(&rule, MsgType::Add);
        }
    }
    send(batch.finalize())
}

/// Removes the link's table if it exists (fencing on shutdown and lost leadership).
pub fn remove() -> Result<(), NftError> {
    let table = table();
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    send(batch.finalize())
}

fn send(batch: FinalizedBatch) -> Result<(), NftError> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
    socket.send_all(&batch).map_err(NftError::Socket)?;
    let portid = socket.portid();
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let mut expected = batch.sequence_numbers();
    // Each message carries NLM_F_ACK, so the kernel answers every sequence number; an
    // error answer surfaces from cb_run.
    let mut seq = expected.next();
    while let Some(want) = seq {
        let messages = socket.recv(&mut buffer[..]).map_err(NftError::Socket)?;
        for message in messages {
            let message = message.map_err(NftError::Socket)?;
            match mnl::cb_run(message, want, portid) {
                Ok(_) => {}
                Err(e) => return Err(NftError::Refused(e)),
            }
            seq = expected.next();
            if seq.is_none() {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_netlink_table_name_is_the_planned_one() {
        assert_eq!(super::TABLE_C.to_str(), Ok(crate::plan::TABLE));
    }
}
