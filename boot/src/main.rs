//! Packs the kernel ELF into a BIOS and a UEFI disk image with the `bootloader` crate.
//!
//! `boot KERNEL_ELF OUT_DIR [--opts "OPTIONS"]` writes `OUT_DIR/bios.img` and
//! `OUT_DIR/uefi.img`. The same images boot QEMU and real machines (write either to a USB
//! stick with `dd`). With `--opts`, the kernel options are baked into the images as the
//! bootloader's ramdisk (a file `OUT_DIR/kernel-options` holding the line
//! `mmk-options` and then the options): the kernel uses them when QEMU's fw_cfg gives
//! none, so a real machine runs e.g. the tests (`--opts "mode=test"`).

use bootloader::{BootConfig, DiskImageBuilder};
use std::path::PathBuf;
use std::process::ExitCode;

/// The first line of a ramdisk that holds kernel options (the kernel checks it).
const OPTIONS_MAGIC: &str = "mmk-options\n";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(kernel), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: boot KERNEL_ELF OUT_DIR [--opts \"OPTIONS\"]");
        return ExitCode::from(2);
    };
    let options = match (args.next(), args.next(), args.next()) {
        (None, _, _) => None,
        (Some(flag), Some(opts), None) if flag == "--opts" => match opts.into_string() {
            Ok(opts) if !opts.contains('\n') => Some(opts),
            _ => {
                eprintln!("boot: --opts wants one line of text");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: boot KERNEL_ELF OUT_DIR [--opts \"OPTIONS\"]");
            return ExitCode::from(2);
        }
    };
    let (kernel, out) = (PathBuf::from(kernel), PathBuf::from(out));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("boot: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let mut config = BootConfig::default();
    // The kernel owns the serial console; the bootloader stays quiet on it.
    config.serial_logging = false;
    config.frame_buffer_logging = true;
    let mut builder = DiskImageBuilder::new(kernel);
    builder.set_boot_config(&config);
    if let Some(options) = options {
        let file = out.join("kernel-options");
        if let Err(e) = std::fs::write(&file, format!("{OPTIONS_MAGIC}{options}\n")) {
            eprintln!("boot: cannot write {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        builder.set_ramdisk(file);
    }
    for (name, result) in [
        ("bios.img", builder.create_bios_image(&out.join("bios.img"))),
        ("uefi.img", builder.create_uefi_image(&out.join("uefi.img"))),
    ] {
        if let Err(e) = result {
            eprintln!("boot: creating {name} failed: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}", out.join("bios.img").display());
    println!("{}", out.join("uefi.img").display());
    ExitCode::SUCCESS
}
