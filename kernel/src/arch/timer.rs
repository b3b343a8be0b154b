//! Time: the TSC as a monotonic clock, calibrated once against the PIT, and a periodic
//! local APIC timer on every CPU.
//!
//! [`init`] runs on the boot CPU after its local APIC is up: it measures the TSC against
//! PIT channel 2 and the APIC timer against the TSC. Every CPU then calls
//! [`start_this_cpu`], which runs its APIC timer at [`HZ`]; each tick is counted in the
//! CPU's [`crate::percpu::PerCpu::ticks`]. [`now_ns`] and [`Deadline`] read the TSC.

use super::apic::{self, Reg, TIMER_VECTOR};
use crate::percpu;
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
/// Measurements taken of each calibration.
const CALIBRATION_ROUNDS: usize = 3;
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
    /// The local APIC timer did not count down during calibration.
    ApicTimerStopped,
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

/// TSC ticks during `count` counts of PIT channel 2 (one-shot, speaker off). Delays
/// (an emulator descheduling us) can only lengthen the measurement.
fn tsc_ticks_during_pit(count: u16) -> Result<u64, TimerError> {
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    let [lo, hi] = count.to_le_bytes();
    // SAFETY: port 0x61 bit 0 gates PIT channel 2 and bit 1 drives the speaker (kept
    // off); 0x43/0x42 program channel 2 only (mode 0, binary, low then high byte; it
    // starts counting once the high byte is written). Channel 2 has no other user.
    let start = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        command.write(0b1011_0000);
        channel2.write(lo);
        let start = tsc();
        channel2.write(hi);
        start
    };
    for _ in 0..PIT_MAX_POLLS {
        // SAFETY: reading port 0x61 has no side effect; bit 5 is channel 2's output.
        if unsafe { gate.read() } & 0x20 != 0 {
            return Ok(tsc() - start);
        }
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

/// Calibrate the TSC and the local APIC timer (boot CPU, local APIC enabled). Each is
/// measured a few times, keeping the measurement least disturbed by delays.
pub fn init() -> Result<(), TimerError> {
    let mut ticks = u64::MAX;
    for _ in 0..CALIBRATION_ROUNDS {
        ticks = ticks.min(tsc_ticks_during_pit(PIT_CALIBRATION_COUNT)?);
    }
    let hz = ticks * PIT_HZ / u64::from(PIT_CALIBRATION_COUNT);
    if hz == 0 {
        return Err(TimerError::TscStopped);
    }
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
    log::info!(
        "timer: TSC {} MHz, local APIC timer {} kHz (/16), {HZ} Hz ticks",
        hz / 1_000_000,
        apic_hz / 1000
    );
    Ok(())
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
