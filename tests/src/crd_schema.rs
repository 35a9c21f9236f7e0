//! Server-side checks of custom resources against a CRD's `openAPIV3Schema`, done the way the
//! Kubernetes API server does them: defaults first, then the OpenAPI value constraints, then
//! the `x-kubernetes-validations` CEL rules (including transition rules that see `oldSelf`).
//!
//! Pure (no I/O). CEL evaluation and the Kubernetes CEL libraries (IP/CIDR, strings, lists,
//! quantity, ...) come from the `kube-cel` crate; the OpenAPI constraints are checked here.
//! The operator's CRD tests use it for fast, pure checks of `testdata/crs/`; the kubectl
//! test applies the same samples to a real kube-apiserver, which is the authority.
//!
//! Approximations, compared with the real API server:
//! - Unknown fields are reported as errors (`unknown field "..."`), as with kubectl's default
//!   strict field validation, rather than silently pruned.
//! - `pattern` uses Rust's `regex` crate, which accepts the RE2 syntax the API server uses.
//! - `format` is not checked (the API server checks only a few formats, and only for
//!   builtin types our schemas do not use).
//! - CEL cost budgets are not enforced; rules that use a function `kube-cel` does not
//!   provide are reported with [`FieldError::unsupported`] set instead of being skipped.

use std::collections::{BTreeSet, HashMap};

use kube_cel::{CompiledSchema, ErrorKind, Validator, compile_schema};
use serde_json::{Map, Value};

/// Something wrong with the schema itself (not with an object checked against it).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The CRD has no version of that name.
    #[error("CRD has no version {0:?}")]
    NoSuchVersion(String),
    /// The version has no `schema.openAPIV3Schema`.
    #[error("CRD version {0:?} has no openAPIV3Schema")]
    NoSchema(String),
    /// A CEL rule does not compile.
    #[error("CEL rule does not compile: {0}")]
    Cel(String),
    /// A `pattern` is not a valid regular expression.
    #[error("invalid pattern {pattern:?}: {message}")]
    Pattern {
        /// The pattern text.
        pattern: String,
        /// Why it does not compile.
        message: String,
    },
}

/// One reason an object is invalid, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with list indices, such as `spec.forwards[1].port` (empty for the root).
    pub path: String,
    /// What is wrong, in the API server's words where it has some.
    pub message: String,
    /// The CEL rule that failed, when the error comes from one.
    pub rule: Option<String>,
    /// The rule uses a CEL function or macro the evaluator lacks, so it could not be judged.
    pub unsupported: bool,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A compiled `openAPIV3Schema`, ready to default and validate objects of one CRD version.
pub struct SchemaValidator {
    schema: Value,
    compiled: CompiledSchema,
    cel: Validator,
    patterns: HashMap<String, regex::Regex>,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator").finish_non_exhaustive()
    }
}

impl SchemaValidator {
    /// Compiles the schema of `version` from a CRD given as JSON. Fails if a CEL rule or a
    /// pattern does not compile, as the API server refuses such a CRD.
    pub fn from_crd(crd: &Value, version: &str) -> Result<Self, SchemaError> {
        let versions = crd["spec"]["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let v = versions
            .iter()
            .find(|v| v["name"] == version)
            .ok_or_else(|| SchemaError::NoSuchVersion(version.to_owned()))?;
        let schema = v["schema"]["openAPIV3Schema"].clone();
        if !schema.is_object() {
            return Err(SchemaError::NoSchema(version.to_owned()));
        }
        Self::new(schema)
    }

    /// Compiles a bare `openAPIV3Schema`.
    pub fn new(schema: Value) -> Result<Self, SchemaError> {
        let compiled = compile_schema(&schema);
        if let Some(err) = compiled.compilation_errors().first() {
            return Err(SchemaError::Cel(err.to_string()));
        }
        let mut patterns = HashMap::new();
        collect_patterns(&schema, &mut patterns)?;
        Ok(Self {
            schema,
            compiled,
            cel: Validator::new(),
            patterns,
        })
    }

    /// The schema this validator was built from.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Returns `obj` with every schema default filled in, as the API server does on create,
    /// update and read.
    pub fn apply_defaults(&self, obj: &Value) -> Value {
        kube_cel::apply_defaults(&self.schema, obj)
    }

    /// Validates an object (after defaulting it) against the value constraints and the CEL
    /// rules. `old` is the stored object on update, which transition rules compare with.
    /// Returns every error found; an empty list means the object is admitted.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let defaulted = self.apply_defaults(obj);
        let mut errors = Vec::new();
        self.check(&self.schema, &defaulted, String::new(), true, &mut errors);
        // CEL rules assume a value of the declared shape; the API server also skips them
        // when the value constraints already failed, which keeps messages focused.
        if errors.is_empty() {
            let old = old.map(|o| self.apply_defaults(o));
            if let Err(cel_errors) =
                self.cel
                    .validate_compiled(&self.compiled, &defaulted, old.as_ref())
            {
                errors.extend(cel_errors.iter().map(|e| FieldError {
                    path: e.field_path.clone(),
                    message: e.message.clone(),
                    rule: Some(e.rule.clone()),
                    unsupported: e.kind == ErrorKind::UnsupportedReference,
                }));
            }
        }
        errors
    }

