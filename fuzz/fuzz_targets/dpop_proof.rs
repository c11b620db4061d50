#![no_main]
// Coverage-guided (libFuzzer) target; the entry point and what it checks: src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bindgate::fuzzing::dpop_proof(data));
