//! Request-body checks against Google's discovery documents (the trimmed copies in
//! `testdata/gcp-discovery/`), so the emulator rejects what GCP rejects: unknown fields and
//! values of the wrong JSON type. Pure: the documents are read once at start.

use std::collections::HashMap;

use serde_json::Value;

/// The schemas of one API, by id.
#[derive(Debug, Default)]
pub struct Discovery {
    schemas: HashMap<String, Value>,
}

impl Discovery {
    /// Loads the schemas of the named discovery files under `testdata/gcp-discovery/`.
    pub fn load(files: &[&str]) -> Result<Self, String> {
        let dir = crate::repo_root().join("testdata/gcp-discovery");
        let mut schemas = HashMap::new();
        for f in files {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| format!("parsing {}: {e}", path.display()))?;
            let Some(map) = doc.get("schemas").and_then(Value::as_object) else {
                return Err(format!("{} has no schemas", path.display()));
            };
            // Compute, IAM and Secret Manager share no schema ids the emulator uses, so one
            // namespace is enough.
            for (k, v) in map {
                schemas.insert(k.clone(), v.clone());
            }
        }
        Ok(Self { schemas })
    }

    /// Checks `body` against schema `id`; the error is GCP's wording for the first problem.
    pub fn check(&self, id: &str, body: &Value) -> Result<(), String> {
        let schema = self
            .schemas
            .get(id)
            .ok_or_else(|| format!("emulator has no schema {id}"))?;
        self.check_node(schema, body, "resource")
    }

    fn check_node(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = self
                .schemas
                .get(r)
                .ok_or_else(|| format!("emulator has no schema {r}"))?;
            return self.check_node(target, v, at);
        }
        let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
        let bad = |want: &str| Err(format!("Invalid value at '{at}' ({want}), {}", short(v)));
        match ty {
            "object" => {
                let Some(obj) = v.as_object() else {
                    return bad("type.googleapis.com/object");
                };
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties");
                for (k, child) in obj {
                    let path = format!("{at}.{k}");
                    if let Some(p) = props.and_then(|p| p.get(k)) {
                        self.check_node(p, child, &path)?;
                    } else if let Some(e) = extra {
                        self.check_node(e, child, &path)?;
                    } else {
                        return Err(format!(
                            "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
                        ));
                    }
                }
                Ok(())
            }
            "array" => {
                let Some(items) = v.as_array() else {
                    return bad("TYPE_ARRAY");
                };
                let Some(item_schema) = schema.get("items") else {
                    return Ok(());
                };
                for (i, item) in items.iter().enumerate() {
                    self.check_node(item_schema, item, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            "string" => {
                let format = schema.get("format").and_then(Value::as_str);
                match (v, format) {
                    (Value::String(s), Some("int64" | "uint64")) if s.parse::<i128>().is_err() => {
                        bad("TYPE_INT64")
                    }
                    (Value::String(s), Some("byte")) if !is_base64(s) => bad("TYPE_BYTES"),
                    (Value::String(s), _) => check_enum(schema, s, at),
                    // Google's JSON parser accepts numbers for 64-bit integer fields.
                    (Value::Number(_), Some("int64" | "uint64")) => Ok(()),
                    _ => bad("TYPE_STRING"),
                }
            }
            "integer" | "number" => match v {
                Value::Number(_) => Ok(()),
                Value::String(s) if s.parse::<f64>().is_ok() => Ok(()),
                _ => bad("TYPE_INT32"),
            },
            "boolean" => match v {
                Value::Bool(_) => Ok(()),
                _ => bad("TYPE_BOOL"),
            },
            _ => Ok(()),
        }
    }
}

fn check_enum(schema: &Value, s: &str, at: &str) -> Result<(), String> {
    match schema.get("enum").and_then(Value::as_array) {
        Some(values) if !values.iter().any(|e| e.as_str() == Some(s)) => {
            Err(format!("Invalid value at '{at}' (TYPE_ENUM), \"{s}\""))
        }
        _ => Ok(()),
    }
}

fn is_base64(s: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        || base64::engine::general_purpose::URL_SAFE.decode(s).is_ok()
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compute() -> Discovery {
        Discovery::load(&["compute.v1.json"]).expect("discovery documents are in testdata")
    }

    #[test]
    fn accepts_a_firewall_and_rejects_unknown_fields() {
        let d = compute();
        let ok = json!({"name": "fw", "network": "global/networks/n", "sourceRanges": ["0.0.0.0/0"],
            "allowed": [{"IPProtocol": "udp", "ports": ["51820"]}], "targetTags": ["t"], "priority": 1000});
        assert_eq!(d.check("Firewall", &ok), Ok(()));
        let unknown = json!({"name": "fw", "allowed": [{"IPProtocol": "udp", "port": ["1"]}]});
        let err = d
            .check("Firewall", &unknown)
            .expect_err("unknown nested field");
        assert!(err.contains("Unknown name \"port\""), "{err}");
    }

    #[test]
    fn rejects_wrong_types_and_enum_values() {
        let d = compute();
        let err = d
            .check("Firewall", &json!({"priority": "high"}))
            .expect_err("string priority");
        assert!(err.contains("resource.priority"), "{err}");
        let err = d
            .check("Firewall", &json!({"direction": "SIDEWAYS"}))
            .expect_err("bad enum");
        assert!(err.contains("TYPE_ENUM"), "{err}");
        let err = d
            .check("Instance", &json!({"labels": {"a": 1}}))
            .expect_err("label values are strings");
        assert!(err.contains("resource.labels.a"), "{err}");
    }
}
