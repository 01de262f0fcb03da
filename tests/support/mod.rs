//! Real-socket helpers shared by the integration tests: each test file says `mod support;`.
#![allow(dead_code)]

pub mod child;
pub mod client;
pub mod dns_world;
pub mod https;
pub mod mx;
pub mod pki;
pub mod redis;
pub mod relay;
