#![no_main]
//! Fuzz target: see `tlsrelay::fuzzing::smtp_reply` for what it feeds and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsrelay::fuzzing::smtp_reply(data));
