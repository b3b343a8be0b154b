//! What the CPU says it has (CPUID), read once and consulted before a feature is used:
//! 1 GiB pages (else the physical map and user mappings stop at 2 MiB), no-execute
//! (else no page is marked NX), x2APIC (else xAPIC), an invariant TSC, the TSC frequency
//! when leaves 0x15/0x16 give it, and the hypervisor's vendor (which says whether we run
//! under QEMU, and so whether QEMU's devices may be touched).

use core::arch::x86_64::__cpuid;
use spin::Once;

/// The CPUID facts the kernel acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
    pub page_1g: bool,
    /// The no-execute page bit (CPUID 0x8000_0001 EDX bit 20).
    pub nx: bool,
    /// x2APIC mode (CPUID 1 ECX bit 21).
    pub x2apic: bool,
    /// A local APIC at all (CPUID 1 EDX bit 9).
    pub apic: bool,
    /// The TSC runs at a constant rate in every state (CPUID 0x8000_0007 EDX bit 8).
    pub invariant_tsc: bool,
    /// TSC ticks per second as leaf 0x15 (crystal ratio) or, failing that, leaf 0x16
    /// (base MHz) states it.
    pub tsc_hz: Option<u64>,
    /// The hypervisor vendor of leaf 0x4000_0000, when CPUID 1 ECX bit 31 says there is
    /// one.
    pub hypervisor: Option<[u8; 12]>,
}

impl CpuFeatures {
    /// The hypervisor vendor as text, if there is one.
    pub fn hypervisor_name(&self) -> Option<&str> {
        let v = self.hypervisor.as_ref()?;
        let len = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        core::str::from_utf8(&v[..len]).ok()
    }
}

/// The four registers of a CPUID leaf, as read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leaf {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// The TSC frequency from leaf 0x15 (TSC/crystal ratio EBX/EAX times the crystal's ECX
/// Hz) or leaf 0x16 (EAX: base frequency in MHz); None when neither states it (zeros
/// mean "not enumerated").
pub fn tsc_hz_from_leaves(leaf15: Option<Leaf>, leaf16: Option<Leaf>) -> Option<u64> {
    let from15 = leaf15.and_then(|l| {
        (l.eax != 0 && l.ebx != 0 && l.ecx != 0)
            .then(|| u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax))
    });
    let from16 = leaf16.and_then(|l| {
        let mhz = l.eax & 0xFFFF;
        (mhz != 0).then(|| u64::from(mhz) * 1_000_000)
    });
    from15.filter(|&hz| hz > 0).or(from16)
}

fn leaf(n: u32) -> Leaf {
    let r = __cpuid(n);
    Leaf {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

fn detect() -> CpuFeatures {
    let max_basic = leaf(0).eax;
    let max_ext = leaf(0x8000_0000).eax;
    let basic = |n: u32| (n <= max_basic).then(|| leaf(n));
    let ext = |n: u32| (n <= max_ext).then(|| leaf(n));
    let l1 = basic(1).unwrap_or_default();
    let e1 = ext(0x8000_0001).unwrap_or_default();
    let e7 = ext(0x8000_0007).unwrap_or_default();
    let hypervisor = (l1.ecx & (1 << 31) != 0).then(|| {
        let h = leaf(0x4000_0000);
        let mut v = [0u8; 12];
        v[0..4].copy_from_slice(&h.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&h.ecx.to_le_bytes());
        v[8..12].copy_from_slice(&h.edx.to_le_bytes());
        v
    });
    CpuFeatures {
        page_1g: e1.edx & (1 << 26) != 0,
        nx: e1.edx & (1 << 20) != 0,
        x2apic: l1.ecx & (1 << 21) != 0,
        apic: l1.edx & (1 << 9) != 0,
        invariant_tsc: e7.edx & (1 << 8) != 0,
        tsc_hz: tsc_hz_from_leaves(basic(0x15), basic(0x16)),
        hypervisor,
    }
}

static FEATURES: Once<CpuFeatures> = Once::new();

/// The boot CPU's features (read on first use; every CPU of a machine reports the same).
pub fn features() -> &'static CpuFeatures {
    FEATURES.call_once(detect)
}

/// Print what was found.
pub fn report() {
    let f = features();
    let yes = |b: bool| if b { "yes" } else { "no" };
    log::info!(
        "CPU features: 1 GiB pages {}, NX {}, x2APIC {}, invariant TSC {}, CPUID TSC frequency {} kHz (0: not given), hypervisor {}",
        yes(f.page_1g),
        yes(f.nx),
        yes(f.x2apic),
        yes(f.invariant_tsc),
        f.tsc_hz.unwrap_or(0) / 1000,
        f.hypervisor_name().unwrap_or("none"),
    );
    match super::qemu_evidence() {
        Some(why) => log::info!("machine: QEMU ({why:?}); fw_cfg and the debug-exit port in use"),
        None => log::info!("machine: not QEMU; fw_cfg and the debug-exit port left alone"),
    }
}
