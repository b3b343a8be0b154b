//! The shootdown protocol with host threads as CPUs and a simulated TLB per CPU.
//!
//! Every thread reads pages through its own TLB (filling it from a shared page table on
//! a miss) and now and then remaps a page to a new frame, shoots the old translation
//! down on all CPUs, and marks the old frame freed. Interrupts are simulated: a thread
//! serves its mailbox whenever its IPI flag is set, between accesses, as a CPU takes an
//! interrupt between instructions. The property: no thread ever reaches a freed frame
//! through its TLB, every request is served, and nothing hangs.

use mm::backend::shootdown::{
    CpuSet, FlushBatch, Mailboxes, ShootdownError, TlbArch, FULL_FLUSH_THRESHOLD, MAX_CPUS,
};
use mm::base::addr::PageSize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const PAGES: u64 = 64;
const USER_BASE: u64 = 0x4000_0000;
const KERNEL_BASE: u64 = 0xFFFF_C000_0000_0000;

struct Machine {
    mail: Mailboxes,
    ipi: Vec<AtomicBool>,
    tlb: Vec<Mutex<HashMap<u64, u64>>>,
    /// Page table: va index -> frame id (0 = unmapped).
    pt: Vec<AtomicU64>,
    freed: Vec<AtomicBool>,
    next_frame: AtomicU64,
    stale_uses: AtomicU64,
    shootdowns: AtomicU64,
    ipis: AtomicU64,
}

struct Cpu<'a> {
    m: &'a Machine,
    id: usize,
}

