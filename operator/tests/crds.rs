//! The generated CRDs: current, structural, and enforcing every documented rule.
//!
//! Admission is checked with `wgnet_tests::crd_schema`, which applies defaults, the OpenAPI
//! constraints and the CEL rules (through kube-cel) as the API server does. Each file in
//! `testdata/crs/invalid/` starts with `# expect: <message>`; a file with two documents is an
//! update whose first document is the stored object.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use wgnet_operator::api::{EgressGateway, Gateway};
use wgnet_operator::k8s::{CustomResourceDefinition, JSONSchemaProps};
use wgnet_tests::crd_schema::{FieldError, SchemaValidator};

fn crd_dir() -> PathBuf {
    wgnet_tests::repo_root().join("crds")
}

fn crs_dir(kind: &str) -> PathBuf {
    wgnet_tests::repo_root().join("testdata/crs").join(kind)
}

fn load_crd(file: &str) -> Value {
    let text = std::fs::read_to_string(crd_dir().join(file))
        .unwrap_or_else(|e| panic!("crds/{file} unreadable ({e}); run `make generate`"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("crds/{file} is not YAML: {e}"))
}

fn validator_for(kind: &str) -> SchemaValidator {
    let file = match kind {
        "Gateway" => "gateways.wgnet.dev.yaml",
        "EgressGateway" => "egressgateways.wgnet.dev.yaml",
        other => panic!("testdata names unknown kind {other:?}"),
    };
    SchemaValidator::from_crd(&load_crd(file), "v1alpha1")
        .unwrap_or_else(|e| panic!("crds/{file} does not compile: {e}"))
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("testdata file is readable");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: bad YAML: {e}", path.display()))
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} unreadable: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

/// Validates the last document of a file, as an update of the first when there are two.
fn admit(path: &Path) -> (Value, Vec<FieldError>) {
    let docs = documents(path);
    assert!(
        matches!(docs.len(), 1 | 2),
        "{}: expected one or two documents",
        path.display()
    );
    let new = docs.last().expect("at least one document").clone();
    let kind = new["kind"].as_str().expect("every document has a kind");
    let validator = validator_for(kind);
    let old = (docs.len() == 2).then(|| docs[0].clone());
    if let Some(old) = &old {
        let errors = validator.validate(old, None);
        assert!(
            errors.is_empty(),
            "{}: the stored object must itself be valid: {errors:?}",
            path.display()
        );
    }
    let errors = validator.validate(&new, old.as_ref());
    (validator.apply_defaults(&new), errors)
}

fn expected_message(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("testdata file is readable");
    text.lines()
        .find_map(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} has no `# expect: <message>` line", path.display()))
        .trim()
        .to_owned()
}

/// `crds/` is exactly what the API types render to; otherwise `make generate` was forgotten.
#[test]
fn crds_are_current() {
    for (file, crd) in wgnet_operator::crd::all() {
        let want = wgnet_operator::crd::to_yaml(&crd).expect("CRD renders");
        let have = std::fs::read_to_string(crd_dir().join(file)).unwrap_or_default();
        assert!(
            have == want,
            "crds/{file} is stale: run `make generate` and commit the result"
        );
    }
}

/// Every valid sample is admitted, and after defaulting it parses into the Rust type and
/// serialises back to an object that is admitted too (the types and schema agree).
#[test]
fn valid_samples_are_admitted() {
    for path in yaml_files(&crs_dir("valid")) {
        let (defaulted, errors) = admit(&path);
        assert!(
            errors.is_empty(),
            "{} rejected: {:#?}",
            path.display(),
            errors
        );
        let kind = defaulted["kind"].as_str().expect("kind");
        let roundtrip = match kind {
            "Gateway" => serde_json::to_value(
                serde_json::from_value::<Gateway>(defaulted.clone()).unwrap_or_else(|e| {
                    panic!("{}: does not parse as Gateway: {e}", path.display())
                }),
            ),
            _ => serde_json::to_value(
                serde_json::from_value::<EgressGateway>(defaulted.clone()).unwrap_or_else(|e| {
                    panic!("{}: does not parse as EgressGateway: {e}", path.display())
                }),
            ),
        }
        .expect("serialises");
        let errors = validator_for(kind).validate(&roundtrip, None);
        assert!(
            errors.is_empty(),
            "{}: re-serialised object rejected: {errors:#?}",
            path.display()
        );
    }
}

/// Each invalid sample is rejected with the message it names, and every error was judged
/// (no rule was skipped for lack of a CEL function).
#[test]
fn invalid_samples_are_rejected_with_their_message() {
    for path in yaml_files(&crs_dir("invalid")) {
        let expect = expected_message(&path);
        let (_, errors) = admit(&path);
        assert!(
            errors.iter().any(|e| e.to_string().contains(&expect)),
            "{} must be rejected with {expect:?}, got {:#?}",
            path.display(),
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        let unsupported: Vec<_> = errors.iter().filter(|e| e.unsupported).collect();
        assert!(
            unsupported.is_empty(),
            "{}: rules not evaluable: {unsupported:?}",
            path.display()
        );
    }
}

/// The sample defaults match the documented contract (Go operator's defaults, Debian image).
#[test]
fn minimal_gateway_gets_every_documented_default() {
    let (defaulted, errors) = admit(&crs_dir("valid").join("gateway-minimal.yaml"));
    assert!(errors.is_empty(), "{errors:?}");
    let spec = &defaulted["spec"];
    assert_eq!(spec["provider"], "gcp");
    assert_eq!(spec["gcp"]["machineType"], "e2-small");
    assert_eq!(
        spec["gcp"]["image"],
        "projects/debian-cloud/global/images/family/debian-12"
    );
    assert_eq!(spec["gcp"]["diskSizeGB"], 10);
    assert_eq!(spec["gcp"]["reservedIP"], true);
    assert_eq!(spec["gcp"]["spot"], false);
    assert_eq!(
        spec["wireguard"],
        serde_json::json!({"listenPort": 51820, "subnet": "10.99.0.0/29", "gatewayAddress": "10.99.0.1",
            "linkAddress": "10.99.0.2", "keepalive": 25, "mtu": 1380, "reconcileInterval": "10s"})
    );
    assert_eq!(spec["link"]["replicas"], 1);
    assert_eq!(spec["sourceRanges"], serde_json::json!(["0.0.0.0/0"]));
}

/// Every CEL rule in the CRDs is proven by at least one invalid sample that names its
/// message, so a rule cannot silently stop working.
#[test]
fn every_cel_rule_has_a_rejecting_sample() {
    // Rules no sample can trigger yet, each with the reason.
    let untestable: &[(&str, &str)] = &[(
        "provider is immutable",
        "the enum has one value, so no update can change it; the rule guards future providers",
    )];
    let expected: BTreeSet<String> = yaml_files(&crs_dir("invalid"))
        .iter()
        .map(|p| expected_message(p))
        .collect();
    for (file, _) in wgnet_operator::crd::all() {
        let mut messages = Vec::new();
        collect_rule_messages(&load_crd(file), &mut messages);
        assert!(!messages.is_empty(), "crds/{file} has no CEL rules");
        for message in messages {
            if untestable.iter().any(|(m, _)| *m == message) {
                continue;
            }
            assert!(
                expected
                    .iter()
                    .any(|e| message.contains(e.as_str()) || e.contains(&message)),
                "crds/{file}: no invalid sample expects the rule message {message:?}"
            );
        }
    }
}

fn collect_rule_messages(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["message"].as_str().map(str::to_owned)),
                );
            }
            map.values().for_each(|c| collect_rule_messages(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_rule_messages(c, out)),
        _ => {}
    }
}

