//! wireguard-gateway-operator: the `wgnet.dev` API types and the controllers that
//! reconcile them.
//!
//! [`api`] holds the custom resource types whose generated schemas live in `crds/` (rendered
//! by [`crd`]). [`controller`] reconciles them against the API server and GCP; the decisions
//! it makes are pure functions in [`forwards`], [`keys`] and [`children`]. [`http`] serves
//! health and metrics; [`cli`] reads flags and environment.

pub mod api;
pub mod apiclient;
pub mod applied;
pub mod children;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod events;
pub mod forwards;
pub mod http;
pub mod k8s;
pub mod keys;
pub mod metrics;
pub mod policy;
