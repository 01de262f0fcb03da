#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::data` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::data(data));