    /// Checks a value against any schema node (the value constraints only, no CEL), for
    /// example a node's own `default`.
    pub fn check_value(&self, node: &Value, value: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.check(node, value, String::new(), false, &mut errors);
        errors
    }

    fn check(
        &self,
        node: &Value,
        value: &Value,
        path: String,
        root: bool,
        out: &mut Vec<FieldError>,
    ) {
        let err = |out: &mut Vec<FieldError>, message: String| {
            out.push(FieldError {
                path: path.clone(),
                message,
                rule: None,
                unsupported: false,
            })
        };
        if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            && node.get("type").is_none()
        {
            return;
        }
        if value.is_null() {
            if node.get("nullable") != Some(&Value::Bool(true)) {
                err(
                    out,
                    format!(
                        "Invalid value: \"null\": {} in body must be of type {}",
                        display(&path),
                        type_name(node)
                    ),
                );
            }
            return;
        }
        let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let ty = node.get("type").and_then(Value::as_str);
        let type_ok = match (ty, value) {
            _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
            (None, _) => true,
            (Some("object"), Value::Object(_)) => true,
            (Some("array"), Value::Array(_)) => true,
            (Some("string"), Value::String(_)) => true,
            (Some("boolean"), Value::Bool(_)) => true,
            (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Some("number"), Value::Number(_)) => true,
            _ => false,
        };
        if !type_ok {
            err(
                out,
                format!(
                    "Invalid value: \"{}\": {} in body must be of type {}",
                    json_type(value),
                    display(&path),
                    type_name(node)
                ),
            );
            return;
        }

        if let Some(allowed) = node.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            err(
                out,
                format!(
                    "Unsupported value: {value}: supported values: {}",
                    list.join(", ")
                ),
            );
        }

        match value {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if let Some(min) = node.get("minimum").and_then(Value::as_f64) {
                    let exclusive = node.get("exclusiveMinimum") == Some(&Value::Bool(true));
                    if x < min || (exclusive && x == min) {
                        err(
                            out,
                            format!(
                                "Invalid value: {value}: {} in body should be greater than or equal to {}",
                                display(&path),
                                num(min)
                            ),
                        );
                    }
                }
                if let Some(max) = node.get("maximum").and_then(Value::as_f64) {
                    let exclusive = node.get("exclusiveMaximum") == Some(&Value::Bool(true));
                    if x > max || (exclusive && x == max) {
                        err(
                            out,
                            format!(
                                "Invalid value: {value}: {} in body should be less than or equal to {}",
                                display(&path),
                                num(max)
                            ),
                        );
                    }
                }
            }
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(min) = node.get("minLength").and_then(Value::as_u64)
                    && len < min
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {value}: {} in body should be at least {min} chars long",
                            display(&path)
                        ),
                    );
                }
                if let Some(max) = node.get("maxLength").and_then(Value::as_u64)
                    && len > max
                {
                    err(out, format!("Too long: may not be more than {max} bytes"));
                }
                if let Some(p) = node.get("pattern").and_then(Value::as_str)
                    && let Some(re) = self.patterns.get(p)
                    && !re.is_match(s)
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {value}: {} in body should match '{p}'",
                            display(&path)
                        ),
                    );
                }
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                if let Some(min) = node.get("minItems").and_then(Value::as_u64)
                    && n < min
                {
                    err(
                        out,
                        format!(
                            "Invalid value: {n}: {} in body should have at least {min} items",
                            display(&path)
                        ),
                    );
                }
                if let Some(max) = node.get("maxItems").and_then(Value::as_u64)
                    && n > max
                {
                    err(out, format!("Too many: {n}: must have at most {max} items"));
                }
                match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("set") => {
                        let mut seen = BTreeSet::new();
                        for (i, item) in items.iter().enumerate() {
                            if !seen.insert(item.to_string()) {
                                out.push(FieldError {
                                    path: format!("{path}[{i}]"),
                                    message: format!("Duplicate value: {item}"),
                                    rule: None,
                                    unsupported: false,
                                });
                            }
                        }
                    }
                    Some("map") => {
                        let keys: Vec<&str> = node
                            .get("x-kubernetes-list-map-keys")
                            .and_then(Value::as_array)
                            .map(|k| k.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        let mut seen = BTreeSet::new();
                        for (i, item) in items.iter().enumerate() {
                            let key: Vec<String> =
                                keys.iter().map(|k| item[*k].to_string()).collect();
                            if !seen.insert(key.clone()) {
                                out.push(FieldError {
                                    path: format!("{path}[{i}]"),
                                    message: format!("Duplicate value: {{{}}}", key.join(", ")),
                                    rule: None,
                                    unsupported: false,
                                });
                            }
                        }
                    }
                    _ => {}
                }
                if let Some(item_schema) = node.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item_schema, item, format!("{path}[{i}]"), false, out);
                    }
                }
            }
            Value::Object(fields) => self.check_object(node, fields, &path, root, out),
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn check_object(
        &self,
        node: &Value,
        fields: &Map<String, Value>,
        path: &str,
        root: bool,
        out: &mut Vec<FieldError>,
    ) {
        let props = node.get("properties").and_then(Value::as_object);
        for req in node
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = req.as_str()
                && !fields.contains_key(name)
            {
                out.push(FieldError {
                    path: join(path, name),
                    message: "Required value".to_owned(),
                    rule: None,
                    unsupported: false,
                });
            }
        }
        let preserve = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for (name, value) in fields {
            // apiVersion, kind and metadata are validated by the API server itself, not by
            // the CRD schema.
            if root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(child) = props.and_then(|p| p.get(name)) {
                self.check(child, value, join(path, name), false, out);
            } else if let Some(child) = node.get("additionalProperties").filter(|a| a.is_object()) {
                self.check(child, value, join(path, name), false, out);
            } else if !preserve {
                out.push(FieldError {
                    path: path.to_owned(),
                    message: format!("unknown field \"{}\"", join(path, name)),
                    rule: None,
                    unsupported: false,
                });
            }
        }
    }
}

