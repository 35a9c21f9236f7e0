//! The Helm chart for tests: runs `helm template` / `helm lint` on
//! `charts/wireguard-gateway-operator` with given values and parses the output into YAML
//! documents, and any other helm command (install, upgrade, uninstall). I/O boundary: the `helm` binary (installed by `make deps`).

use std::process::Command;

use serde_yaml::Value;

/// Path of the chart.
pub fn dir() -> std::path::PathBuf {
    crate::repo_root().join("charts/wireguard-gateway-operator")
}

/// Runs `helm ARGS` (owned arguments): its output, or why it failed.
pub fn helm_cmd(args: &[String]) -> Result<String, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&args)
}

fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new("helm")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run helm ({e}); `make deps` installs it"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{}{}", text, String::from_utf8_lossy(&out.stderr)))
    }
}

fn with_sets<'a>(mut args: Vec<&'a str>, sets: &'a [&'a str]) -> Vec<&'a str> {
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    args
}

/// `helm lint --strict` with `--set` values; its output, or why it failed.
pub fn lint(sets: &[&str]) -> Result<String, String> {
    let dir = dir();
    let dir = dir.to_string_lossy();
    helm(&with_sets(vec!["lint", "--strict", &dir], sets))
}

/// `helm template` as release `release` in `namespace` with `--set` values: every
/// rendered document (CRDs included), or helm's error.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> Result<Vec<Value>, String> {
    let dir = dir();
    let dir = dir.to_string_lossy();
    let text = helm(&with_sets(
        vec![
            "template",
            release,
            &dir,
            "--namespace",
            namespace,
            "--include-crds",
        ],
        sets,
    ))?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = <Value as serde::Deserialize>::deserialize(d).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The one document of `kind` (and `name` when given), parsed into its typed struct.
pub fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Result<T, String> {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    match found.as_slice() {
        [d] => serde_yaml::from_value((*d).clone()).map_err(|e| format!("{kind}: {e}")),
        other => Err(format!("expected one {kind}, found {}", other.len())),
    }
}
