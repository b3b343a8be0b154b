//! Images with kernel options baked in (`boot KERNEL OUT --opts "..."`, what
//! `./run-qemu.sh image --opts` runs) boot WITHOUT fw_cfg options and run what they say:
//! the way the in-kernel tests run on a real machine from a USB stick.
//!
//! The test packs its own images, into cargo's temporary directory for tests, from the image builder
//! (`$MMK_BOOT_BIN`, default `<repo>/target/release/boot`) and the kernel ELF
//! (`$MMK_KERNEL_ELF`, default `<repo>/kernel/target/x86_64-target/release/kernel`);
//! `./run-qemu.sh` builds both. When they are missing the tests are skipped with a
//! message, unless `MMK_REQUIRE_IMAGES` is set, then they fail.

use boot_tests::expect::{assert_contains, assert_line, assert_not_contains, assert_passed};
use boot_tests::{run, Firmware, MemSize, QemuConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// What the images have baked in: a small test run, recognisable by its filter.
const BAKED: &str = "mode=test filter=smp::ipi seed=5";

fn repo_path(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(default)
        })
}

/// The directory holding the baked `bios.img` and `uefi.img`, packed once; None (after
/// saying so) when the builder or the kernel is missing and not required.
fn baked_images() -> Option<&'static PathBuf> {
    static IMAGES: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let boot = repo_path("MMK_BOOT_BIN", "target/release/boot");
            let kernel = repo_path(
                "MMK_KERNEL_ELF",
                "kernel/target/x86_64-target/release/kernel",
            );
            if !boot.is_file() || !kernel.is_file() {
                let required =
                    std::env::var_os("MMK_REQUIRE_IMAGES").is_some_and(|v| !v.is_empty());
                assert!(
                    !required,
                    "MMK_REQUIRE_IMAGES is set but {} or {} is missing (./run-qemu.sh builds them)",
                    boot.display(),
                    kernel.display()
                );
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED baked options: {} or {} not found; run ./run-qemu.sh to build them",
                    boot.display(),
                    kernel.display()
                );
                return None;
            }
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("baked-images");
            let status = Command::new(&boot)
                .arg(&kernel)
                .arg(&out)
                .args(["--opts", BAKED])
                .stdout(Stdio::null())
                .status()
                .expect("running the image builder");
            assert!(status.success(), "the image builder failed: {status}");
            Some(out)
        })
        .as_ref()
}

fn boot_baked(firmware: Firmware) {
    let Some(images) = baked_images() else {
        return;
    };
    let config = QemuConfig::new()
        .images(images)
        .firmware(firmware)
        .smp(2)
        .mem("1G".parse::<MemSize>().expect("a memory size"))
        .timeout(Duration::from_secs(300));
    assert!(
        config.options.is_empty(),
        "no fw_cfg options: the image must carry them"
    );
    let result =
        run(&config).unwrap_or_else(|e| panic!("{}: cannot run QEMU: {e}", config.label()));
    assert!(
        !result.command.contains("fw_cfg"),
        "QEMU was given fw_cfg: {}",
        result.command
    );
    assert_passed(&result);
    assert_line(&result, "the baked options", |l| {
        l.contains("baked into the boot image") && l.contains(BAKED)
    });
    assert_contains(&result, "test smp::ipi_all_but_self ... ok");
    assert_line(&result, "the test summary", |l| {
        l.ends_with("passed, 0 failed") || l.contains("passed, 0 failed,")
    });
    assert_not_contains(&result, "contiguity demo");
}

#[test]
fn a_bios_image_with_baked_options_runs_them_without_fw_cfg() {
    boot_baked(Firmware::Bios);
}

#[test]
fn a_uefi_image_with_baked_options_runs_them_without_fw_cfg() {
    boot_baked(Firmware::Uefi);
}

#[test]
fn fw_cfg_options_take_precedence_over_baked_ones() {
    let Some(images) = baked_images() else {
        return;
    };
    let config = QemuConfig::new()
        .images(images)
        .smp(1)
        .mem("256M".parse::<MemSize>().expect("a memory size"))
        .options("mode=test filter=timer::zero")
        .timeout(Duration::from_secs(300));
    let result =
        run(&config).unwrap_or_else(|e| panic!("{}: cannot run QEMU: {e}", config.label()));
    assert_passed(&result);
    assert_contains(
        &result,
        "test timer::zero_or_stuck_calibration_is_an_error ... ok",
    );
    assert_not_contains(&result, "test smp::ipi");
}
