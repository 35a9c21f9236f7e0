//! A minimal DNS client: A-record queries over UDP to given servers, for egress targets
//! only the VPN's DNS knows (wg-quick's `DNS =`). The servers are reached through the
//! tunnel: the data plan routes each of them into wg0. Building and reading messages is
//! pure; [`lookup`] does the I/O (one UDP socket, bounded tries).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::plan::ResolveError;

/// Why a DNS answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name cannot be put in a query (empty label, label over 63 bytes, name over 253).
    #[error("the name is not a valid DNS name")]
    BadName,
    /// The answer is cut short or malformed.
    #[error("the answer is malformed")]
    Malformed,
    /// The answer is not for our query.
    #[error("the answer does not match the query")]
    Mismatch,
    /// The server answered with an error code (3: the name does not exist).
    #[error("the server answered with error code {0}")]
    Rcode(u8),
    /// No A record in the answer.
    #[error("no IPv4 address in the answer")]
    NoAddress,
}

/// A recursive query for `name`'s A record, with message id `id`.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(DnsError::BadName);
    }
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired. One question, no other records.
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=63).contains(l))
            .ok_or(DnsError::BadName)?;
        m.push(len);
        m.extend_from_slice(label.as_bytes());
    }
    // Root, QTYPE A, QCLASS IN.
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(m)
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, DnsError> {
    // A name has at most 127 labels; the bound also stops pointer loops.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(DnsError::Malformed)?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xC0 == 0xC0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
    Err(DnsError::Malformed)
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    let b = msg.get(at..at + 2).ok_or(DnsError::Malformed)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// The A records of the answer to query `id`.
pub fn answers(id: u16, msg: &[u8]) -> Result<Vec<Ipv4Addr>, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Malformed);
    }
    if u16_at(msg, 0)? != id || msg[2] & 0x80 == 0 {
        return Err(DnsError::Mismatch);
    }
    let rcode = msg[3] & 0x0F;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let questions = u16_at(msg, 4)?;
    let records = u16_at(msg, 6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..records {
        at = skip_name(msg, at)?;
        let (kind, class) = (u16_at(msg, at)?, u16_at(msg, at + 2)?);
        let len = usize::from(u16_at(msg, at + 8)?);
        let data = msg.get(at + 10..at + 10 + len).ok_or(DnsError::Malformed)?;
        if kind == 1 && class == 1 && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    if out.is_empty() {
        return Err(DnsError::NoAddress);
    }
    Ok(out)
}

/// Resolves `host` with `servers`, each tried in turn (two tries each, `timeout` per try).
pub async fn lookup(
    servers: &[Ipv4Addr],
    host: &str,
    timeout: Duration,
) -> Result<Ipv4Addr, ResolveError> {
    let fail = |reason: String| ResolveError::Lookup {
        host: host.to_owned(),
        reason,
    };
    let sock = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .await
        .map_err(|e| fail(format!("no UDP socket: {e}")))?;
    let mut last = String::from("no DNS server");
    let mut buf = [0u8; 1500];
    for (n, server) in servers.iter().flat_map(|s| [s, s]).enumerate() {
        let id = u16::try_from(n).unwrap_or_default() ^ 0x5a17;
        let q = query(id, host).map_err(|e| fail(e.to_string()))?;
        if let Err(e) = sock.send_to(&q, (*server, 53)).await {
            last = format!("{server}: {e}");
            continue;
        }
        match tokio::time::timeout(timeout, sock.recv_from(&mut buf)).await {
            Err(_) => last = format!("{server}: no answer within {timeout:?}"),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Ok(Ok((len, _))) => match answers(id, &buf[..len]) {
                Ok(a) => return Ok(a[0]),
                // The name does not exist there: asking again will not change that.
                Err(DnsError::Rcode(3)) => return Err(fail(format!("{server}: no such name"))),
                Err(e) => last = format!("{server}: {e}"),
            },
        }
    }
    Err(fail(format!("through the VPN's DNS: {last}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with a CNAME and then an A record, the name compressed.
    fn answer(q: &[u8]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] |= 0x80; // a response
        m[7] = 2; // two answers
        // CNAME db.corp.test -> x (pointer to the question name at 12).
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 3, 1, b'x', 0]);
        m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 5]);
        m
    }

    #[test]
    fn a_query_and_its_answer_round_trip() {
        let q = query(7, "db.corp.test.").expect("query");
        assert_eq!(&q[12..], b"\x02db\x04corp\x04test\x00\x00\x01\x00\x01");
        assert_eq!(
            answers(7, &answer(&q)),
            Ok(vec![Ipv4Addr::new(10, 0, 0, 5)])
        );
        assert_eq!(answers(8, &answer(&q)), Err(DnsError::Mismatch));
        let mut nx = answer(&q);
        nx[3] |= 3;
        assert_eq!(answers(7, &nx), Err(DnsError::Rcode(3)));
    }

    #[test]
    fn hostile_answers_are_refused_not_panicked_on() {
        let q = query(1, "a.b").expect("query");
        for cut in 0..answer(&q).len() {
            let _ = answers(1, &answer(&q)[..cut]);
        }
        // A name pointing at itself.
        let mut looped = q.clone();
        looped[2] |= 0x80;
        looped[7] = 1;
        looped.extend_from_slice(&[0xC0, 12]);
        assert!(answers(1, &looped).is_err());
        assert_eq!(query(1, "").err(), Some(DnsError::BadName));
        assert_eq!(query(1, &"a".repeat(64)).err(), Some(DnsError::BadName));
    }
}