/// Both CRDs parse into k8s-openapi's `CustomResourceDefinition` and their schemas are
/// structural: every node typed (or int-or-string / preserve-unknown), no `properties` next
/// to `additionalProperties`, every default valid under its own node, every field described,
/// and list-map keys required or defaulted.
#[test]
fn crds_are_structural() {
    for (file, _) in wgnet_operator::crd::all() {
        let text = std::fs::read_to_string(crd_dir().join(file)).expect("crd file readable");
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("crds/{file}: not a CRD: {e}"));
        assert_eq!(
            crd.spec.versions.len(),
            1,
            "crds/{file}: one version expected"
        );
        let version = &crd.spec.versions[0];
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "crds/{file}: status subresource"
        );
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("openAPIV3Schema present");
        let checker =
            SchemaValidator::new(serde_json::to_value(schema).expect("schema serialises"))
                .expect("compiles");
        let mut problems = Vec::new();
        walk(schema, "", true, &checker, &mut problems);
        assert!(
            problems.is_empty(),
            "crds/{file} is not structural:\n{}",
            problems.join("\n")
        );
    }
}

fn walk(
    node: &JSONSchemaProps,
    path: &str,
    root: bool,
    checker: &SchemaValidator,
    problems: &mut Vec<String>,
) {
    let typed = node.type_.is_some()
        || node.x_kubernetes_int_or_string == Some(true)
        || node.x_kubernetes_preserve_unknown_fields == Some(true);
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    if node.properties.is_some() && node.additional_properties.is_some() {
        problems.push(format!("{path}: properties beside additionalProperties"));
    }
    for junctor in [&node.all_of, &node.any_of, &node.one_of]
        .into_iter()
        .flatten()
    {
        problems.push(format!(
            "{path}: logical junctor with {} branches (needs care to stay structural)",
            junctor.len()
        ));
    }
    if !root
        && node.description.as_deref().is_none_or(str::is_empty)
        && !path.ends_with("[]")
        && !path.ends_with("{}")
    {
        problems.push(format!("{path}: no description"));
    }
    if let Some(default) = &node.default {
        let node_json = serde_json::to_value(node).expect("node serialises");
        let errors = checker.check_value(&node_json, &default.0);
        if !errors.is_empty() {
            problems.push(format!(
                "{path}: default {} invalid under its own schema: {errors:?}",
                default.0
            ));
        }
    }
    if let (Some(keys), Some(items)) = (&node.x_kubernetes_list_map_keys, node.items.as_ref()) {
        let k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(item) = items
        else {
            problems.push(format!("{path}: list-map with tuple items"));
            return;
        };
        let required = item.required.clone().unwrap_or_default();
        for key in keys {
            let defaulted = item
                .properties
                .as_ref()
                .and_then(|p| p.get(key))
                .is_some_and(|p| p.default.is_some());
            if !required.contains(key) && !defaulted {
                problems.push(format!(
                    "{path}: list-map key {key} neither required nor defaulted"
                ));
            }
        }
    }
    for (name, child) in node.properties.iter().flatten() {
        walk(child, &format!("{path}.{name}"), false, checker, problems);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(item)) = &node.items {
        walk(item, &format!("{path}[]"), false, checker, problems);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(value)) =
        &node.additional_properties
    {
        walk(value, &format!("{path}{{}}"), false, checker, problems);
    }
}
