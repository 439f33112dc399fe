//! Any bytes as a config file: refused with errors or loaded, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::LoadPolicy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let files = vec![("fuzz.yaml".to_string(), text)];
    if let Err(errors) = LoadPolicy::default().parse(&files) {
        // Every refusal says something.
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert!(!e.message.is_empty());
        }
    }
});
