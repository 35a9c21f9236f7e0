//! Google's error bodies: Compute's `errors[].reason` form and the `google.rpc.Status` form
//! of IAM, Secret Manager and OAuth. Pure.

use serde_json::{Value, json};

/// Which API family answers, which decides the error body's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// compute.googleapis.com.
    Compute,
    /// iam.googleapis.com and secretmanager.googleapis.com.
    Rpc,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcpError {
    /// HTTP status.
    pub code: u16,
    /// Human-readable message, as Google words it.
    pub message: String,
    /// Compute `errors[].reason`, such as `notFound`.
    pub reason: &'static str,
}

impl GcpError {
    /// An error with an explicit Compute reason.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason,
        }
    }

    /// 404 for a resource path.
    pub fn not_found(resource: &str) -> Self {
        Self::new(
            404,
            "notFound",
            format!("The resource '{resource}' was not found"),
        )
    }

    /// 409 for a resource path.
    pub fn already_exists(resource: &str) -> Self {
        Self::new(
            409,
            "alreadyExists",
            format!("The resource '{resource}' already exists"),
        )
    }

    /// 400 for a bad field value.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid", message)
    }

    /// The `google.rpc.Code` name for the HTTP status.
    pub fn rpc_status(&self) -> &'static str {
        match (self.code, self.reason) {
            (400, "failedPrecondition") => "FAILED_PRECONDITION",
            (400, _) => "INVALID_ARGUMENT",
            (401, _) => "UNAUTHENTICATED",
            (403, "rateLimitExceeded") => "RESOURCE_EXHAUSTED",
            (403, _) => "PERMISSION_DENIED",
            (404, _) => "NOT_FOUND",
            (409, "aborted") => "ABORTED",
            (409, _) => "ALREADY_EXISTS",
            (412, _) => "FAILED_PRECONDITION",
            (429, _) => "RESOURCE_EXHAUSTED",
            (501, _) => "UNIMPLEMENTED",
            (503, _) => "UNAVAILABLE",
            (504, _) => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    }

    /// The JSON body for `family`.
    pub fn body(&self, family: Family) -> Value {
        match family {
            Family::Compute => json!({"error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }}),
            Family::Rpc => json!({"error": {
                "code": self.code,
                "message": self.message,
                "status": self.rpc_status(),
            }}),
        }
    }

    /// The `error` member of a failed Compute operation.
    pub fn operation_error(&self) -> Value {
        json!({"errors": [{"code": self.reason.to_ascii_uppercase(), "message": self.message}]})
    }
}

/// A generic error for an injected status code, worded like Google's.
pub fn for_status(code: u16) -> GcpError {
    match code {
        400 => GcpError::invalid("Invalid request (injected)"),
        401 => GcpError::new(
            401,
            "authError",
            "Request had invalid authentication credentials.",
        ),
        403 => GcpError::new(403, "forbidden", "The caller does not have permission"),
        404 => GcpError::new(404, "notFound", "Requested entity was not found."),
        409 => GcpError::new(409, "conflict", "The request conflicts (injected)"),
        429 => GcpError::new(429, "rateLimitExceeded", "Quota exceeded (injected)"),
        502 => GcpError::new(502, "backendError", "Bad Gateway"),
        503 => GcpError::new(503, "backendError", "The service is currently unavailable."),
        504 => GcpError::new(504, "backendError", "Deadline exceeded"),
        c => GcpError::new(c, "backendError", "Internal error encountered."),
    }
}
