//! Unit tests of `expect`.

use super::*;
use crate::QemuConfig;
use std::time::Duration;

fn run(status: RunStatus, output: &str) -> RunResult {
    RunResult {
        output: output.to_owned(),
        stderr: "qemu: warning".to_owned(),
        status,
        elapsed: Duration::from_secs(1),
        config: QemuConfig::new(),
        command: "qemu-system-x86_64 ...".to_owned(),
        line_times: Vec::new(),
    }
}

#[test]
fn passing_assertions() {
    let r = run(
        RunStatus::Passed,
        "[INFO  cpu0] kernel options: mode=demo\n",
    );
    assert_passed(&r);
    assert_contains(&r, "kernel options: mode=demo");
    assert_not_contains(&r, "PANIC");
    assert_eq!(
        assert_line(&r, "options", |l| l.ends_with("mode=demo")),
        "[INFO  cpu0] kernel options: mode=demo"
    );
    assert_tests_passed(&run(
        RunStatus::Passed,
        "test a::b ... ok\n1 passed, 0 failed, 0 skipped\n",
    ));
    assert_test_problem(&r, &TestRunProblem::NoSummary);
    assert_kernel_failed(&run(RunStatus::Failed(Some(35)), ""));
}

#[test]
fn failure_message_has_context() {
    let r = run(RunStatus::Failed(Some(0)), "line one\nline two\n");
    let message = std::panic::catch_unwind(|| assert_contains(&r, "absent"))
        .expect_err("must panic")
        .downcast::<String>()
        .expect("formatted message");
    assert!(message.contains("\"absent\""));
    assert!(message.contains("bios/4cpu/4G"));
    assert!(message.contains("line two"));
    assert!(message.contains("qemu: warning"));
}

#[test]
fn failed_test_fails_assertion() {
    let r = run(
        RunStatus::Passed,
        "test a::b ... FAILED: nope\n0 passed, 1 failed\n",
    );
    assert!(std::panic::catch_unwind(|| assert_tests_passed(&r)).is_err());
    let r = run(RunStatus::Failed(Some(0)), "");
    assert!(std::panic::catch_unwind(|| assert_kernel_failed(&r)).is_err());
}
