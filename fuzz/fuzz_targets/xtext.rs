#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::xtext` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::xtext(data));