fn collect_patterns(
    node: &Value,
    out: &mut HashMap<String, regex::Regex>,
) -> Result<(), SchemaError> {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get("pattern")
                && !out.contains_key(p)
            {
                let re = regex::Regex::new(p).map_err(|e| SchemaError::Pattern {
                    pattern: p.clone(),
                    message: e.to_string(),
                })?;
                out.insert(p.clone(), re);
            }
            for (key, child) in map {
                // `default`, `enum` and `example` hold data, not schemas.
                if !matches!(key.as_str(), "default" | "enum" | "example") {
                    collect_patterns(child, out)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_patterns(item, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() { "body" } else { path }
}

fn type_name(node: &Value) -> String {
    node.get("type")
        .and_then(Value::as_str)
        .unwrap_or("int-or-string")
        .to_owned()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Prints `65535.0` as `65535`, as the API server does.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn validator() -> SchemaValidator {
        SchemaValidator::new(json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["port"],
                    "x-kubernetes-validations": [
                        {"rule": "self.port != self.other", "message": "port and other must differ"}
                    ],
                    "properties": {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "other": {"type": "integer", "default": 7},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5,
                                 "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "name is immutable"}]},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 2},
                        "mode": {"type": "string", "enum": ["a", "b"]}
                    }
                }
            }
        }))
        .expect("test schema compiles")
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    /// Each value constraint is enforced and reported at its path.
    #[test]
    fn value_constraints_are_enforced() {
        let v = validator();
        let errs = v.validate(&json!({"spec": {"port": 70000, "name": "ABC", "tags": ["x", "x", "y"], "mode": "c", "extra": 1}}), None);
        let text = messages(&errs).join("\n");
        assert!(text.contains("spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"), "{text}");
        assert!(text.contains("spec.name: Invalid value: \"ABC\""), "{text}");
        assert!(text.contains("spec.tags[1]: Duplicate value"), "{text}");
        assert!(text.contains("spec.tags: Too many: 3"), "{text}");
        assert!(
            text.contains("spec.mode: Unsupported value: \"c\""),
            "{text}"
        );
        assert!(text.contains("unknown field \"spec.extra\""), "{text}");
        let missing = v.validate(&json!({"spec": {}}), None);
        assert_eq!(messages(&missing), vec!["spec.port: Required value"]);
    }

    /// Defaults are applied before the CEL rules run, and transition rules see `oldSelf`.
    #[test]
    fn cel_rules_see_defaults_and_old_self() {
        let v = validator();
        let errs = v.validate(&json!({"spec": {"port": 7}}), None);
        assert_eq!(messages(&errs), vec!["spec: port and other must differ"]);
        assert!(
            v.validate(&json!({"spec": {"port": 8, "name": "a"}}), None)
                .is_empty()
        );
        let old = json!({"spec": {"port": 8, "name": "a"}});
        let errs = v.validate(&json!({"spec": {"port": 8, "name": "b"}}), Some(&old));
        assert_eq!(messages(&errs), vec!["spec.name: name is immutable"]);
        assert_eq!(
            v.apply_defaults(&json!({"spec": {"port": 1}}))["spec"]["other"],
            json!(7)
        );
    }

    /// A rule that does not compile makes the whole schema unusable, as the API server
    /// refuses such a CRD.
    #[test]
    fn uncompilable_rule_is_a_schema_error() {
        let err = SchemaValidator::new(json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "self.(", "message": "x"}]
        }))
        .expect_err("broken rule must be refused");
        assert!(matches!(err, SchemaError::Cel(_)), "{err}");
    }
}
