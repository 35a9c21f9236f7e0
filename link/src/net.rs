//! Small address types shared by the config, the rule plan and the routes. No I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix such as `10.99.0.2/29` (host bits kept: it doubles as an interface
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    /// The address as written.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Net {
    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why text is not an IPv4 prefix. Carries the part at fault: prefixes are addresses
/// from a spec or a wg-quick `Address`/`AllowedIPs` line, never key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    /// The address part.
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    /// The length part.
    #[error("{0:?} is not a prefix length (0-32)")]
    Prefix(String),
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, NetParseError> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, p),
            None => (s, "32"),
        };
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| NetParseError::Address(a.to_owned()))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| NetParseError::Prefix(p.to_owned()))?;
        Ok(Self { addr, prefix })
    }
}

/// Transport protocol of a forward.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            // IANA protocol numbers (IPPROTO_TCP, IPPROTO_UDP), fixed by RFC 790.
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// Lower-case name as nft(8) writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n: Ipv4Net = "10.99.0.2/29".parse().expect("valid");
        assert_eq!(n.network(), Ipv4Addr::new(10, 99, 0, 0));
        assert!(n.contains(Ipv4Addr::new(10, 99, 0, 7)));
        assert!(!n.contains(Ipv4Addr::new(10, 99, 0, 8)));
        let all: Ipv4Net = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!("192.0.2.1".parse::<Ipv4Net>().map(|n| n.prefix), Ok(32));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("fe80::1/64".parse::<Ipv4Net>().is_err());
    }
}
