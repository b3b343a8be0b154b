//! Time: the TSC as a monotonic clock, calibrated once, and a periodic local APIC timer
//! on every CPU.
//!
//! [`init`] runs on the boot CPU after its local APIC is up. The TSC's frequency comes
//! from the first source that gives one ([`TscSource`]): CPUID leaves 0x15/0x16 when
//! they state it, else a measurement against the HPET or the ACPI PM timer (both from the
//! ACPI tables), else against PIT channel 2. A source that fails is reported and the
//! next one tried; when none gives a non-zero frequency, [`init`] fails and the kernel
//! stops rather than run with a timer of zero. The APIC timer is measured against the
//! TSC. Every CPU then calls
//! [`start_this_cpu`], which runs its APIC timer at [`HZ`]; each tick is counted in the
//! CPU's [`crate::arch::percpu::PerCpu::ticks`]. [`now_ns`] and [`Deadline`] read the TSC.

use super::apic::{self, Reg, TIMER_VECTOR};
use super::MapRegisters;
use crate::arch::percpu;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use x86_64::instructions::port::Port;
use x86_64::structures::idt::InterruptStackFrame;

/// APIC timer interrupts per second on each CPU.
pub const HZ: u64 = 100;

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// PIT counts in the TSC calibration window (50 ms).
const PIT_CALIBRATION_COUNT: u16 = 59_659;
/// Polls of the PIT output before calibration gives up.
const PIT_MAX_POLLS: u64 = 100_000_000;
/// Measurements taken of each calibration (odd: the median is one of them).
const CALIBRATION_ROUNDS: usize = 5;
/// PIT rounds, the most closely bracketed, whose median is taken (odd, at most
/// [`CALIBRATION_ROUNDS`]).
const PIT_KEPT_ROUNDS: usize = 3;
/// Length of the APIC timer calibration window.
const APIC_CALIBRATION_US: u64 = 20_000;

/// TSC ticks per second; 0 until [`init`].
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// TSC value at calibration: time zero of [`now_ns`].
static TSC_ORIGIN: AtomicU64 = AtomicU64::new(0);
/// APIC timer initial count (divide by 16) for one period of 1/HZ s.
static APIC_PERIOD: AtomicU32 = AtomicU32::new(0);

/// Why calibration failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerError {
    /// PIT channel 2 never reached terminal count (no PIT?).
    PitStuck,
    /// The TSC did not advance during calibration.
    TscStopped,
    /// The reference counter did not advance during calibration.
    ReferenceStopped,
    /// The ACPI tables name no such timer (or could not be read).
    NotDescribed,
    /// The timer's registers could not be mapped.
    Unmapped,
    /// The measurement gave a TSC frequency outside 1 MHz - 100 GHz.
    Implausible(u64),
    /// No source gave a TSC frequency (each one's failure was reported).
    NoSource,
    /// The local APIC timer did not count down during calibration.
    ApicTimerStopped,
}

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15 or 0x16.
    Cpuid,
    /// Measured against the HPET main counter.
    Hpet,
    /// Measured against the ACPI PM timer (3.579545 MHz).
    PmTimer,
    /// Measured against PIT channel 2 (1.193182 MHz).
    Pit,
}

pub mod tests;

/// The ACPI PM timer's frequency.
const PM_TIMER_HZ: u64 = 3_579_545;
/// HPET register offsets: capabilities (period in fs in bits 63:32), configuration
/// (bit 0: counter enabled), main counter.
const HPET_CAPABILITIES: u64 = 0x00;
const HPET_CONFIG: u64 = 0x10;
const HPET_COUNTER: u64 = 0xF0;
/// Length of a measurement against the HPET or the PM timer.
const REFERENCE_WINDOW_US: u64 = 50_000;
/// Reads of a reference counter, each between two TSC reads, of which the closest
/// bracketed one is kept.
const PAIRED_READ_TRIES: usize = 8;
/// Polls of a reference counter before a measurement gives up.
const REFERENCE_MAX_POLLS: u64 = 10_000_000;
/// TSC frequencies believed.
const PLAUSIBLE_HZ: core::ops::RangeInclusive<u64> = 1_000_000..=100_000_000_000;

/// A free-running counter of known frequency the TSC can be measured against.
pub(crate) struct Reference {
    /// Which one it is.
    pub source: TscSource,
    /// Ticks per second.
    pub hz: u64,
    /// Counter width mask (it wraps at `mask + 1`).
    mask: u64,
    read: ReadCounter,
}

enum ReadCounter {
    /// A 32-bit I/O port.
    Port(u16),
    /// A 64-bit (or 32-bit) MMIO register, mapped uncached.
    Mmio(*const u64, bool),
}

