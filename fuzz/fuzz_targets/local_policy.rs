#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::local_policy` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::local_policy(data));
