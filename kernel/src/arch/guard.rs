//! The registry of stack guard pages: unmapped pages under each kernel stack, so that an
//! overflow is reported by name instead of silently corrupting memory or triple-faulting.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const MAX_GUARDS: usize = 256;

struct Slot {
    start: AtomicU64,
    end: AtomicU64,
    cpu: AtomicU64,
}

static SLOTS: [Slot; MAX_GUARDS] = [const {
    Slot {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
        cpu: AtomicU64::new(0),
    }
}; MAX_GUARDS];
static USED: AtomicUsize = AtomicUsize::new(0);

/// Who a guard page protects.
pub struct StackName {
    cpu: u64,
}

impl core::fmt::Display for StackName {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "the kernel stack of cpu {}", self.cpu)
    }
}

/// Remember that `[start, end)` is the guard of the stack of `cpu`. Returns false when
/// the registry is full (the guard page still protects; only the report is generic).
pub fn register(start: u64, end: u64, cpu: u64) -> bool {
    let i = USED.fetch_add(1, Ordering::AcqRel);
    let Some(slot) = SLOTS.get(i) else {
        return false;
    };
    slot.cpu.store(cpu, Ordering::Relaxed);
    slot.start.store(start, Ordering::Relaxed);
    slot.end.store(end, Ordering::Release);
    true
}

/// The stack whose guard page contains `addr`, if any.
pub fn owner_of(addr: u64) -> Option<StackName> {
    let used = USED.load(Ordering::Acquire).min(MAX_GUARDS);
    SLOTS[..used].iter().find_map(|s| {
        let end = s.end.load(Ordering::Acquire);
        (s.start.load(Ordering::Relaxed) <= addr && addr < end).then(|| StackName {
            cpu: s.cpu.load(Ordering::Relaxed),
        })
    })
}
