//! Kernel options baked into the boot image: the bootloader loads the image's ramdisk,
//! and when it starts with the line `mmk-options` the rest of its first line is the
//! options (`./run-qemu.sh image --opts "..."` writes such images). They serve where
//! QEMU's fw_cfg does not exist: on a real machine booted from a USB stick.
//!
//! The ramdisk is only mapped by the bootloader's page tables, so [`capture`] copies the
//! options out before the kernel loads its own.

use bootloader_api::BootInfo;
use spin::Once;

/// The first line of a ramdisk that holds kernel options.
const MAGIC: &[u8] = b"mmk-options\n";
/// Most option bytes kept.
pub const MAX_LEN: usize = 256;

static BAKED: Once<([u8; MAX_LEN], usize)> = Once::new();

/// Copy the baked options out of the ramdisk, if it holds some (boot CPU, while the
/// bootloader's page tables are loaded).
pub fn capture(boot_info: &BootInfo) {
    let Some(addr) = boot_info.ramdisk_addr.into_option() else {
        return;
    };
    let len = usize::try_from(boot_info.ramdisk_len)
        .unwrap_or(usize::MAX)
        .min(MAGIC.len() + MAX_LEN);
    // SAFETY: the bootloader maps the ramdisk's `ramdisk_len` bytes at `ramdisk_addr`
    // (read-only data it loaded), and its page tables are still the ones in CR3; only
    // the first `len` of those bytes are read.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        log::warn!("the boot image's ramdisk holds no kernel options (no `mmk-options` line)");
        return;
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(rest);
    let line = &line[..line.len().min(MAX_LEN)];
    let mut buf = [0u8; MAX_LEN];
    buf[..line.len()].copy_from_slice(line);
    BAKED.call_once(|| (buf, line.len()));
    log::info!(
        "kernel options baked into the boot image: {:?} (used unless fw_cfg gives some)",
        core::str::from_utf8(line).unwrap_or("<not utf-8>")
    );
}

/// Copy the baked options into `buf`; the number of bytes, or None if there are none.
pub fn read(buf: &mut [u8]) -> Option<usize> {
    let (baked, len) = BAKED.get()?;
    let n = (*len).min(buf.len());
    buf[..n].copy_from_slice(&baked[..n]);
    Some(n)
}