impl Reference {
    fn read(&self) -> u64 {
        let v = match self.read {
            // SAFETY: the port is the PM timer's, as the FADT gives it; reading it has no
            // side effect.
            ReadCounter::Port(port) => u64::from(unsafe { Port::<u32>::new(port).read() }),
            // SAFETY: the HPET's main counter, mapped uncached by `hpet`; reads have no
            // side effect.
            ReadCounter::Mmio(p, wide) => unsafe {
                if wide {
                    p.read_volatile()
                } else {
                    u64::from(p.cast::<u32>().read_volatile())
                }
            },
        };
        v & self.mask
    }

    /// The counter and the TSC at the moment it was read: of [`PAIRED_READ_TRIES`] reads,
    /// the one with the TSC read closest before and after it, and the middle of those two
    /// TSC values. A delay between the TSC and the counter (an emulator descheduled, or
    /// waiting for its device lock) would skew the pair by as much as it lasted.
    fn read_with_tsc(&self) -> (u64, u64) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..PAIRED_READ_TRIES {
            let before = tsc();
            let count = self.read();
            let width = tsc().wrapping_sub(before);
            if width < best.0 {
                best = (width, count, before.wrapping_add(width / 2));
            }
        }
        (best.1, best.2)
    }
}

/// TSC ticks per second from `tsc_ticks` counted while a reference of `ref_hz` counted
/// `ref_ticks`; a count of zero on either side, or an implausible result, is an error.
pub fn tsc_hz_from(tsc_ticks: u64, ref_ticks: u64, ref_hz: u64) -> Result<u64, TimerError> {
    if tsc_ticks == 0 {
        return Err(TimerError::TscStopped);
    }
    if ref_ticks == 0 || ref_hz == 0 {
        return Err(TimerError::ReferenceStopped);
    }
    let hz = u128::from(tsc_ticks) * u128::from(ref_hz) / u128::from(ref_ticks);
    let hz = u64::try_from(hz).unwrap_or(u64::MAX);
    if PLAUSIBLE_HZ.contains(&hz) {
        Ok(hz)
    } else {
        Err(TimerError::Implausible(hz))
    }
}

/// Measure the TSC against `r` over [`REFERENCE_WINDOW_US`], each end a paired read
/// ([`Reference::read_with_tsc`]).
pub(crate) fn measure_against(r: &Reference) -> Result<u64, TimerError> {
    let window = r.hz * REFERENCE_WINDOW_US / 1_000_000;
    let (ref0, tsc0) = r.read_with_tsc();
    for _ in 0..REFERENCE_MAX_POLLS {
        if r.read().wrapping_sub(ref0) & r.mask >= window {
            let (ref1, tsc1) = r.read_with_tsc();
            let elapsed = ref1.wrapping_sub(ref0) & r.mask;
            return tsc_hz_from(tsc1.wrapping_sub(tsc0), elapsed, r.hz);
        }
    }
    Err(TimerError::ReferenceStopped)
}

/// The median of [`CALIBRATION_ROUNDS`] measurements against `r`: a delay that the paired
/// reads cannot avoid skews one round, up or down, not the median.
pub(crate) fn median_against(r: &Reference) -> Result<u64, TimerError> {
    let mut hz = [0; CALIBRATION_ROUNDS];
    for slot in &mut hz {
        *slot = measure_against(r)?;
    }
    hz.sort_unstable();
    Ok(hz[CALIBRATION_ROUNDS / 2])
}

/// The HPET, from the ACPI tables, with its counter running.
/// `map` maps its registers (see [`MapRegisters`]).
pub(crate) fn hpet(rsdp: Option<u64>, map: MapRegisters) -> Result<Reference, TimerError> {
    let tables = super::acpi::tables_at(rsdp).ok_or(TimerError::NotDescribed)?;
    let info = acpi::HpetInfo::new(&tables).map_err(|_| TimerError::NotDescribed)?;
    let base = map(
        x86_64::PhysAddr::new_truncate(info.base_address as u64),
        0x100,
    )
    .ok_or(TimerError::Unmapped)?;
    let reg = |off: u64| (base + off).as_mut_ptr::<u64>();
    // SAFETY: the HPET's registers, mapped uncached above; setting the enable bit of the
    // configuration register starts its main counter and changes nothing else.
    let caps = unsafe {
        let caps = reg(HPET_CAPABILITIES).read_volatile();
        let config = reg(HPET_CONFIG).read_volatile();
        reg(HPET_CONFIG).write_volatile(config | 1);
        caps
    };
    let period_fs = caps >> 32;
    if period_fs == 0 || period_fs > 100_000_000 {
        return Err(TimerError::NotDescribed);
    }
    let wide = caps & (1 << 13) != 0;
    Ok(Reference {
        source: TscSource::Hpet,
        hz: 1_000_000_000_000_000 / period_fs,
        mask: if wide { u64::MAX } else { u64::from(u32::MAX) },
        read: ReadCounter::Mmio(reg(HPET_COUNTER), wide),
    })
}

