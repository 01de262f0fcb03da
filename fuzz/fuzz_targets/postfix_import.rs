#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::postfix_import` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::postfix_import(data));
