//! Shared fixtures for the cloud crate's tests: they live in `wgnet-tests` so the
//! end-to-end tests there use the same ones.

#![allow(unused_imports)]

pub use wgnet_tests::fixtures::*;
