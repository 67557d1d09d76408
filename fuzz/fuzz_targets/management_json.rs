#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::management_json(data));
