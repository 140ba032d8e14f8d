//! F8: any bytes as netd's configuration file (`--config FILE`, TOML: `[limits]`,
//! `[timeouts]`, `[[instance]]`), through exactly what netd does with it at start: parse it,
//! apply its limits and timeouts to a configuration, and turn every instance entry into an
//! instance request (checking its name, MAC, addresses and ports).
//!
//! Promises: never a panic, whatever the bytes; a refusal is an error that says what is wrong;
//! a file netd accepts is written back (as netd rewrites it when instances change) to text that
//! reads back to the same settings.

use netmux_netd::config::Config;
use netmux_netd::instance::InstancesFile;

/// The target's body.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file: InstancesFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal says why");
            return;
        }
    };
    let mut config = Config::new(std::path::PathBuf::from("/nonexistent/netmux-fuzz"));
    if let Err(e) = config.apply(file.limits.as_ref(), file.timeouts.as_ref()) {
        assert!(!e.to_string().is_empty(), "a refusal says why");
    }
    for entry in &file.instances {
        if let Err(e) = entry.spec() {
            assert!(!e.is_empty(), "a refused instance says why");
        }
    }
    let written = toml::to_string_pretty(&file).expect("an accepted file can be written back");
    let back: InstancesFile = toml::from_str(&written)
        .unwrap_or_else(|e| panic!("netd's own file does not read back: {e}\n{written}"));
    assert_eq!(
        back, file,
        "the file written back reads as the same settings"
    );
}