/// The ACPI PM timer, from the FADT (I/O-port timers only).
pub(crate) fn pm_timer(rsdp: Option<u64>) -> Result<Reference, TimerError> {
    let tables = super::acpi::tables_at(rsdp).ok_or(TimerError::NotDescribed)?;
    let fadt = tables
        .find_table::<acpi::sdt::fadt::Fadt>()
        .ok_or(TimerError::NotDescribed)?;
    let block = fadt
        .get()
        .pm_timer_block()
        .ok()
        .flatten()
        .ok_or(TimerError::NotDescribed)?;
    let flags = { fadt.get().flags };
    let port = u16::try_from(block.address).map_err(|_| TimerError::NotDescribed)?;
    if block.address_space != acpi::address::AddressSpace::SystemIo {
        return Err(TimerError::NotDescribed);
    }
    Ok(Reference {
        source: TscSource::PmTimer,
        hz: PM_TIMER_HZ,
        mask: if flags.pm_timer_is_32_bit() {
            u64::from(u32::MAX)
        } else {
            (1 << 24) - 1
        },
        read: ReadCounter::Port(port),
    })
}

/// The TSC frequency measured against PIT channel 2, from [`CALIBRATION_ROUNDS`] rounds:
/// the median of the [`PIT_KEPT_ROUNDS`] whose ends the TSC brackets most closely. A
/// round whose polls were slow (wide brackets) is dropped; one disturbed inside its
/// window, where no bracket can see it, is outvoted.
pub(crate) fn measure_against_pit() -> Result<u64, TimerError> {
    let mut rounds = [PitRound {
        ticks: 0,
        uncertainty: 0,
    }; CALIBRATION_ROUNDS];
    for slot in &mut rounds {
        *slot = tsc_ticks_during_pit(PIT_CALIBRATION_COUNT)?;
    }
    rounds.sort_unstable_by_key(|r| r.uncertainty);
    let mut kept = [0; PIT_KEPT_ROUNDS];
    for (k, r) in kept.iter_mut().zip(&rounds) {
        *k = r.ticks;
    }
    kept.sort_unstable();
    tsc_hz_from(
        kept[PIT_KEPT_ROUNDS / 2],
        u64::from(PIT_CALIBRATION_COUNT),
        PIT_HZ,
    )
}

/// The TSC frequency from the first source that gives one, each failure reported.
fn calibrate_tsc(rsdp: Option<u64>, map: MapRegisters) -> Result<(TscSource, u64), TimerError> {
    if let Some(hz) = super::cpuid::features()
        .tsc_hz
        .filter(|hz| PLAUSIBLE_HZ.contains(hz))
    {
        return Ok((TscSource::Cpuid, hz));
    }
    for reference in [hpet(rsdp, map), pm_timer(rsdp)] {
        let measured = reference.and_then(|r| Ok((r.source, median_against(&r)?)));
        match measured {
            Ok(found) => return Ok(found),
            Err(e) => log::warn!("timer: a TSC reference failed: {e:?}"),
        }
    }
    match measure_against_pit() {
        Ok(hz) => Ok((TscSource::Pit, hz)),
        Err(e) => {
            log::error!("timer: the PIT failed too: {e:?}");
            Err(TimerError::NoSource)
        }
    }
}

/// The time-stamp counter.
pub fn tsc() -> u64 {
    // SAFETY: RDTSC is available on every x86_64 CPU and only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per second (0 before [`init`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since calibration (0 before [`init`]). Monotonic on each CPU.
pub fn now_ns() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let elapsed = tsc().saturating_sub(TSC_ORIGIN.load(Ordering::Relaxed));
    (u128::from(elapsed) * 1_000_000_000 / u128::from(hz)) as u64
}

/// A point in time to wait for, on the TSC.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    tsc: u64,
}

impl Deadline {
    /// `us` microseconds from now.
    pub fn after_us(us: u64) -> Deadline {
        let ticks = u128::from(us) * u128::from(tsc_hz()) / 1_000_000;
        Deadline {
            tsc: tsc().saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX)),
        }
    }

    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Deadline {
        Deadline::after_us(ms.saturating_mul(1000))
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        tsc() >= self.tsc
    }
}