impl TlbArch for Cpu<'_> {
    fn this_cpu(&self) -> u32 {
        self.id as u32
    }

    fn send_ipi(&self, targets: CpuSet) {
        for t in targets.iter() {
            self.m.ipi[t as usize].store(true, Ordering::SeqCst);
            self.m.ipis.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_local(&self, batch: &FlushBatch) {
        let mut tlb = self.m.tlb[self.id].lock().unwrap();
        if batch.is_full() {
            tlb.clear();
        } else {
            for &(va, _) in batch.pages() {
                tlb.remove(&va);
            }
        }
    }

    fn relax(&self) {
        // Host threads outnumber the cores: let the targets run.
        std::thread::yield_now();
    }
}

fn va_of(page: u64) -> u64 {
    if page % 2 == 0 {
        USER_BASE + page * 4096
    } else {
        KERNEL_BASE + page * 4096
    }
}

impl Machine {
    fn new(cpus: usize, max_frames: u64) -> Machine {
        let m = Machine {
            mail: Mailboxes::new(),
            ipi: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            tlb: (0..cpus).map(|_| Mutex::new(HashMap::new())).collect(),
            pt: (0..PAGES).map(|p| AtomicU64::new(p + 1)).collect(),
            freed: (0..max_frames).map(|_| AtomicBool::new(false)).collect(),
            next_frame: AtomicU64::new(PAGES + 1),
            stale_uses: AtomicU64::new(0),
            shootdowns: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
        };
        for c in 0..cpus {
            m.mail.set_online(c as u32);
        }
        m
    }

    /// One simulated access through the TLB of `cpu`.
    fn access(&self, cpu: usize, page: u64) {
        let va = va_of(page);
        let mut tlb = self.tlb[cpu].lock().unwrap();
        let frame = match tlb.get(&va) {
            Some(&f) => f,
            None => {
                let f = self.pt[page as usize].load(Ordering::SeqCst);
                tlb.insert(va, f);
                f
            }
        };
        if self.freed[frame as usize].load(Ordering::SeqCst) {
            self.stale_uses.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn interrupt_point(m: &Machine, cpu: &Cpu) {
    if m.ipi[cpu.id].swap(false, Ordering::SeqCst) {
        m.mail.serve(cpu);
    }
}

fn run(cpus: usize, remaps_per_cpu: u64, seed: u64) -> Arc<Machine> {
    let max_frames = PAGES + 2 + cpus as u64 * remaps_per_cpu;
    let m = Arc::new(Machine::new(cpus, max_frames));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..cpus)
        .map(|id| {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                let cpu = Cpu { m: &m, id };
                let mut x = seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut rand = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut remaps = 0;
                while remaps < remaps_per_cpu {
                    interrupt_point(&m, &cpu);
                    let r = rand();
                    let page = rand() % PAGES;
                    if r % 8 != 0 {
                        m.access(id, page);
                        continue;
                    }
                    let new = m.next_frame.fetch_add(1, Ordering::SeqCst);
                    let old = m.pt[page as usize].swap(new, Ordering::SeqCst);
                    let mut batch = FlushBatch::new();
                    match (r >> 8) % 5 {
                        0 => batch.set_full(page % 2 == 1),
                        _ => batch.add_page(va_of(page), PageSize::Size4K),
                    }
                    let all: CpuSet = (0..cpus as u32).collect();
                    m.mail
                        .shootdown(&cpu, all, &batch)
                        .expect("valid shootdown");
                    m.shootdowns.fetch_add(1, Ordering::Relaxed);
                    m.freed[old as usize].store(true, Ordering::SeqCst);
                    remaps += 1;
                }
                done.fetch_add(1, Ordering::SeqCst);
                // Keep serving until every CPU is done, as a real CPU keeps taking IPIs.
                while done.load(Ordering::SeqCst) < cpus {
                    interrupt_point(&m, &cpu);
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("cpu thread panicked");
    }
    m
}

#[test]
fn no_cpu_uses_a_freed_frame_after_shootdown() {
    for cpus in [2, 4, 8] {
        let m = run(cpus, 3000, cpus as u64);
        assert_eq!(
            m.stale_uses.load(Ordering::Relaxed),
            0,
            "{cpus} cpus: stale use"
        );
        assert_eq!(m.shootdowns.load(Ordering::Relaxed), cpus as u64 * 3000);
    }
}

#[test]
fn stress_100k_shootdowns_from_random_initiators_on_4_cpus() {
    let m = run(4, 25_000, 42);
    assert_eq!(m.shootdowns.load(Ordering::Relaxed), 100_000);
    assert_eq!(m.stale_uses.load(Ordering::Relaxed), 0);
    let served: u64 = (0..4u32).map(|c| m.mail.served(c)).sum();
    // Every shootdown has 3 remote targets and each serves it exactly once.
    assert_eq!(served, 300_000);
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = Machine::new(2, PAGES + 2);
    let cpu = Cpu { m: &m, id: 0 };
    let mut b = FlushBatch::new();
    assert_eq!(
        b.add_range(0x2000, 0x2000, PageSize::Size4K),
        Err(ShootdownError::EmptyRange)
    );
    assert_eq!(
        b.add_range(0x3000, 0x2000, PageSize::Size4K),
        Err(ShootdownError::EmptyRange)
    );
    assert_eq!(
        b.add_range(0x1001, 0x3000, PageSize::Size4K),
        Err(ShootdownError::EmptyRange)
    );
    assert_eq!(
        b.add_range(
            0x0000_8000_0000_0000,
            0x0000_8000_0000_2000,
            PageSize::Size4K
        ),
        Err(ShootdownError::NonCanonical)
    );
    assert!(b.is_empty());
    b.add_page(USER_BASE, PageSize::Size4K);
    assert_eq!(
        m.mail.shootdown(&cpu, CpuSet::single(5), &b),
        Err(ShootdownError::OfflineCpu(5))
    );
    assert_eq!(
        m.mail
            .shootdown(&cpu, CpuSet::single(MAX_CPUS as u32 - 1), &b),
        Err(ShootdownError::OfflineCpu(MAX_CPUS as u32 - 1))
    );
    // An empty batch is a no-op that sends nothing.
    assert_eq!(
        m.mail
            .shootdown(&cpu, (0..2u32).collect(), &FlushBatch::new()),
        Ok(())
    );
    assert_eq!(m.ipis.load(Ordering::Relaxed), 0);
}

#[test]
fn batches_past_the_threshold_become_full_flushes() {
    let mut b = FlushBatch::new();
    let n = FULL_FLUSH_THRESHOLD as u64;
    b.add_range(USER_BASE, USER_BASE + n * 4096, PageSize::Size4K)
        .unwrap();
    assert!(!b.is_full());
    assert_eq!(b.pages().len(), FULL_FLUSH_THRESHOLD);
    b.add_page(USER_BASE + 2 * n * 4096, PageSize::Size4K);
    assert!(b.is_full());
    assert!(b.pages().is_empty());
    assert!(!b.touches_kernel());
    let mut k = FlushBatch::new();
    k.add_range(KERNEL_BASE, KERNEL_BASE + (1 << 30), PageSize::Size2M)
        .unwrap();
    assert!(k.is_full() && k.touches_kernel());
}
