//! QEMU's firmware configuration device: carries the kernel options (`-fw_cfg name=opt/mmk/cmdline,string=...`) so that one disk image
//! can run the demonstration, the tests or the benchmarks without being rebuilt.
//!
//! Its I/O ports are only touched when the machine says it is QEMU
//! ([`super::is_qemu`]): elsewhere ports 0x510/0x511 may belong to another device.

use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
const SEL_SIGNATURE: u16 = 0x0000;
const SEL_FILE_DIR: u16 = 0x0019;
/// The fw_cfg file holding the kernel options.
pub const CMDLINE_FILE: &[u8] = b"opt/mmk/cmdline";

fn select(selector: u16) {
    // SAFETY: only called once `present` saw QEMU (CPUID or ACPI), whose PC machines have
    // the fw_cfg selector at port 0x510.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(selector) }
}

fn read_bytes(buf: &mut [u8]) {
    let mut data = Port::<u8>::new(DATA_PORT);
    for b in buf {
        // SAFETY: reading the fw_cfg data port has no side effect beyond advancing the
        // device's offset within the selected item.
        *b = unsafe { data.read() };
    }
}

/// Whether the machine is QEMU and its fw_cfg device answers with its signature.
pub fn present() -> bool {
    if !super::is_qemu() {
        return false;
    }
    select(SEL_SIGNATURE);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// Read the fw_cfg file `name` into `buf`; returns the number of bytes stored (the file
/// is truncated to `buf`), or None when not under QEMU or the file does not exist.
pub fn read_file(name: &[u8], buf: &mut [u8]) -> Option<usize> {
    if !present() {
        return None;
    }
    select(SEL_FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    for _ in 0..u32::from_be_bytes(count) {
        let mut entry = [0u8; 64];
        read_bytes(&mut entry);
        let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let selector = u16::from_be_bytes([entry[4], entry[5]]);
        let entry_name = &entry[8..];
        let len = entry_name.iter().position(|&b| b == 0).unwrap_or(56);
        if &entry_name[..len] == name {
            let n = size.min(buf.len());
            select(selector);
            read_bytes(&mut buf[..n]);
            return Some(n);
        }
    }
    None
}
