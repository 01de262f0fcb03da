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

/// An address literal, parsed.
pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// SHA-256 of `b` (TLSA `3 1 1` data, SPKI pins).
pub fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}
