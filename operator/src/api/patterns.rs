//! Regular expressions shared by the schemas. They are anchored, ASCII-only and written in the
//! RE2 subset the API server accepts in `pattern`.

/// A dotted-quad IPv4 address without leading zeros.
pub const IPV4: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";

/// An IPv4 CIDR such as `10.99.0.0/29`.
pub const IPV4_CIDR: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$";

/// A DNS-1035 label: what a Service name must be.
pub const DNS1035_LABEL: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// A DNS-1123 label: what a namespace name must be.
pub const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A namespace name, or `*` for every namespace.
pub const NAMESPACE_OR_ALL: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$";

/// A DNS-1123 subdomain: what a Secret name must be.
pub const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A fully qualified host name with at least two labels, optionally a leading `*.` wildcard.
pub const FQDN: &str = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]([-a-z0-9]*[a-z0-9])?\.?$";

/// A Go-style duration made of integer amounts of h, m, s or ms, such as `10s` or `1m30s`.
pub const DURATION: &str = r"^([0-9]+(h|m|s|ms))+$";

/// A GCP project ID (6 to 30 characters). Domain-scoped ids (`example.com:my-project`) are
/// refused: their colon breaks the per-gateway service account's e-mail and the VM
/// script's metadata values, and Google no longer creates such projects.
pub const GCP_PROJECT: &str = r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$";

/// A Compute operation's scope: `global`, `regions/<region>` or `zones/<zone>`.
pub const GCP_OPERATION_SCOPE: &str =
    r"^(global|regions/[a-z]+-[a-z]+[0-9]+|zones/[a-z]+-[a-z]+[0-9]+-[a-z])$";

/// A Compute operation's name: lowercase letters, digits and hyphens.
pub const GCP_OPERATION_NAME: &str = r"^[a-z0-9][-a-z0-9]*$";

/// A GCP region such as `us-central1`.
pub const GCP_REGION: &str = r"^[a-z]+-[a-z]+[0-9]+$";

/// A GCP zone such as `us-central1-a`.
pub const GCP_ZONE: &str = r"^[a-z]+-[a-z]+[0-9]+-[a-z]$";

/// A GCP machine type name such as `e2-small` or `e2-custom-2-4096`.
pub const GCP_MACHINE_TYPE: &str = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$";

/// A global image or image family path such as
/// `projects/debian-cloud/global/images/family/debian-12`.
pub const GCP_IMAGE: &str =
    r"^projects/[a-z][-a-z0-9.:]*[a-z0-9]/global/images/(family/)?[a-z]([-a-z0-9]*[a-z0-9])?$";

/// A Secret data key.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// An IANA service name: what a Service port name must be.
pub const PORT_NAME: &str = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
