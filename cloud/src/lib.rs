//! GCP provisioning for gateways: the `Cloud` trait, its REST implementation over reqwest and
//! gcp_auth, and the VM startup-script renderer. No Kubernetes dependency.
//!
//! The crate is a workspace member from the start so the dependency direction
//! (`operator -> cloud`) is fixed; its contents arrive with the GCP provisioning issue.
