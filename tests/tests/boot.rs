//! Boot the real disk images in QEMU and check what the kernel reports.
//!
//! Images come from `$MMK_IMAGES` (default `<repo>/target/images`; `./run-qemu.sh`
//! builds them). When they are missing these tests are skipped with a message, unless
//! `MMK_REQUIRE_IMAGES` is set (`./run-qemu.sh test` sets it), then they fail.
//!
//! Configurations cover both firmwares, 1 and 4 CPUs, 256 MiB and 8 GiB without the full
//! cross product. At most two QEMUs run at once (the runner's limit, `$MMK_QEMU_JOBS`);
//! `--test-threads=2` keeps the waiting threads down too. Each boot is killed after
//! `$MMK_BOOT_TIMEOUT` seconds (default 300).
//!
//! The `harness_selftest_*` tests boot the kernel with hidden `selftest=` options (a
//! suite with a failing, panicking, hanging or straggling test, a skip) or a filter that
//! matches nothing, through the `qemu-run` binary exactly as a test step of
//! `./run-qemu.sh test` runs it, and check that it fails naming the test. The hidden
//! `apfail=N` makes CPU N an AP that never answers, to check that bring-up goes on.
//!
//! To check more of the kernel's report, extend [`check_demo`] with
//! `expect::assert_contains(run, "...")` or `expect::assert_line(run, "...", |l| ...)`.

use boot_tests::expect::{
    assert_contains, assert_kernel_failed, assert_line, assert_not_contains, assert_passed,
};
use boot_tests::{default_images_dir, run, Firmware, MemSize, QemuConfig, RunResult};
use std::io::Write;
use std::time::Duration;

/// A configuration to boot, or `None` (after saying so) when the images are missing and
/// not required.
fn config(firmware: Firmware, smp: u32, mem: &str, options: &str) -> Option<QemuConfig> {
    let images = default_images_dir();
    let config = QemuConfig::new()
        .images(&images)
        .firmware(firmware)
        .smp(smp)
        .mem(
            mem.parse::<MemSize>()
                .expect("memory size in the test table"),
        )
        .options(options)
        .timeout(boot_timeout());
    if config.image_path().is_file() {
        return Some(config);
    }
    let required = std::env::var_os("MMK_REQUIRE_IMAGES").is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "MMK_REQUIRE_IMAGES is set but {} is missing (build the images: ./run-qemu.sh)",
        config.image_path().display()
    );
    // Straight to stderr, past libtest's capture, so the skip is visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {}: {} not found; run ./run-qemu.sh to build the images \
         (or set MMK_IMAGES; set MMK_REQUIRE_IMAGES=1 to make this a failure)",
        config.label(),
        config.image_path().display()
    );
    None
}

