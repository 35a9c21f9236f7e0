//! Names, labels, ownership markers and request ids of a gateway's GCP resources. Pure.
//!
//! Every per-gateway resource is named `wg-` + 27 characters of base32(sha256(clusterID /
//! namespace / name)): 30 characters, valid for every GCP resource type used (service
//! account ids allow 6 to 30), stable across operator restarts and unique per cluster.

use std::collections::BTreeMap;

use ring::digest;

/// Label holding the operator install name.
pub const LABEL_INSTALL: &str = "wgnet-install";
/// Label holding the cluster id.
pub const LABEL_CLUSTER: &str = "wgnet-cluster";
/// Label holding the Gateway's uid.
pub const LABEL_UID: &str = "wgnet-gateway-uid";
/// Label holding the Gateway's namespace.
pub const LABEL_NAMESPACE: &str = "wgnet-namespace";
/// Label holding the Gateway's name.
pub const LABEL_NAME: &str = "wgnet-name";
/// Label holding the Gateway's region (so orphan sweeps find regional resources).
pub const LABEL_REGION: &str = "wgnet-region";
/// Label holding the Gateway's zone (so orphan sweeps find zonal resources).
pub const LABEL_ZONE: &str = "wgnet-zone";

/// Identity of one Gateway as the cloud sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayId {
    /// Cluster id (defaults to the kube-system namespace uid).
    pub cluster: String,
    /// Gateway namespace.
    pub namespace: String,
    /// Gateway name.
    pub name: String,
    /// Gateway uid.
    pub uid: String,
}

impl GatewayId {
    /// The name shared by the gateway's service account, secret, address, firewall and VM.
    pub fn resource_name(&self) -> String {
        let d = digest::digest(
            &digest::SHA256,
            format!("{}/{}/{}", self.cluster, self.namespace, self.name).as_bytes(),
        );
        let mut s = base32(d.as_ref());
        s.truncate(27);
        format!("wg-{s}")
    }

    /// Labels for labelable resources (addresses, instances, secrets).
    pub fn labels(&self, install: &str, region: &str, zone: &str) -> BTreeMap<String, String> {
        [
            (LABEL_INSTALL, install),
            (LABEL_CLUSTER, self.cluster.as_str()),
            (LABEL_UID, self.uid.as_str()),
            (LABEL_NAMESPACE, self.namespace.as_str()),
            (LABEL_NAME, self.name.as_str()),
            (LABEL_REGION, region),
            (LABEL_ZONE, zone),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), label_value(v)))
        .collect()
    }

    /// The ownership marker for resources without labels (networks have their own, see
    /// [`network_marker`]): firewalls and service accounts carry it in `description`.
    pub fn marker(&self, install: &str, region: &str, zone: &str) -> String {
        format!(
            "wgnet install={install} cluster={} gateway={}/{} uid={} region={region} zone={zone}",
            self.cluster, self.namespace, self.name, self.uid
        )
    }
}

/// The longest install name: with the longest namespace (63) and Gateway name (52) and a
/// 36-character cluster id, [`GatewayId::compact_marker`] stays within a service account's
/// 256-byte description.
pub const MAX_INSTALL_LEN: usize = 16;
/// The longest cluster id, for the same reason (a kube-system uid is 36).
pub const MAX_CLUSTER_LEN: usize = 40;

impl GatewayId {
    /// The marker in its short form, for service accounts (IAM caps their `description`
    /// at 256 bytes): one-letter keys and no region (the zone names it).
    pub fn compact_marker(&self, install: &str, zone: &str) -> String {
        format!(
            "wgnet i={install} c={} g={}/{} u={} z={zone}",
            self.cluster, self.namespace, self.name, self.uid
        )
    }

    /// A service account's `displayName`: for people, at most IAM's 100 bytes.
    pub fn display_name(&self) -> String {
        let mut s = format!("wgnet gateway {}/{}", self.namespace, self.name);
        // Namespaces and names are ASCII, so any byte is a character boundary.
        s.truncate(100);
        s
    }
}

/// The description of the install's shared VPC network.
pub fn network_marker(install: &str) -> String {
    format!("wgnet install={install} shared network")
}

/// Fields parsed back from a [`GatewayId::marker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// Install name.
    pub install: String,
    /// Cluster id.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
}

