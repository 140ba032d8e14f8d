//! F13: any text as an admin's firewall rule (`netmux firewall add`, the configuration file's
//! rules): `pass|block in|out [quick] [on CLIENT] EXPR`, read as netd reads it
//! (`RuleText`'s `FromStr`) and its expression compiled as netd compiles it
//! (`netmux_netd::service::compile_rule`).
//!
//! Promises: never a panic; a refusal says what is wrong; a rule that reads is written back
//! (`Display`, as `netmux firewall list` and the configuration file show it) to text that reads
//! back to the same rule, and writes the same again; its expression compiles to a program the
//! VM's verifier accepts and that runs on any frame, or is refused with a message.

use netmux_proto::client::ops::RuleText;
use netmux_vm::{Engine, Interpreter};

/// F13's body.
pub fn firewall_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rule: RuleText = match text.parse() {
        Ok(rule) => rule,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a refusal says why");
            return;
        }
    };
    let written = rule.to_string();
    let back: RuleText = written
        .parse()
        .unwrap_or_else(|e| panic!("{written:?}, written from {text:?}, does not read: {e}"));
    assert_eq!(back, rule, "{written:?} reads back to another rule");
    assert_eq!(back.to_string(), written, "written twice, the same text");
    match netmux_netd::service::compile_rule(&rule.expr) {
        Ok(bytes) => {
            let program = netmux_vm::verify(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{:?} compiled to a program the verifier refuses: {e}",
                    rule.expr
                )
            });
            let vm = Interpreter::new(program);
            let _ = vm.run(data, u32::try_from(data.len()).unwrap_or(u32::MAX));
            let _ = vm.run(&[], 0);
        }
        Err(e) => assert!(!e.message.is_empty(), "a refused expression says why"),
    }
}
