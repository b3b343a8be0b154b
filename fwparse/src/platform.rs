//! Whether the machine is QEMU, from what it says about itself: the CPUID hypervisor
//! vendor (leaf 0x4000_0000) and the OEM id of the ACPI RSDP. QEMU's I/O devices (fw_cfg,
//! the debug-exit port) may only be touched when one of them says so.

/// Hypervisor vendors that are QEMU (its TCG emulator, or KVM under QEMU).
pub const QEMU_VENDORS: [&[u8; 12]; 2] = [b"TCGTCGTCGTCG", b"KVMKVMKVM\0\0\0"];
/// The OEM id QEMU's ACPI tables carry (under SeaBIOS and OVMF alike).
pub const QEMU_ACPI_OEM: &[u8; 6] = b"BOCHS ";

/// Why the machine counts as QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuEvidence {
    /// The CPUID hypervisor leaf names TCG or KVM.
    Hypervisor,
    /// The ACPI RSDP's OEM id is QEMU's.
    AcpiOem,
}

/// Whether the hypervisor vendor (None: CPUID says no hypervisor) or the RSDP OEM id
/// (None: no RSDP) says QEMU.
pub fn qemu_evidence(vendor: Option<&[u8; 12]>, oem: Option<&[u8; 6]>) -> Option<QemuEvidence> {
    if vendor.is_some_and(|v| QEMU_VENDORS.contains(&v)) {
        Some(QemuEvidence::Hypervisor)
    } else if oem == Some(QEMU_ACPI_OEM) {
        Some(QemuEvidence::AcpiOem)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