/// Parses a marker written by [`GatewayId::marker`] or [`GatewayId::compact_marker`];
/// `None` for anything else.
pub fn parse_marker(description: &str) -> Option<Marker> {
    let rest = description.strip_prefix("wgnet ")?;
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for part in rest.split(' ') {
        let (k, v) = part.split_once('=')?;
        let long = match k {
            "i" => "install",
            "c" => "cluster",
            "g" => "gateway",
            "u" => "uid",
            "z" => "zone",
            other => other,
        };
        fields.insert(long, v);
    }
    let (namespace, name) = fields.get("gateway")?.split_once('/')?;
    let zone = (*fields.get("zone")?).to_owned();
    // A zone is its region and a suffix (`us-central1-a`).
    let region = match fields.get("region") {
        Some(r) => (*r).to_owned(),
        None => zone.rsplit_once('-')?.0.to_owned(),
    };
    Some(Marker {
        install: (*fields.get("install")?).to_owned(),
        cluster: (*fields.get("cluster")?).to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: (*fields.get("uid")?).to_owned(),
        region,
        zone,
    })
}

/// A GCP label value: lowercase letters, digits, `_` and `-`, at most 63 characters.
pub fn label_value(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    s.truncate(63);
    s
}

/// A Compute `requestId`: a UUID derived from what is being done, so retries of the same
/// attempt are de-duplicated by GCP while a later attempt (after the resource vanished) is
/// a new request.
pub fn request_id(parts: &[&str]) -> String {
    let d = digest::digest(&digest::SHA256, parts.join("\u{1f}").as_bytes());
    let b = d.as_ref();
    // Version 8 (custom) UUID layout with the RFC 4122 variant; never the zero UUID.
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-8{:01x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        0x80 | (b[8] & 0x3f),
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// RFC 4648 base32, lowercase, no padding: every character is valid in GCP names.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, name: &str) -> GatewayId {
        GatewayId {
            cluster: "c1".into(),
            namespace: ns.into(),
            name: name.into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn names_are_stable_unique_and_valid() {
        let a = id("default", "web").resource_name();
        assert_eq!(a.len(), 30);
        assert_eq!(a, id("default", "web").resource_name());
        assert_ne!(a, id("default", "web2").resource_name());
        // Separator matters: ns "a/b" + name "c" must not equal ns "a" + name "b/c".
        assert_ne!(
            id("a", "b-c").resource_name(),
            id("a-b", "c").resource_name()
        );
        assert!(a.starts_with("wg-"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b""), "");
    }

    #[test]
    fn markers_round_trip() {
        let g = id("ns", "web");
        let m = parse_marker(&g.marker("inst", "us-central1", "us-central1-a")).expect("parses");
        assert_eq!(
            (m.namespace.as_str(), m.name.as_str(), m.uid.as_str()),
            ("ns", "web", "u1")
        );
        assert_eq!(m.zone, "us-central1-a");
        assert_eq!(parse_marker("created by hand"), None);
        assert_eq!(parse_marker(&network_marker("inst")), None);
    }

    #[test]
    fn the_compact_marker_fits_iam_and_parses_like_the_long_one() {
        let id = GatewayId {
            cluster: "0b5c2f0e-3f7a-4c59-9a43-8d2b6f1e7c11".into(),
            namespace: "n".repeat(63),
            name: "g".repeat(52),
            uid: "5d1f6c8a-2b7e-4e0f-8a9c-3c4d5e6f7a8b".into(),
        };
        let install = "i".repeat(MAX_INSTALL_LEN);
        let zone = "northamerica-northeast1-a";
        let compact = id.compact_marker(&install, zone);
        assert!(compact.len() <= 256, "{} bytes", compact.len());
        let long = parse_marker(&id.marker(&install, "northamerica-northeast1", zone));
        assert_eq!(parse_marker(&compact), long);
        assert!(long.is_some());
        assert!(id.display_name().len() <= 100);
        assert!(id.display_name().starts_with("wgnet gateway "));
    }

    #[test]
    fn request_ids_are_uuids_and_deterministic() {
        let a = request_id(&["instance", "wg-x", "u1", "1"]);
        assert_eq!(a, request_id(&["instance", "wg-x", "u1", "1"]));
        assert_ne!(a, request_id(&["instance", "wg-x", "u1", "2"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(label_value("My.Name"), "my_name");
        assert_eq!(label_value(&"x".repeat(70)).len(), 63);
    }
}
