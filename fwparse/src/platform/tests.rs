//! Unit tests of `platform`.

use super::*;

#[test]
fn only_qemu_vendors_or_oem_count() {
    assert_eq!(
        qemu_evidence(Some(b"TCGTCGTCGTCG"), None),
        Some(QemuEvidence::Hypervisor)
    );
    assert_eq!(
        qemu_evidence(Some(b"KVMKVMKVM\0\0\0"), Some(b"ALASKA")),
        Some(QemuEvidence::Hypervisor)
    );
    assert_eq!(
        qemu_evidence(None, Some(b"BOCHS ")),
        Some(QemuEvidence::AcpiOem)
    );
    // Real firmware, other hypervisors, nothing at all: not QEMU.
    assert_eq!(qemu_evidence(None, Some(b"ALASKA")), None);
    assert_eq!(qemu_evidence(Some(b"Microsoft Hv"), Some(b"VRTUAL")), None);
    assert_eq!(qemu_evidence(Some(b"VMwareVMware"), None), None);
    assert_eq!(qemu_evidence(None, None), None);
}
