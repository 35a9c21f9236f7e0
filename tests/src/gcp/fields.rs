//! Partial responses: Google's `fields` system parameter, which every method of these APIs
//! takes, cuts an answer down to the selected fields. The grammar is Google's: fields
//! separated by commas, `a/b` for a field inside another, `a(b,c)` for several inside one,
//! `*` for every key of an object (the scopes of an aggregated list); a selection inside
//! an array applies to each element.
//!
//! Pure functions over JSON values; no I/O.

use serde_json::{Map, Value};

use super::error::GcpError;

/// One selected field and, when only part of it is wanted, what of it.
#[derive(Clone, Debug, PartialEq)]
struct Field {
    name: String,
    inner: Option<Vec<Field>>,
}

/// Parses a `fields` value.
fn parse(selector: &str) -> Result<Vec<Field>, GcpError> {
    let mut rest = selector.chars().peekable();
    let parsed = list(&mut rest).and_then(|fields| match rest.next() {
        None => Ok(fields),
        // `list` stops only at the end or at a ')' it did not open.
        Some(_) => Err("a ')' without its '('"),
    });
    parsed.map_err(|why| GcpError::invalid(format!("Invalid field selection {selector}: {why}.")))
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn list(rest: &mut Chars<'_>) -> Result<Vec<Field>, &'static str> {
    let mut out = vec![path(rest)?];
    while rest.next_if_eq(&',').is_some() {
        out.push(path(rest)?);
    }
    Ok(out)
}

fn path(rest: &mut Chars<'_>) -> Result<Field, &'static str> {
    let mut name = String::new();
    while let Some(c) = rest.next_if(|c| !matches!(c, '/' | '(' | ')' | ',')) {
        name.push(c);
    }
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err("an empty field name");
    }
    let inner = if rest.next_if_eq(&'/').is_some() {
        Some(vec![path(rest)?])
    } else if rest.next_if_eq(&'(').is_some() {
        let inner = list(rest)?;
        if rest.next_if_eq(&')').is_none() {
            return Err("a '(' without its ')'");
        }
        Some(inner)
    } else {
        None
    };
    Ok(Field { name, inner })
}

/// `v` cut to what `selector` (a `fields` value) selects; `v` unchanged without one.
pub(super) fn select(v: Value, selector: Option<&str>) -> Result<Value, GcpError> {
    match selector.filter(|s| !s.is_empty()) {
        None => Ok(v),
        Some(s) => Ok(apply(&v, &parse(s)?)),
    }
}

fn apply(v: &Value, fields: &[Field]) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(|i| apply(i, fields)).collect()),
        Value::Object(m) => {
            let mut out = Map::new();
            for f in fields {
                for (k, child) in m.iter().filter(|(k, _)| f.name == "*" || **k == f.name) {
                    let picked = match &f.inner {
                        None => child.clone(),
                        Some(inner) => apply(child, inner),
                    };
                    merge(&mut out, k, picked);
                }
            }
            Value::Object(out)
        }
        // A selection below a plain value selects the value (nothing to cut).
        other => other.clone(),
    }
}

/// Adds `v` under `k`, joining it with what `a/b,a/c` selected there before.
fn merge(out: &mut Map<String, Value>, k: &str, v: Value) {
    match (out.get_mut(k), v) {
        (Some(Value::Object(have)), Value::Object(more)) => {
            for (k2, v2) in more {
                merge(have, &k2, v2);
            }
        }
        (Some(Value::Array(have)), Value::Array(more)) if have.len() == more.len() => {
            for (h, m) in have.iter_mut().zip(more) {
                match (h, m) {
                    (Value::Object(h), Value::Object(m)) => {
                        for (k2, v2) in m {
                            merge(h, &k2, v2);
                        }
                    }
                    (h, m) => *h = m,
                }
            }
        }
        (_, v) => {
            out.insert(k.to_owned(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::select;

    #[test]
    fn selects_nested_fields_in_every_scope_and_element() {
        let list = json!({
            "kind": "compute#instanceAggregatedList",
            "items": {
                "zones/a": {"instances": [
                    {"name": "i1", "status": "RUNNING", "metadata": {"fingerprint": "f1", "items": [{"key": "startup-script", "value": "long"}]},
                     "networkInterfaces": [{"network": "n", "accessConfigs": [{"natIP": "198.18.0.1", "name": "x"}]}]}
                ]},
                "zones/b": {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
            },
            "nextPageToken": "t"
        });
        let got = select(
            list,
            Some("nextPageToken,items/*/instances(name,metadata/fingerprint,networkInterfaces/accessConfigs/natIP)"),
        )
        .expect("valid");
        assert_eq!(
            got,
            json!({
                "items": {
                    "zones/a": {"instances": [
                        {"name": "i1", "metadata": {"fingerprint": "f1"},
                         "networkInterfaces": [{"accessConfigs": [{"natIP": "198.18.0.1"}]}]}
                    ]},
                    "zones/b": {}
                },
                "nextPageToken": "t"
            })
        );
    }

    #[test]
    fn paths_into_one_field_join() {
        let v = json!({"a": {"b": 1, "c": 2, "d": 3}, "e": 4});
        assert_eq!(
            select(v.clone(), Some("a/b,a/c")).expect("valid"),
            json!({"a": {"b": 1, "c": 2}})
        );
        assert_eq!(select(v.clone(), None).expect("none"), v);
        assert_eq!(select(v.clone(), Some("*")).expect("all"), v);
    }

    #[test]
    fn a_malformed_selector_is_refused() {
        for bad in ["a(b", "a/", ",a", "a)b"] {
            let e = select(json!({"a": 1}), Some(bad)).expect_err(bad);
            assert_eq!(e.code, 400, "{bad}");
            assert!(e.message.contains(bad), "{bad}: {}", e.message);
        }
    }
}
