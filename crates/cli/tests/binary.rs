//! The CLI binary starts and describes itself. Its behaviour against a real daemon
//! is tested with the daemon's integration tests (`crates/daemon/tests/cli.rs`),
//! which find this binary next to the daemon's; this test is also what makes a
//! workspace `cargo test` build it.

use std::process::Command;

#[test]
fn the_binary_prints_its_version_and_its_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_automation-framework"))
        .arg("--help")
        .output()
        .expect("run automation-framework --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["status", "admit", "report", "budget", "session", "bench"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}
