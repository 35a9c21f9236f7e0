#!/usr/bin/env python3
"""Copies the parts of Google's discovery documents the GCP emulator checks against.

Keeps the request/response schemas the cloud crate uses (with every schema they reference)
and the methods' HTTP paths, so testdata/ stands on its own without the multi-megabyte
originals. Usage: trim-discovery.py SOURCE_DIR DEST_DIR
"""
import json
import sys

ROOTS = {
    "compute.v1.json": (
        ["Network", "Firewall", "Address", "Instance", "Operation", "GuestAttributes",
         "InstancesSetLabelsRequest", "Metadata", "FirewallList", "AddressList",
         "InstanceList", "NetworkList", "MachineType", "Image"],
        ["networks", "firewalls", "addresses", "instances", "globalOperations",
         "regionOperations", "zoneOperations", "machineTypes", "images"],
    ),
    "iam.v1.json": (
        ["CreateServiceAccountRequest", "ServiceAccount", "ListServiceAccountsResponse"],
        ["projects"],
    ),
    "secretmanager.v1.json": (
        ["Secret", "AddSecretVersionRequest", "SecretVersion", "AccessSecretVersionResponse",
         "SetIamPolicyRequest", "Policy", "ListSecretsResponse"],
        ["projects"],
    ),
}


def closure(schemas, roots):
    keep, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)

        def walk(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    todo.append(node["$ref"])
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(schemas[name])
    return keep


def methods(resources, wanted, prefix=""):
    out = {}
    for name, res in resources.items():
        full = prefix + name
        top = full.split(".")[0]
        if top not in wanted:
            continue
        for mname, m in res.get("methods", {}).items():
            out[full + "." + mname] = {
                "httpMethod": m["httpMethod"],
                "path": m.get("flatPath", m["path"]),
                "request": m.get("request", {}).get("$ref"),
                "response": m.get("response", {}).get("$ref"),
            }
        out.update(methods(res.get("resources", {}), wanted, full + "."))
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    for fname, (roots, resources) in ROOTS.items():
        with open(f"{src}/{fname}") as f:
            doc = json.load(f)
        keep = closure(doc["schemas"], roots)
        out = {
            "source": f"Trimmed copy of Google's {doc['id']} discovery document "
                      f"(revision {doc.get('revision')}); regenerate with scripts/trim-discovery.py",
            "id": doc["id"],
            "rootUrl": doc["rootUrl"],
            "servicePath": doc["servicePath"],
            "methods": methods(doc["resources"], resources),
            "schemas": {k: doc["schemas"][k] for k in sorted(keep)},
        }
        with open(f"{dst}/{fname}", "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
