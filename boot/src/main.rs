//! Packs the kernel ELF into a BIOS and a UEFI disk image with the `bootloader` crate.
//!
//! `boot KERNEL_ELF OUT_DIR` writes `OUT_DIR/bios.img` and `OUT_DIR/uefi.img`. The same
//! images boot QEMU and real machines (write either to a USB stick with `dd`).

use bootloader::{BootConfig, DiskImageBuilder};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(kernel), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: boot KERNEL_ELF OUT_DIR");
        return ExitCode::from(2);
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
