#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::tlsrpt_record` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::tlsrpt_record(data));
