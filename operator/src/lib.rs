//! wireguard-gateway-operator: the `wgnet.dev` API types and (from later issues) the
//! controllers that reconcile them.
//!
//! This crate owns the user-facing contract: [`api`] holds the custom resource types whose
//! generated schemas live in `crds/`, and [`crd`] renders those schemas. Nothing here does
//! I/O yet; the controllers that talk to the API server and to GCP arrive with the operator.

pub mod api;
pub mod crd;
pub mod k8s;
