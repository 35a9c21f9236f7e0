//! The IAM permissions each GCP REST call needs, as Google's API reference lists them for
//! the methods the cloud crate uses (an instance insert also needs the rights on what the
//! new VM uses: its disk, image, subnetwork, address and service account). Pure; lets a
//! test derive the operator's custom role from the calls it really makes.

use std::collections::BTreeSet;

use super::LoggedCall;

/// The permissions `call` needs, or `Err` with the call when no rule covers it (a new call
/// must be added here and to the role). Token and metadata-server calls need none.
pub fn permissions_of(call: &LoggedCall) -> Result<BTreeSet<&'static str>, String> {
    let unknown = || Err(format!("{} {} ({})", call.method, call.path, call.api));
    let m = call.method.as_str();
    let segs: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let found: &[&'static str] = match call.api {
        "oauth" | "metadata" => &[],
        "compute" => {
            // compute/v1/projects/P/<scope...>/<collection>[/<name>[/<verb>]]
            let Some(rest) = segs.get(4..) else {
                return unknown();
            };
            let (collection, tail) = match rest {
                ["global" | "aggregated", c, tail @ ..] => (*c, tail),
                ["regions" | "zones", _, c, tail @ ..] => (*c, tail),
                _ => return unknown(),
            };
            let scope = rest[0];
            match (collection, tail, m) {
                ("networks", [], "POST") => &["compute.networks.create"],
                ("networks", [_], "GET") => &["compute.networks.get"],
                ("networks", [_], "DELETE") => &["compute.networks.delete"],
                ("firewalls", [], "GET") => &["compute.firewalls.list"],
                ("firewalls", [], "POST") => {
                    &["compute.firewalls.create", "compute.networks.updatePolicy"]
                }
                ("firewalls", [_], "GET") => &["compute.firewalls.get"],
                ("firewalls", [_], "PATCH") => {
                    &["compute.firewalls.update", "compute.networks.updatePolicy"]
                }
                ("firewalls", [_], "DELETE") => {
                    &["compute.firewalls.delete", "compute.networks.updatePolicy"]
                }
                ("addresses", [], "GET") => &["compute.addresses.list"],
                ("addresses", [], "POST") => &["compute.addresses.create"],
                ("addresses", [_], "GET") => &["compute.addresses.get"],
                ("addresses", [_], "DELETE") => &["compute.addresses.delete"],
                ("instances", [], "GET") => &["compute.instances.list"],
                ("instances", [], "POST") => &[
                    "compute.instances.create",
                    "compute.instances.setMetadata",
                    "compute.instances.setLabels",
                    "compute.instances.setTags",
                    "compute.instances.setServiceAccount",
                    "compute.disks.create",
                    "compute.images.useReadOnly",
                    "compute.subnetworks.use",
                    "compute.subnetworks.useExternalIp",
                    "compute.addresses.use",
                    "iam.serviceAccounts.actAs",
                ],
                ("instances", [_], "GET") => &["compute.instances.get"],
                ("instances", [_], "DELETE") => &["compute.instances.delete"],
                ("instances", [_, "start"], "POST") => &["compute.instances.start"],
                ("instances", [_, "setMetadata"], "POST") => &["compute.instances.setMetadata"],
                ("instances", [_, "setLabels"], "POST") => &["compute.instances.setLabels"],
                ("instances", [_, "getGuestAttributes"], "GET") => {
                    &["compute.instances.getGuestAttributes"]
                }
                ("operations", [_] | [_, "wait"], _) => match scope {
                    "global" => &["compute.globalOperations.get"],
                    "regions" => &["compute.regionOperations.get"],
                    _ => &["compute.zoneOperations.get"],
                },
                _ => return unknown(),
            }
        }
        "iam" => match (segs.get(3..).unwrap_or_default(), m) {
            (["serviceAccounts"], "GET") => &["iam.serviceAccounts.list"],
            (["serviceAccounts"], "POST") => &["iam.serviceAccounts.create"],
            (["serviceAccounts", _], "GET") => &["iam.serviceAccounts.get"],
            (["serviceAccounts", _], "DELETE") => &["iam.serviceAccounts.delete"],
            _ => return unknown(),
        },
        "secretmanager" => match (segs.get(3..).unwrap_or_default(), m) {
            (["secrets"], "GET") => &["secretmanager.secrets.list"],
            (["secrets"], "POST") => &["secretmanager.secrets.create"],
            (["secrets", s], _) if s.ends_with(":getIamPolicy") => {
                &["secretmanager.secrets.getIamPolicy"]
            }
            (["secrets", s], "POST") if s.ends_with(":setIamPolicy") => {
                &["secretmanager.secrets.setIamPolicy"]
            }
            (["secrets", s], "POST") if s.ends_with(":addVersion") => {
                &["secretmanager.versions.add"]
            }
            (["secrets", _], "GET") => &["secretmanager.secrets.get"],
            (["secrets", _], "DELETE") => &["secretmanager.secrets.delete"],
            (["secrets", _, "versions", v], "GET") if v.ends_with(":access") => {
                &["secretmanager.versions.access"]
            }
            _ => return unknown(),
        },
        _ => return unknown(),
    };
    Ok(found.iter().copied().collect())
}
