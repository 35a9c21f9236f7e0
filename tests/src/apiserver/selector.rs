//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`exists) and the field
//! selectors every kind supports (`metadata.name`, `metadata.namespace`). Pure.

use serde_json::Value;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label or field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Req>);

impl Selector {
    /// Parses a label selector such as `app=web,tier in (a, b),!legacy`.
    pub fn parse_labels(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(
                parse_term(term).ok_or_else(|| format!("unable to parse requirement: {term:?}"))?,
            );
        }
        Ok(Self(reqs))
    }

    /// Parses a field selector; only `metadata.name` and `metadata.namespace` with `=`, `==`
    /// or `!=` are supported, as for most kinds on the real server.
    pub fn parse_fields(text: &str) -> Result<Self, String> {
        let sel = Self::parse_labels(text)?;
        for r in &sel.0 {
            match r {
                Req::Eq(k, _) | Req::Ne(k, _)
                    if k == "metadata.name" || k == "metadata.namespace" => {}
                other => return Err(format!("field label not supported: {other:?}")),
            }
        }
        Ok(sel)
    }

    /// Whether an object's labels satisfy every requirement.
    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }

    /// Whether an object's fields satisfy every requirement.
    pub fn matches_fields(&self, obj: &Value) -> bool {
        let get = |k: &str| {
            let field = k.strip_prefix("metadata.").unwrap_or(k);
            obj["metadata"][field].as_str().unwrap_or("").to_owned()
        };
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == *v,
            Req::Ne(k, v) => get(k) != *v,
            _ => false,
        })
    }
}

/// Splits on commas that are not inside a parenthesised value list.
fn split_terms(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_term(term: &str) -> Option<Req> {
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    if let Some(k) = term.strip_prefix('!') {
        let k = k.trim();
        return valid_key(k).then(|| Req::NotExists(k.to_owned()));
    }
    for (op, ne) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = term.split_once(op) {
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            if !valid_key(&k) {
                return None;
            }
            return Some(if ne { Req::Ne(k, v) } else { Req::Eq(k, v) });
        }
    }
    for (op, not) in [(" notin ", true), (" in ", false)] {
        if let Some((k, rest)) = term.split_once(op) {
            let rest = rest.trim();
            let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
            let values = inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            let k = k.trim().to_owned();
            return Some(if not {
                Req::NotIn(k, values)
            } else {
                Req::In(k, values)
            });
        }
    }
    valid_key(term).then(|| Req::Exists(term.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    /// Every label operator selects what the Kubernetes documentation says it selects.
    #[test]
    fn label_operators_match_like_kubernetes() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front, back)",
            "tier notin (back)",
            "app",
            "!legacy",
            "app=web,tier",
        ];
        let no = [
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front,back)",
            "legacy",
            "!app",
            "app=web,legacy",
        ];
        for s in yes {
            assert!(
                Selector::parse_labels(s).expect(s).matches_labels(&o),
                "{s} should match"
            );
        }
        for s in no {
            assert!(
                !Selector::parse_labels(s).expect(s).matches_labels(&o),
                "{s} should not match"
            );
        }
        assert!(
            Selector::parse_labels("x notin (a)")
                .expect("parses")
                .matches_labels(&obj(json!({})))
        );
        assert!(Selector::parse_labels("a b c").is_err());
    }

    /// Field selectors support name and namespace only.
    #[test]
    fn field_selectors_cover_name_and_namespace() {
        let o = obj(json!({}));
        assert!(
            Selector::parse_fields("metadata.name=a,metadata.namespace==ns")
                .expect("parses")
                .matches_fields(&o)
        );
        assert!(
            !Selector::parse_fields("metadata.name!=a")
                .expect("parses")
                .matches_fields(&o)
        );
        assert!(Selector::parse_fields("spec.nodeName=x").is_err());
    }
}
