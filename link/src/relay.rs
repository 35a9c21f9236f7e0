//! The PROXY protocol v2 relay: ingress forwards with `proxyProtocol: v2` are not DNATed by
//! the kernel; the link accepts their TCP connections itself on its tunnel address, opens
//! a connection to the Service, writes a PROXY v2 header carrying the client's address
//! and port (which reach the link because the VM no longer masquerades), and then copies
//! bytes both ways until either side closes.
//!
//! [`header_v2`] and [`specs`] are pure; [`Relays`] owns the listeners (I/O: TCP sockets in
//! the pod's network namespace, one task per listener and per connection).

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::{LinkConfig, ProxyProtocol};

/// The v2 signature every header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Connections one forward relays at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
/// How long connecting to the Service may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PROXY protocol v2 header of a TCP over IPv4 connection from `client` to `dest`
/// (version 2, command PROXY, family INET, STREAM; 12 address bytes).
pub fn header_v2(client: SocketAddrV4, dest: SocketAddrV4) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[..12].copy_from_slice(&SIGNATURE);
    h[12] = 0x21;
    h[13] = 0x11;
    h[14..16].copy_from_slice(&12u16.to_be_bytes());
    h[16..20].copy_from_slice(&client.ip().octets());
    h[20..24].copy_from_slice(&dest.ip().octets());
    h[24..26].copy_from_slice(&client.port().to_be_bytes());
    h[26..28].copy_from_slice(&dest.port().to_be_bytes());
    h
}

/// One relayed forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelaySpec {
    /// Where the link listens: its tunnel address and the public port.
    pub listen: SocketAddrV4,
    /// The Service: ClusterIP and port.
    pub target: SocketAddrV4,
}

/// The relayed forwards of `cfg` (ingress forwards with `proxyProtocol: v2`).
pub fn specs(cfg: &LinkConfig) -> Vec<RelaySpec> {
    let LinkConfig::Ingress(i) = cfg else {
        return Vec::new();
    };
    i.forwards
        .iter()
        .filter(|f| f.proxy_protocol == Some(ProxyProtocol::V2))
        .map(|f| RelaySpec {
            listen: SocketAddrV4::new(i.address.addr, f.port),
            target: SocketAddrV4::new(f.cluster_ip, f.target_port),
        })
        .collect()
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("PROXY protocol relay on {listen}: {source}")]
pub struct RelayError {
    /// Its address.
    pub listen: SocketAddrV4,
    /// The socket's error.
    #[source]
    pub source: std::io::Error,
}

/// The running listeners, by forward.
#[derive(Default)]
pub struct Relays {
    running: BTreeMap<RelaySpec, JoinHandle<()>>,
}

impl Relays {
    /// Runs exactly `want`: stale listeners stop (their open connections with them), new
    /// ones start. A listener that cannot open is reported; the others still run.
    pub fn set(&mut self, want: &[RelaySpec]) -> Result<(), RelayError> {
        self.running.retain(|spec, task| {
            let keep = want.contains(spec) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let mut first_error = None;
        for spec in want {
            if self.running.contains_key(spec) {
                continue;
            }
            match listen(spec.listen) {
                Ok(l) => {
                    self.running.insert(*spec, tokio::spawn(serve(l, *spec)));
                }
                Err(source) => {
                    first_error.get_or_insert(RelayError {
                        listen: spec.listen,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every listener (fencing).
    pub fn clear(&mut self) {
        for (_, t) in std::mem::take(&mut self.running) {
            t.abort();
        }
    }

    /// How many listeners run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A listener on `addr`, which may not exist yet: wg0 gets its address after the relay
/// starts, and is removed and recreated on fencing (IP_FREEBIND).
fn listen(addr: SocketAddrV4) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_freebind_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

async fn serve(listener: TcpListener, spec: RelaySpec) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(listen = %spec.listen, error = %e, "accept failed");
                // accept fails when the process is out of descriptors or memory; the
                // listener stays readable, so without a pause this loop would spin on the
                // same error. A short fixed pause lets connections close meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let SocketAddr::V4(from) = from else {
                return;
            };
            if let Err(e) = relay(client, from, spec).await {
                tracing::debug!(client = %from, target = %spec.target, error = %e, "relayed connection ended");
            }
            drop(permit);
        });
    }
}

async fn relay(mut client: TcpStream, from: SocketAddrV4, spec: RelaySpec) -> std::io::Result<()> {
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(spec.target))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to the Service")
        })??;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // The destination is the address the client dialled as far as the link can see it:
    // the tunnel address and the public port (the VM DNATs its public address to it).
    let dest = SocketAddrV4::new(*spec.listen.ip(), spec.listen.port());
    upstream.write_all(&header_v2(from, dest)).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[test]
    fn the_header_is_the_specs_binary_form() {
        let h = header_v2(
            "198.51.100.7:40000".parse().expect("addr"),
            "10.99.0.2:443".parse().expect("addr"),
        );
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(h[12], 0x21, "version 2, PROXY");
        assert_eq!(h[13], 0x11, "TCP over IPv4");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[198, 51, 100, 7]);
        assert_eq!(&h[20..24], &[10, 99, 0, 2]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 443);
    }

    /// On loopback: a client's bytes reach the upstream after the header naming the
    /// client, and the upstream's answer reaches the client.
    #[tokio::test]
    async fn a_connection_is_relayed_behind_a_header_naming_the_client() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("upstream");
        let SocketAddr::V4(target) = upstream.local_addr().expect("addr") else {
            panic!("v4");
        };
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("port");
        let SocketAddr::V4(listen) = probe.local_addr().expect("addr") else {
            panic!("v4");
        };
        drop(probe);
        let mut relays = Relays::default();
        relays
            .set(&[RelaySpec { listen, target }])
            .expect("listener");
        let mut client = TcpStream::connect(listen).await.expect("connect");
        let SocketAddr::V4(me) = client.local_addr().expect("addr") else {
            panic!("v4");
        };
        client.write_all(b"ping").await.expect("write");
        let (mut conn, _) = upstream.accept().await.expect("accept");
        let mut got = [0u8; 32];
        conn.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..28], &header_v2(me, listen));
        assert_eq!(&got[28..], b"ping");
        conn.write_all(b"pong").await.expect("answer");
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.expect("answer read");
        assert_eq!(&back, b"pong");
        relays.set(&[]).expect("stop");
        assert!(relays.is_empty());
    }
}