/// Spin for `us` microseconds.
pub fn delay_us(us: u64) {
    let deadline = Deadline::after_us(us);
    while !deadline.expired() {
        core::hint::spin_loop();
    }
}

/// One measurement against the PIT: TSC ticks from the middle of the TSC reads around
/// the start to the middle of those around the end, and how far apart each pair was,
/// summed: the most the measurement can be off by, unless disturbed in between.
#[derive(Clone, Copy, Debug)]
struct PitRound {
    ticks: u64,
    uncertainty: u64,
}

/// TSC ticks during `count` counts of PIT channel 2 (one-shot, speaker off). The count
/// starts between the TSC reads around the write of its high byte, and ends between the
/// last poll that saw the output low and the first that saw it high.
fn tsc_ticks_during_pit(count: u16) -> Result<PitRound, TimerError> {
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    let [lo, hi] = count.to_le_bytes();
    // SAFETY: port 0x61 bit 0 gates PIT channel 2 and bit 1 drives the speaker (kept
    // off); 0x43/0x42 program channel 2 only (mode 0, binary, low then high byte; it
    // starts counting once the high byte is written). Channel 2 has no other user.
    let (start0, start1) = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        command.write(0b1011_0000);
        channel2.write(lo);
        let before = tsc();
        channel2.write(hi);
        (before, tsc())
    };
    let mut last_low = start1;
    for _ in 0..PIT_MAX_POLLS {
        let before = tsc();
        // SAFETY: reading port 0x61 has no side effect; bit 5 is channel 2's output.
        let high = unsafe { gate.read() } & 0x20 != 0;
        let after = tsc();
        if high {
            let start = start0.wrapping_add(start1.wrapping_sub(start0) / 2);
            let end = last_low.wrapping_add(after.wrapping_sub(last_low) / 2);
            return Ok(PitRound {
                ticks: end.wrapping_sub(start),
                uncertainty: start1.wrapping_sub(start0) + after.wrapping_sub(last_low),
            });
        }
        last_low = before;
    }
    Err(TimerError::PitStuck)
}

/// Local APIC timer counts (divide by 16) per second, measured on the TSC (`tsc_hz`).
/// Delays can only shorten the count against the TSC interval.
fn apic_timer_hz(tsc_hz: u64) -> u64 {
    let start = tsc();
    apic::set_timer(TIMER_VECTOR, u32::MAX, false, true);
    delay_us(APIC_CALIBRATION_US);
    let counted = u32::MAX - apic::read(Reg::TimerCurrent);
    let elapsed = tsc() - start;
    apic::set_timer(TIMER_VECTOR, 0, false, true);
    u64::from(counted) * tsc_hz / elapsed.max(1)
}

/// Calibrate the TSC (see the module doc for its sources) and the local APIC timer
/// (boot CPU, local APIC enabled, `rsdp` the ACPI RSDP if any). The APIC timer is
/// measured a few times, keeping the measurement least disturbed by delays. `map` maps
/// the registers of a timer that needs it (the HPET).
pub fn init(rsdp: Option<u64>, map: MapRegisters) -> Result<TscSource, TimerError> {
    let (source, hz) = calibrate_tsc(rsdp, map)?;
    TSC_ORIGIN.store(tsc(), Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);

    let apic_hz = (0..CALIBRATION_ROUNDS)
        .map(|_| apic_timer_hz(hz))
        .max()
        .unwrap_or(0);
    let period = u32::try_from(apic_hz / HZ).unwrap_or(u32::MAX);
    if period == 0 {
        return Err(TimerError::ApicTimerStopped);
    }
    APIC_PERIOD.store(period, Ordering::Relaxed);
    let invariant = if super::cpuid::features().invariant_tsc {
        "invariant"
    } else {
        "not invariant (its rate may change with power states)"
    };
    log::info!(
        "timer: TSC {} MHz from {source:?}, {invariant}; local APIC timer {} kHz (/16), {HZ} Hz ticks",
        hz / 1_000_000,
        apic_hz / 1000
    );
    Ok(source)
}

/// Start the running CPU's periodic APIC timer (after [`init`]).
pub fn start_this_cpu() {
    apic::set_timer(
        TIMER_VECTOR,
        APIC_PERIOD.load(Ordering::Relaxed),
        true,
        false,
    );
}

/// Timer interrupts the running CPU has taken.
pub fn ticks() -> u64 {
    percpu::current().ticks()
}

/// The APIC timer's interrupt handler.
pub extern "x86-interrupt" fn interrupt(_frame: InterruptStackFrame) {
    percpu::current().count_tick();
    apic::eoi();
}
