//! The one place the crate imports Kubernetes API types from, so a k8s-openapi upgrade
//! touches one module (the Kubernetes version feature is chosen in the workspace manifest).

pub use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
pub use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
pub use kube::{CustomResourceExt, Resource, ResourceExt};
