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
/// the guest's size, and the page-table layout with a W^X kernel image.
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
    assert_line(
        run,
        "a 2 MiB page migrated under a writer, contents intact",
        |l| {
            l.starts_with("migration demo: a Size2M page")
                && l.contains("still Size2M")
                && l.contains("contents intact")
                && l.contains("reverse map audit clean")
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
