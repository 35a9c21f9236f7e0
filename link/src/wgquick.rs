//! Parser for the wg-quick(8) configuration an EgressGateway's Secret holds. Errors name
//! the line, the setting and a fixed reason, and never carry text from the file: a typo
//! next to a private key (`PrivateKey: …`, a bare key line) must not leak it into a
//! condition, an Event or a log, and a tenant must not be able to read another Secret back
//! by pointing an EgressGateway at it. No I/O.

use std::net::Ipv4Addr;

use crate::keys::{PublicKey, SecretKey};
use crate::net::Ipv4Net;

/// Refuse anything larger: a real config is a few hundred bytes.
const MAX_LEN: usize = 64 * 1024;

/// A parsed wg-quick configuration with exactly one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgQuick {
    /// `[Interface] PrivateKey`.
    pub private_key: SecretKey,
    /// `[Interface] Address`, IPv4 entries.
    pub addresses: Vec<Ipv4Net>,
    /// `[Interface] DNS`, the IPv4 servers (search domains are dropped).
    pub dns: Vec<Ipv4Addr>,
    /// `[Interface] MTU`.
    pub mtu: Option<u16>,
    /// `[Interface] ListenPort`.
    pub listen_port: Option<u16>,
    /// The single `[Peer]`.
    pub peer: WgPeer,
    /// Settings that were understood but are not applied by the link, for a log line.
    pub ignored: Vec<String>,
}

/// The `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// `PublicKey`.
    pub public_key: PublicKey,
    /// `PresharedKey`.
    pub preshared_key: Option<SecretKey>,
    /// `Endpoint` as host and port; the host may be a name, re-resolved periodically.
    pub endpoint: Option<(String, u16)>,
    /// `AllowedIPs`, IPv4 entries.
    pub allowed_ips: Vec<Ipv4Net>,
    /// `PersistentKeepalive` in seconds.
    pub keepalive: Option<u16>,
}

/// A refusal, naming the line (1-based; 0 for the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if *line > 0 { format!("line {line}: ") } else { String::new() })]
pub struct ParseError {
    /// 1-based line number, 0 when the problem is the whole file.
    pub line: usize,
    /// What is wrong, without the offending value when it may be secret.
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Interface,
    Peer,
}

