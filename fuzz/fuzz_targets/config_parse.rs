//! Any bytes as a config file: refused with errors or loaded, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::LoadPolicy;

fuzz_target!(
    init: {
        // libfuzzer-sys's panic hook aborts on every panic, even one the code under test
        // catches; the parser catches serde_yaml_ng's own panics on purpose (config::model), so
        // the hook only reports. A panic that escapes still fails the run: libfuzzer-sys
        // aborts on any panic that reaches it.
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught or not): {info}")));
    },
    |data: &[u8]| {
        let text = String::from_utf8_lossy(data).into_owned();
        let files = vec![("fuzz.yaml".to_string(), text)];
        if let Err(errors) = LoadPolicy::default().parse(&files) {
            // Every refusal says something.
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(!e.message.is_empty());
            }
        }
    }
);
