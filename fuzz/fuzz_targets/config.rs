#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::config_file(data));