/// Parses a wg-quick file.
pub fn parse(input: &[u8]) -> Result<WgQuick, ParseError> {
    if input.len() > MAX_LEN {
        return Err(err(
            0,
            format!(
                "the config is {} bytes; more than {MAX_LEN} is not a wg-quick file",
                input.len()
            ),
        ));
    }
    let text = std::str::from_utf8(input).map_err(|_| err(0, "the config is not UTF-8 text"))?;

    let mut section = Section::None;
    let mut peers = 0;
    let mut private_key = None;
    let mut addresses = Vec::new();
    let mut dns = Vec::new();
    let mut mtu = None;
    let mut listen_port = None;
    let mut public_key = None;
    let mut preshared_key = None;
    let mut endpoint = None;
    let mut allowed_ips = Vec::new();
    let mut keepalive = None;
    let mut ignored = Vec::new();

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => Section::Interface,
                "[peer]" => {
                    peers += 1;
                    if peers > 1 {
                        return Err(err(
                            n,
                            "a second [Peer]: an EgressGateway holds one VPN identity with one peer",
                        ));
                    }
                    Section::Peer
                }
                _ => return Err(err(n, "unknown section; expected [Interface] or [Peer]")),
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(n, "expected `Key = Value`"));
        };
        let key = key.trim();
        let value = value.trim();
        let lower = key.to_ascii_lowercase();
        match (section, lower.as_str()) {
            (Section::None, _) => {
                return Err(err(
                    n,
                    format!(
                        "{} appears before any [Interface] or [Peer] section",
                        setting_name(key)
                    ),
                ));
            }
            (Section::Interface, "privatekey") => {
                private_key =
                    Some(SecretKey::parse(value).map_err(|e| err(n, format!("PrivateKey {e}")))?);
            }
            (Section::Interface, "address") => {
                for part in list(value) {
                    if part.contains(':') {
                        ignored.push(format!("IPv6 address on line {n}"));
                        continue;
                    }
                    addresses.push(part.parse().map_err(|_| err(n, NOT_A_NETWORK("Address")))?);
                }
            }
            (Section::Interface, "dns") => {
                for part in list(value) {
                    match part.parse::<Ipv4Addr>() {
                        Ok(ip) => dns.push(ip),
                        Err(_) if part.contains(':') => {
                            ignored.push(format!("IPv6 DNS server on line {n}"))
                        }
                        // wg-quick treats non-addresses as search domains.
                        Err(_) => ignored.push(format!("DNS search domain on line {n}")),
                    }
                }
            }
            (Section::Interface, "mtu") => {
                mtu = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|m| (576..=9000).contains(m))
                        .ok_or_else(|| err(n, "MTU is not a number from 576 to 9000"))?,
                );
            }
            (Section::Interface, "listenport") => {
                listen_port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| err(n, "ListenPort is not a port number"))?,
                );
            }
            (
                Section::Interface,
                "table" | "fwmark" | "saveconfig" | "preup" | "postup" | "predown" | "postdown",
            ) => {
                ignored.push(format!(
                    "{key} on line {n} (the link runs no commands and manages its own routes)"
                ));
            }
            (Section::Peer, "publickey") => {
                public_key =
                    Some(PublicKey::parse(value).map_err(|e| err(n, format!("PublicKey {e}")))?);
            }
            (Section::Peer, "presharedkey") => {
                preshared_key =
                    Some(SecretKey::parse(value).map_err(|e| err(n, format!("PresharedKey {e}")))?);
            }
            (Section::Peer, "endpoint") => {
                endpoint =
                    Some(parse_endpoint(value).map_err(|m| err(n, format!("Endpoint: {m}")))?);
            }
            (Section::Peer, "allowedips") => {
                for part in list(value) {
                    if part.contains(':') {
                        ignored.push(format!("IPv6 AllowedIPs on line {n}"));
                        continue;
                    }
                    allowed_ips.push(
                        part.parse()
                            .map_err(|_| err(n, NOT_A_NETWORK("AllowedIPs")))?,
                    );
                }
            }
            (Section::Peer, "persistentkeepalive") => {
                keepalive = if value.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(value.parse::<u16>().map_err(|_| {
                        err(
                            n,
                            "PersistentKeepalive is not a number of seconds or \"off\"",
                        )
                    })?)
                    .filter(|k| *k > 0)
                };
            }
            (_, _) => {
                let where_ = if section == Section::Interface {
                    "[Interface]"
                } else {
                    "[Peer]"
                };
                return Err(err(
                    n,
                    format!("unknown key {} in {where_}", setting_name(key)),
                ));
            }
        }
    }

    let private_key = private_key.ok_or_else(|| err(0, "[Interface] has no PrivateKey"))?;
    if peers == 0 {
        return Err(err(0, "no [Peer] section"));
    }
    let public_key = public_key.ok_or_else(|| err(0, "[Peer] has no PublicKey"))?;
    if addresses.is_empty() {
        return Err(err(0, "[Interface] has no IPv4 Address"));
    }
    if allowed_ips.is_empty() {
        return Err(err(0, "[Peer] has no IPv4 AllowedIPs"));
    }
    if endpoint.is_none() {
        return Err(err(0, "[Peer] has no Endpoint; the link always dials out"));
    }
    Ok(WgQuick {
        private_key,
        addresses,
        dns,
        mtu,
        listen_port,
        peer: WgPeer {
            public_key,
            preshared_key,
            endpoint,
            allowed_ips,
            keepalive,
        },
        ignored,
    })
}

/// The message for an Address or AllowedIPs entry that is not an IPv4 network.
#[allow(non_snake_case)] // reads as the constant message it is
fn NOT_A_NETWORK(setting: &str) -> String {
    format!("{setting}: an entry is not an IPv4 address with an optional /prefix length (0-32)")
}