fn boot_timeout() -> Duration {
    let secs = std::env::var("MMK_BOOT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Boot and return the result; setup errors (no QEMU, no OVMF) fail the test.
fn boot(config: &QemuConfig) -> RunResult {
    match run(config) {
        Ok(result) => result,
        Err(error) => panic!("{}: cannot run QEMU: {error}", config.label()),
    }
}

/// What every demonstration run must show: the options, our own page tables loaded,
/// every CPU up, the memory map, the allocator's free areas with usable memory close to
/// the guest's size, the page-table layout with a W^X kernel image, and contiguity
/// generation on the scenario with every goal met.
fn check_demo(run: &RunResult, smp: u32, mem_mib: u64) {
    assert_passed(run);
    assert_line(run, "the kernel options (mode=demo)", |l| {
        l.contains("kernel options") && l.contains("mode=demo")
    });
    assert_contains(run, "on our own page tables");
    assert_line(run, "every CPU online", |l| {
        l.contains(&format!("CPUs: {smp} online"))
    });
    assert_contains(run, "memory map (");
    assert_contains(run, "free areas per order");
    assert_line(run, "free memory close to the guest size", |l| {
        l.strip_prefix("free frames: ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|frames| frames * 4 / 1024 > mem_mib * 3 / 4)
    });
    assert_contains(run, "kernel page tables (root");
    assert_line(run, "kernel text mapped read+execute", |l| {
        l.contains("r-x") && l.contains("kernel image")
    });
    assert_line(run, "kernel data mapped read+write, no execute", |l| {
        l.contains("rw-") && l.contains("kernel image")
    });
    assert_line(run, "the linear map uses huge pages", |l| {
        l.contains("physical memory map") && (l.contains("Size1G") || l.contains("Size2M"))
    });
    assert_line(run, "a CONTIG line per phase of each VMA", |l| {
        l.starts_with("CONTIG {\"phase\":\"after\"")
    });
    assert_line(
        run,
        "contiguity generation met every goal, contents intact",
        |l| {
            l.starts_with("contiguity demo (seed ")
                && l.contains("data of ")
                && l.contains(" pages intact")
                && l.ends_with("every goal met")
        },
    );
    assert_not_contains(run, "KERNEL PANIC");
    assert_not_contains(run, "[ERROR");
}

fn demo(firmware: Firmware, smp: u32, mem: &str) {
    let mem_mib = match mem.strip_suffix('G') {
        Some(g) => g.parse::<u64>().unwrap_or(0) * 1024,
        None => mem.trim_end_matches('M').parse::<u64>().unwrap_or(0),
    };
    if let Some(config) = config(firmware, smp, mem, "mode=demo") {
        check_demo(&boot(&config), smp, mem_mib);
    }
}

#[test]
fn bios_1cpu_256m_demo() {
    demo(Firmware::Bios, 1, "256M");
}

#[test]
fn bios_4cpu_8g_demo() {
    demo(Firmware::Bios, 4, "8G");
}

#[test]
fn uefi_4cpu_256m_demo() {
    demo(Firmware::Uefi, 4, "256M");
}

#[test]
fn uefi_1cpu_8g_demo() {
    demo(Firmware::Uefi, 1, "8G");
}

/// `mode=overflow` recurses until the kernel stack hits its guard page: the kernel must
/// report it and end the run as a failure (exit 35), never triple-fault (exit 0 under
/// `-no-reboot`) or hang.
///
/// EXPECTED TO FAIL until the kernel implements `mode=overflow` (issue 2): keep it.
#[test]
fn overflow_hits_guard_page_and_is_reported() {
    if let Some(config) = config(Firmware::Bios, 1, "256M", "mode=overflow") {
        let run = boot(&config);
        assert_kernel_failed(&run);
        assert_contains(&run, "KERNEL STACK OVERFLOW");
    }
}

/// How a `qemu-run` process ended: its exit code, the serial console it streamed and
/// its own messages.
struct Cli {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn context(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{}", self.context());
    }

    #[track_caller]
    fn assert_stderr(&self, needle: &str) {
        assert!(
            self.stderr.contains(needle),
            "expected qemu-run to say {needle:?}\n{}",
            self.context()
        );
    }

    #[track_caller]
    fn assert_stdout(&self, needle: &str, present: bool) {
        assert_eq!(
            self.stdout.contains(needle),
            present,
            "expected the serial output {} {needle:?}\n{}",
            if present {
                "to contain"
            } else {
                "not to contain"
            },
            self.context()
        );
    }
}

/// Boot `config` through the `qemu-run` binary, the way `./run-qemu.sh test` runs a
/// kernel test step (with `--tests` when `tests`).
fn qemu_run(config: &QemuConfig, tests: bool) -> Cli {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qemu-run"));
    command
        .arg("--images")
        .arg(&config.images)
        .args(["--smp", &config.smp.to_string()])
        .args(["--mem", &config.mem.to_string()])
        .args(["--timeout", &config.timeout.as_secs().to_string()])
        .args(["--opts", &config.options]);
    if let Some(limit) = config.test_timeout {
        command.args(["--test-timeout", &limit.as_secs().to_string()]);
    }
    if config.firmware == Firmware::Uefi {
        command.arg("--uefi");
    }
    if tests {
        command.arg("--tests");
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{}: cannot run qemu-run: {e}", config.label()));
    Cli {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A kernel test step with the hidden self-test suite `kind` (BIOS, `smp` CPUs, 256 MiB).
fn selftest_step(kind: &str, smp: u32, extra: &str) -> Option<Cli> {
    let options = format!("mode=test selftest={kind} {extra}");
    let config = config(Firmware::Bios, smp, "256M", options.trim())?;
    Some(qemu_run(&config, true))
}

#[test]
fn harness_selftest_a_failing_test_fails_the_step_by_name() {
    if let Some(cli) = selftest_step("fail", 1, "") {
        cli.assert_code(1);
        cli.assert_stderr("FAILED: selftest::fails: this self-test fails on purpose");
        cli.assert_stdout("test selftest::passes_after ... ok", true);
        cli.assert_stdout("2 passed, 1 failed, 0 skipped", true);
    }
}

#[test]
fn harness_selftest_a_panicking_test_fails_the_step_by_name() {
    if let Some(cli) = selftest_step("panic", 1, "") {
        cli.assert_code(1);
        cli.assert_stderr("FAILED: selftest::panics: panicked in selftest::panics");
        cli.assert_stderr("FAILED: no 'N passed, N failed, N skipped' summary line");
    }
}

#[test]
fn harness_selftest_a_hanging_test_times_out_by_name() {
    let Some(mut config) = config(Firmware::Bios, 1, "256M", "mode=test selftest=hang") else {
        return;
    };
    // The test's own timeout fires first; the run's is long enough for the boot to
    // reach the test on a loaded machine (a boot that is itself killed is named "boot"
    // instead, and fails this test).
    config.timeout = Duration::from_secs(150);
    config.test_timeout = Some(Duration::from_secs(10));
    let cli = qemu_run(&config, true);
    cli.assert_code(124);
    cli.assert_stderr("TIMEOUT: selftest::hangs hung after 10 s");
}

#[test]
fn harness_selftest_a_run_with_no_test_fails_the_step() {
    let Some(config) = config(Firmware::Bios, 1, "256M", "mode=test filter=no-such-test") else {
        return;
    };
    let cli = qemu_run(&config, true);
    cli.assert_code(1);
    cli.assert_stdout("tests: 0 selected", true);
    cli.assert_stderr("FAILED: no test ran (0 in the summary)");
}

#[test]
fn harness_selftest_work_left_on_another_cpu_fails_that_test_and_stops_the_run() {
    if let Some(cli) = selftest_step("straggler", 2, "") {
        cli.assert_code(1);
        cli.assert_stderr(
            "FAILED: selftest::leaves_work_running: work it started still runs on CPU [1]",
        );
        cli.assert_stdout("test selftest::passes_after", false);
    }
}

#[test]
fn harness_selftest_skips_are_counted_apart_and_noskip_makes_them_failures() {
    if let Some(cli) = selftest_step("skip", 1, "") {
        cli.assert_code(0);
        cli.assert_stdout(
            "test selftest::skips ... skipped: this self-test skips on purpose",
            true,
        );
        cli.assert_stdout("2 passed, 0 failed, 1 skipped", true);
        cli.assert_stderr("skipped selftest::skips: this self-test skips on purpose");
    }
    if let Some(cli) = selftest_step("skip", 1, "noskip=selftest::skips") {
        cli.assert_code(1);
        cli.assert_stderr("FAILED: selftest::skips: skipped where noskip= requires it to run");
    }
}

/// Bring-up continues past an AP that never answers: with the hidden `apfail=2` the
/// kernel sends CPU 2 no INIT/SIPI, its start timeout runs, it is reported by APIC ID,
/// the other three CPUs come up with their MADT indices (CPU 3 stays CPU 3) and the
/// `smp::` tests run on them and pass.
#[test]
fn bringup_continues_past_an_ap_that_never_answers() {
    let Some(config) = config(Firmware::Bios, 4, "256M", "mode=test apfail=2 filter=smp::") else {
        return;
    };
    let cli = qemu_run(&config, true);
    cli.assert_code(0);
    cli.assert_stdout(
        "CPU 2 (APIC ID 2) did not come up: no sign of life within 5000 ms",
        true,
    );
    cli.assert_stdout("CPUs: 3 online (APIC IDs [0, 1, 3])", true);
    cli.assert_stdout(
        "CPU bring-up: CPUs (index, APIC ID) [(2, 2)] did not come up",
        true,
    );
    cli.assert_stdout("test smp::all_madt_cpus_online ... ok", true);
    cli.assert_stdout("11 passed, 0 failed, 0 skipped", true);
}

/// A refused option ends the run as a failure before anything runs, in the demo as in
/// the tests (every kind of refusal and its reason is checked in the kernel, by
/// `options::every_bad_option_is_refused_with_its_reason`; one boot each would cost
/// the step a minute).
#[test]
fn unknown_mode_or_option_is_refused_with_failure() {
    for (options, why) in [
        ("mode=typo", "unknown mode \"typo\""),
        ("mode=demo frobnicate=1", "unknown option \"frobnicate\""),
        ("mode=test seed=x", "seed \"x\" is not a whole number"),
    ] {
        if let Some(config) = config(Firmware::Bios, 1, "256M", options) {
            let cli = qemu_run(&config, false);
            cli.assert_code(1);
            cli.assert_stdout(&format!("refused: {why}"), true);
            cli.assert_stdout("contiguity demo", false);
            cli.assert_stdout("tests: ", false);
        }
    }
}

#[test]
fn demo_that_finds_corruption_exits_with_failure() {
    if let Some(config) = config(Firmware::Bios, 2, "256M", "mode=demo selftest=corrupt") {
        let run = boot(&config);
        assert_kernel_failed(&run);
        assert_line(
            &run,
            "the demonstration's failure, naming the damage",
            |l| l.contains("demonstration FAILED") && l.contains("contents CORRUPTED"),
        );
    }
}
