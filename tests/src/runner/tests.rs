//! Unit tests of `runner`.

use super::*;
use crate::MemSize;

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn bios_command_line() {
    let config = QemuConfig::new()
        .images("/img")
        .smp(1)
        .mem(MemSize::mib(256).unwrap())
        .options("mode=test seed=3");
    let args = strings(&qemu_args(&config, None));
    let joined = args.join(" ");
    assert!(joined.starts_with("-drive format=raw,snapshot=on,file=/img/bios.img"));
    assert!(joined.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
    assert!(joined.contains("-m 256M -smp 1"));
    assert!(joined.contains("-no-reboot"));
    assert!(args.contains(&"name=opt/mmk/cmdline,string=mode=test seed=3".to_owned()));
    assert!(!args.contains(&"-S".to_owned()));
}

#[test]
fn uefi_command_line_with_gdb() {
    let config = QemuConfig::new()
        .images("/img")
        .firmware(Firmware::Uefi)
        .gdb(true)
        .options("filter=a,b");
    let args = strings(&qemu_args(
        &config,
        Some((Path::new("/code.fd"), Path::new("/tmp/vars.fd"))),
    ));
    let joined = args.join(" ");
    assert!(joined.contains("file=/img/uefi.img"));
    assert!(joined.contains("-drive if=pflash,format=raw,readonly=on,file=/code.fd"));
    assert!(joined.contains("-drive if=pflash,format=raw,snapshot=on,file=/tmp/vars.fd"));
    assert!(joined.ends_with("-s -S"));
    let plain = strings(&qemu_args(&QemuConfig::new(), None));
    assert!(
        !plain.contains(&"-fw_cfg".to_owned()),
        "empty options: no fw_cfg file"
    );
    assert!(args.contains(&"name=opt/mmk/cmdline,string=filter=a,,b".to_owned()));
}

fn result(status: RunStatus, output: &str) -> RunResult {
    RunResult {
        output: output.to_owned(),
        stderr: String::new(),
        status,
        elapsed: Duration::from_secs(3),
        config: QemuConfig::new().timeout(Duration::from_secs(60)),
        command: String::new(),
        line_times: Vec::new(),
    }
}

#[test]
fn test_durations_from_line_times() {
    let mut run = result(
        RunStatus::Passed,
        "[INFO  cpu0] booting\ntest a::fast ... ok\ntest a::slow ... [INFO  cpu1] x\nok\n",
    );
    run.line_times = [1, 2, 5, 9].map(Duration::from_secs).to_vec();
    assert_eq!(
        run.test_durations(),
        [
            ("a::fast".to_owned(), Duration::from_secs(1)),
            ("a::slow".to_owned(), Duration::from_secs(7)),
        ]
    );
}

#[test]
fn descriptions_say_what_happened() {
    let hung = result(
        RunStatus::TimedOut {
            last_test: Some("buddy::huge".into()),
            after: Duration::from_secs(60),
        },
        "test buddy::huge ... ",
    );
    assert_eq!(hung.hung(), Some("buddy::huge"));
    assert!(hung
        .describe()
        .starts_with("TIMEOUT: buddy::huge hung after 60 s"));
    // The per-test timeout names its own limit, not the run's.
    let one_test = result(
        RunStatus::TimedOut {
            last_test: Some("buddy::huge".into()),
            after: Duration::from_secs(15),
        },
        "test buddy::huge ... ",
    );
    assert!(one_test
        .describe()
        .starts_with("TIMEOUT: buddy::huge hung after 15 s"));

    let boot = result(
        RunStatus::TimedOut {
            last_test: None,
            after: Duration::from_secs(60),
        },
        "",
    );
    assert_eq!(boot.describe(), "TIMEOUT: boot hung after 60 s");

    let crashed = result(
        RunStatus::Failed(Some(QEMU_EXIT_FAILURE)),
        "test paging::split ... KERNEL PANIC: oops\n",
    );
    assert!(crashed.describe().contains("during test paging::split"));
    assert!(result(RunStatus::Failed(Some(0)), "")
        .describe()
        .contains("triple fault"));
    assert!(result(RunStatus::Passed, "").passed());
}

#[test]
fn a_test_run_passes_only_when_complete() {
    let clean = "test a::b ... ok\ntest a::c ... skipped: one CPU\n1 passed, 0 failed, 1 skipped\n";
    assert_eq!(result(RunStatus::Passed, clean).test_problems(), []);
    let problems = |status, output| result(status, output).test_problems();
    assert_eq!(
        problems(RunStatus::Passed, "test a::b ... ok\n"),
        [TestRunProblem::NoSummary]
    );
    assert_eq!(
        problems(RunStatus::Passed, "0 passed, 0 failed, 0 skipped\n"),
        [TestRunProblem::NoTests]
    );
    let lost = problems(RunStatus::Passed, "test a::b ... ok\n2 passed, 0 failed\n");
    assert!(matches!(&lost[..], [TestRunProblem::CountMismatch { .. }]));
    assert!(lost[0].to_string().contains("says 2 passed"));
    let crashed = problems(
        RunStatus::Failed(Some(QEMU_EXIT_FAILURE)),
        "test a::b ... ok\ntest a::c ... FAILED: panicked in a::c: boom\n",
    );
    assert_eq!(
        crashed,
        [
            TestRunProblem::FailedTests(vec![("a::c".into(), "panicked in a::c: boom".into())]),
            TestRunProblem::NotCleanExit(RunStatus::Failed(Some(QEMU_EXIT_FAILURE))),
            TestRunProblem::NoSummary,
        ]
    );
    assert_eq!(crashed[0].to_string(), "failed tests: a::c");
    let hung = problems(
        RunStatus::TimedOut {
            last_test: Some("a::c".into()),
            after: Duration::from_secs(60),
        },
        clean,
    );
    assert!(matches!(
        &hung[..],
        [TestRunProblem::NotCleanExit(RunStatus::TimedOut { .. })]
    ));
}

/// A watch over `output`, whose lines ended at `line_secs` into a run that started
/// `ago_secs` ago, with a per-test limit of `limit_secs`.
fn watch(output: &str, line_secs: &[u64], ago_secs: u64, limit_secs: u64) -> TestWatch {
    TestWatch {
        output: Arc::new(Mutex::new(output.as_bytes().to_vec())),
        line_times: Arc::new(Mutex::new(
            line_secs.iter().map(|&s| Duration::from_secs(s)).collect(),
        )),
        started: Instant::now()
            .checked_sub(Duration::from_secs(ago_secs))
            .expect("an instant that long ago"),
        limit: Duration::from_secs(limit_secs),
    }
}

#[test]
fn the_test_watch_counts_from_the_start_of_the_running_test() {
    let running = "[INFO  cpu0] booting\ntest a::fast ... ok\ntest a::slow ... ";
    // a::slow started when a::fast's line ended, 3 s in; 10 s have passed.
    assert!(watch(running, &[1, 3], 10, 5).overdue());
    assert!(!watch(running, &[1, 3], 10, 8).overdue());
    // A test on the very first line counts from the start of the run.
    assert!(watch("test a::first ... ", &[], 10, 9).overdue());
    // Nothing running: never overdue, however long the run.
    assert!(!watch("test a::fast ... ok\n", &[3], 100, 5).overdue());
    assert!(!watch("[INFO  cpu0] booting\n", &[1], 100, 5).overdue());
}

#[test]
fn shell_quoting() {
    assert_eq!(shell_quote("-m"), "-m");
    assert_eq!(
        shell_quote("name=opt/mmk/cmdline,string=mode=test seed=1"),
        "'name=opt/mmk/cmdline,string=mode=test seed=1'"
    );
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
}