/// A setting's name as typed, quoted, when it can only be a name (letters, as every
/// wg-quick key is); anything else (`PrivateKey: <key>`, a bare key) is "a setting", so
/// no value ever reaches a message.
fn setting_name(key: &str) -> String {
    if !key.is_empty() && key.len() <= 24 && key.bytes().all(|b| b.is_ascii_alphabetic()) {
        format!("{key:?}")
    } else {
        "a setting".to_owned()
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Why an endpoint was refused: a fixed reason without the value (the value may sit next
/// to a key in a file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `[` without `]:port`.
    #[error("it is not [address]:port")]
    Bracket,
    /// No `:port`.
    #[error("it has no :port")]
    NoPort,
    /// The port is not 1-65535.
    #[error("the port is not a port number from 1 to 65535")]
    Port,
    /// The host has characters no name or address has.
    #[error("the host is not a host name or address")]
    Host,
}

/// `host:port` or `[v6]:port`.
pub fn parse_endpoint(value: &str) -> Result<(String, u16), EndpointError> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        rest.split_once("]:").ok_or(EndpointError::Bracket)?
    } else {
        value.rsplit_once(':').ok_or(EndpointError::NoPort)?
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(EndpointError::Port)?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
    if !valid_host {
        return Err(EndpointError::Host);
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn conf(extra_iface: &str, extra_peer: &str) -> String {
        format!(
            "# corp VPN\n[Interface]\nPrivateKey = {PRIV}\nAddress = 10.8.0.2/32, fd00::2/128\nDNS = 10.8.0.1, corp.internal\nMTU = 1380\n{extra_iface}\n[Peer]\nPublicKey = {PUB}\nPresharedKey = {PRIV}\nEndpoint = vpn.example.net:51820\nAllowedIPs = 10.0.0.0/24, 10.8.0.0/24\nPersistentKeepalive = 25\n{extra_peer}"
        )
    }

    #[test]
    fn parses_a_typical_config() {
        let c = parse(conf("", "").as_bytes()).expect("valid");
        assert_eq!(c.addresses, vec!["10.8.0.2/32".parse().expect("net")]);
        assert_eq!(c.dns, vec![Ipv4Addr::new(10, 8, 0, 1)]);
        assert_eq!(c.mtu, Some(1380));
        assert_eq!(c.peer.endpoint, Some(("vpn.example.net".into(), 51820)));
        assert_eq!(c.peer.allowed_ips.len(), 2);
        assert_eq!(c.peer.keepalive, Some(25));
        assert!(c.peer.preshared_key.is_some());
        assert_eq!(c.private_key.public().to_base64(), PUB);
        assert_eq!(c.ignored.len(), 2, "{:?}", c.ignored);
    }

    #[test]
    fn keys_are_case_insensitive_and_commands_are_not_run() {
        let c = parse(conf("postup = iptables -A FORWARD", "persistentkeepalive = off").as_bytes())
            .expect("valid");
        assert_eq!(c.peer.keepalive, None);
        assert!(c.ignored.iter().any(|i| i.contains("postup")));
    }

    #[test]
    fn errors_name_the_line_but_never_the_key() {
        let bad = conf("", "").replace(
            &format!("PrivateKey = {PRIV}"),
            "PrivateKey = c2VjcmV0LXNlY3JldA==",
        );
        let e = parse(bad.as_bytes()).expect_err("short key");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: PrivateKey decodes to 13 bytes, a WireGuard key has 32"
        );
        let bad = conf("", "").replace(
            &format!("PresharedKey = {PRIV}"),
            &format!("PresharedKey = {}!", &PRIV[..20]),
        );
        let e = parse(bad.as_bytes()).expect_err("not base64");
        assert!(!e.to_string().contains(&PRIV[..20]), "{e}");
    }

    /// No text from the file reaches an error, wherever a key is mistyped or misplaced: a
    /// colon for `=` (base64 padding then looks like the separator), a bare key line before
    /// or inside a section, a key pasted into any other setting. Checked for every 6
    /// characters of the key, so no fragment leaks either.
    #[test]
    fn no_text_from_the_file_reaches_an_error() {
        let good = conf("", "");
        let iface_key = format!("PrivateKey = {PRIV}");
        let cases: Vec<String> = vec![
            good.replace(&iface_key, &format!("PrivateKey: {PRIV}")),
            good.replace(&iface_key, &format!("PrivateKey {PRIV}")),
            good.replace(&iface_key, PRIV),
            format!("{PRIV}\n{good}"),
            format!("PrivateKey: {PRIV}\n{good}"),
            good.replace("MTU = 1380", &format!("MTU = {PRIV}")),
            good.replace("MTU = 1380", &format!("ListenPort = {PRIV}")),
            good.replace("Address = 10.8.0.2/32", &format!("Address = {PRIV}")),
            good.replace("AllowedIPs = 10.0.0.0/24", &format!("AllowedIPs = {PRIV}")),
            good.replace(
                "Endpoint = vpn.example.net:51820",
                &format!("Endpoint = {PRIV}"),
            ),
            good.replace(
                "Endpoint = vpn.example.net:51820",
                &format!("Endpoint = x:{PRIV}"),
            ),
            good.replace(
                "PersistentKeepalive = 25",
                &format!("PersistentKeepalive = {PRIV}"),
            ),
            good.replace("[Peer]", &format!("[{PRIV}]")),
        ];
        let fragments: Vec<&str> = (0..PRIV.len() - 6).map(|i| &PRIV[i..i + 6]).collect();
        for input in cases {
            let e = parse(input.as_bytes()).expect_err("refused").to_string();
            for f in &fragments {
                assert!(!e.contains(f), "a fragment of the key ({f}) leaked: {e}");
            }
            assert!(e.starts_with("line "), "names the line: {e}");
        }
    }

    #[test]
    fn refuses_malformed_and_hostile_input() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PrivateKey = x\n".to_vec(), "before any"),
            (
                conf("Bogus = 1", "").into_bytes(),
                "unknown key \"Bogus\" in [Interface]",
            ),
            (
                conf("", "[Peer]\nPublicKey = x").into_bytes(),
                "a second [Peer]",
            ),
            (
                conf("", "")
                    .replace("MTU = 1380", "MTU = 99999")
                    .into_bytes(),
                "MTU",
            ),
            (
                conf("", "")
                    .replace(
                        "Endpoint = vpn.example.net:51820",
                        "Endpoint = vpn.example.net",
                    )
                    .into_bytes(),
                "has no :port",
            ),
            (
                conf("", "")
                    .replace("vpn.example.net:51820", "$(reboot):51820")
                    .into_bytes(),
                "not a host name",
            ),
            (
                conf("", "")
                    .replace("10.0.0.0/24", "10.0.0.0/40")
                    .into_bytes(),
                "prefix length",
            ),
            (
                b"[Interface]\nAddress = 10.0.0.1/24\n[Peer]\n".to_vec(),
                "no PrivateKey",
            ),
            (vec![0xff, 0xfe, 0x00], "not UTF-8"),
            (vec![b'#'; MAX_LEN + 1], "not a wg-quick file"),
            (b"[Interfaces]\n".to_vec(), "unknown section"),
            (
                b"[Interface]\njust words\n".to_vec(),
                "expected `Key = Value`",
            ),
            (
                conf("", "")
                    .replace("AllowedIPs = 10.0.0.0/24, 10.8.0.0/24", "AllowedIPs = ::/0")
                    .into_bytes(),
                "no IPv4 AllowedIPs",
            ),
        ];
        for (input, want) in cases {
            let e = parse(&input).expect_err(want);
            assert!(e.to_string().contains(want), "{e} should contain {want}");
            assert!(!e.to_string().contains(PRIV), "leaked the key: {e}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("192.0.2.1:51820"),
            Ok(("192.0.2.1".into(), 51820))
        );
        assert_eq!(
            parse_endpoint("[2001:db8::1]:51820"),
            Ok(("2001:db8::1".into(), 51820))
        );
        assert!(parse_endpoint("host:0").is_err());
        assert!(parse_endpoint(":51820").is_err());
    }
}
