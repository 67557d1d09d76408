#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzz::http_response(data));
