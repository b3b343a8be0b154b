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
    /// One in this many waits for acknowledgements takes a simulated interrupt whose
    /// handler starts a shootdown of its own (0: never).
    nest_every: u64,
    nested: AtomicU64,
}

struct Cpu<'a> {
    m: &'a Machine,
    id: usize,
    /// Per-CPU state of the simulated interrupts: a random word, and whether the CPU is
    /// in the handler.
    nest: std::cell::Cell<(u64, bool)>,
}

impl<'a> Cpu<'a> {
    fn new(m: &'a Machine, id: usize) -> Cpu<'a> {
        Cpu {
            m,
            id,
            nest: std::cell::Cell::new(((id as u64 + 1) * 0x2545_F491_4F6C_DD1D, false)),
        }
    }
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
        let (mut x, in_handler) = self.nest.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.nest.set((x, in_handler));
        if self.m.nest_every != 0 && !in_handler && x % self.m.nest_every == 0 {
            // An interrupt whose handler shoots a page nobody maps down everywhere.
            self.nest.set((x, true));
            let mut batch = FlushBatch::new();
            batch.add_page(USER_BASE + (PAGES + x % 16) * 2 * 4096, PageSize::Size4K);
            let all: CpuSet = (0..self.m.ipi.len() as u32).collect();
            self.m
                .mail
                .shootdown(self, all, &batch)
                .expect("valid nested shootdown");
            self.m.nested.fetch_add(1, Ordering::Relaxed);
            self.nest.set((x, false));
        }
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
    fn new(cpus: usize, max_frames: u64, nest_every: u64) -> Machine {
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
            nest_every,
            nested: AtomicU64::new(0),
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

fn run(cpus: usize, remaps_per_cpu: u64, seed: u64, nest_every: u64) -> Arc<Machine> {
    let max_frames = PAGES + 2 + cpus as u64 * remaps_per_cpu;
    let m = Arc::new(Machine::new(cpus, max_frames, nest_every));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..cpus)
        .map(|id| {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                let cpu = Cpu::new(&m, id);
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
        let m = run(cpus, 3000, cpus as u64, 0);
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
    let m = run(4, 25_000, 42, 0);
    assert_eq!(m.shootdowns.load(Ordering::Relaxed), 100_000);
    assert_eq!(m.stale_uses.load(Ordering::Relaxed), 0);
    let served: u64 = (0..4u32).map(|c| m.mail.served(c)).sum();
    // Every shootdown has 3 remote targets and each serves it exactly once.
    assert_eq!(served, 300_000);
}

#[test]
fn interrupt_handlers_shooting_down_during_their_cpus_own_lose_nothing() {
    // Run in a thread, so that a lost request (its initiator waits for ever) fails the
    // test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(4, 5000, 7, 16));
    });
    let m = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("every shootdown completed (none was lost)");
    let nested = m.nested.load(Ordering::Relaxed);
    assert!(nested > 100, "only {nested} nested shootdowns");
    assert_eq!(m.stale_uses.load(Ordering::Relaxed), 0);
    let served: u64 = (0..4u32).map(|c| m.mail.served(c)).sum();
    // Each shootdown, nested or not, has 3 remote targets that serve it exactly once.
    assert_eq!(served, 3 * (m.shootdowns.load(Ordering::Relaxed) + nested));
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = Machine::new(2, PAGES + 2, 0);
    let cpu = Cpu::new(&m, 0);
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

/// A small machine whose CPUs record what they flushed and can misbehave on purpose:
/// CPU 1 can hold its flush back to see whether the initiator returned meanwhile, and
/// CPU 0 can take a simulated interrupt that starts a shootdown of its own just before
/// its IPI goes out.
struct Probe {
    mail: Mailboxes,
    ipi: Vec<AtomicBool>,
    ipis: AtomicU64,
    /// Per CPU: the batches it flushed, in order.
    flushed: Vec<Mutex<Vec<FlushBatch>>>,
    /// CPU 1 holds each flush back until the initiator returns, at most this long.
    hold_flush: Option<std::time::Duration>,
    /// Set by the initiator when its shootdown returned.
    returned: AtomicBool,
    /// Per flush of CPU 1: whether the initiator had returned before the flush.
    returned_before_flush: Mutex<Vec<bool>>,
    /// A batch CPU 0's simulated interrupt handler shoots down (once), on these CPUs.
    nested: Mutex<Option<(CpuSet, FlushBatch)>>,
    stop: AtomicBool,
}

struct ProbeCpu<'a> {
    p: &'a Probe,
    id: u32,
}

impl Probe {
    fn new(cpus: usize) -> Probe {
        let p = Probe {
            mail: Mailboxes::new(),
            ipi: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            ipis: AtomicU64::new(0),
            flushed: (0..cpus).map(|_| Mutex::new(Vec::new())).collect(),
            hold_flush: None,
            returned: AtomicBool::new(false),
            returned_before_flush: Mutex::new(Vec::new()),
            nested: Mutex::new(None),
            stop: AtomicBool::new(false),
        };
        for c in 0..cpus {
            p.mail.set_online(c as u32);
        }
        p
    }

    /// Run `initiator` on CPU 0 while CPUs 1.. serve their mailboxes; panics if it does
    /// not return within `limit` (a lost request leaves it waiting for ever).
    fn run(
        self: &Arc<Probe>,
        limit: std::time::Duration,
        initiator: impl FnOnce(&ProbeCpu) + Send + 'static,
    ) {
        let targets: Vec<_> = (1..self.ipi.len() as u32)
            .map(|id| {
                let p = Arc::clone(self);
                std::thread::spawn(move || {
                    let cpu = ProbeCpu { p: &p, id };
                    while !p.stop.load(Ordering::SeqCst) {
                        if p.ipi[id as usize].swap(false, Ordering::SeqCst) {
                            p.mail.serve(&cpu);
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = Arc::clone(self);
        let cpu0 = std::thread::spawn(move || {
            initiator(&ProbeCpu { p: &p, id: 0 });
            // The receiver is gone only if the test already failed.
            let _ = tx.send(());
        });
        let finished = rx.recv_timeout(limit);
        self.stop.store(true, Ordering::SeqCst);
        match finished {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                cpu0.join().expect("the initiator panicked");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the initiator's shootdown never completed: a request was lost")
            }
        }
        for t in targets {
            t.join().expect("target cpu panicked");
        }
    }
}

impl TlbArch for ProbeCpu<'_> {
    fn this_cpu(&self) -> u32 {
        self.id
    }

    fn send_ipi(&self, targets: CpuSet) {
        let nested = self.p.nested.lock().unwrap().take();
        if let Some((cpus, batch)) = nested {
            // A simulated interrupt on the initiator, after it posted its requests and
            // before its IPI went out; its handler shoots `batch` down.
            self.p
                .mail
                .shootdown(self, cpus, &batch)
                .expect("valid nested shootdown");
        }
        for t in targets.iter() {
            self.p.ipi[t as usize].store(true, Ordering::SeqCst);
            self.p.ipis.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush_local(&self, batch: &FlushBatch) {
        if let (1, Some(limit)) = (self.id, self.p.hold_flush) {
            let start = std::time::Instant::now();
            while !self.p.returned.load(Ordering::SeqCst) && start.elapsed() < limit {
                std::thread::yield_now();
            }
            let returned = self.p.returned.load(Ordering::SeqCst);
            self.p.returned_before_flush.lock().unwrap().push(returned);
        }
        self.p.flushed[self.id as usize]
            .lock()
            .unwrap()
            .push(*batch);
    }

    fn relax(&self) {
        std::thread::yield_now();
    }
}

/// Shoot `batch` down from CPU 0 on CPUs 0 and 1 while CPU 1 holds its flush back;
/// whether CPU 0 returned before CPU 1 flushed.
fn returned_before_target_flushed(batch: FlushBatch) -> bool {
    let mut p = Probe::new(2);
    p.hold_flush = Some(std::time::Duration::from_millis(300));
    let p = Arc::new(p);
    p.run(std::time::Duration::from_secs(20), move |cpu| {
        cpu.p
            .mail
            .shootdown(cpu, (0..2u32).collect(), &batch)
            .expect("valid shootdown");
        cpu.p.returned.store(true, Ordering::SeqCst);
    });
    let seen = p.returned_before_flush.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "cpu 1 flushed once");
    seen[0]
}

#[test]
fn a_request_that_frees_tables_is_acknowledged_only_after_the_flush() {
    let mut user = FlushBatch::new();
    user.add_page(USER_BASE, PageSize::Size4K);
    // The early acknowledgement is there (the probe sees it) for user pages alone...
    assert!(
        returned_before_target_flushed(user),
        "user-half request without tables: acknowledged before the flush"
    );
    // ...but not when tables are freed, with pages or without,
    let mut tables = user;
    tables.set_frees_tables();
    assert!(
        !returned_before_target_flushed(tables),
        "a target acknowledged before flushing while page tables were freed"
    );
    let mut only_tables = FlushBatch::new();
    only_tables.set_frees_tables();
    assert!(!returned_before_target_flushed(only_tables));
    // ...nor for kernel translations.
    let mut kernel = FlushBatch::new();
    kernel.add_page(KERNEL_BASE, PageSize::Size4K);
    assert!(!returned_before_target_flushed(kernel));
}

#[test]
fn a_shootdown_that_only_frees_tables_reaches_every_target() {
    let p = Arc::new(Probe::new(3));
    let mut batch = FlushBatch::new();
    batch.set_frees_tables();
    p.run(std::time::Duration::from_secs(20), move |cpu| {
        cpu.p
            .mail
            .shootdown(cpu, (0..3u32).collect(), &batch)
            .expect("valid shootdown");
    });
    assert_eq!(
        p.ipis.load(Ordering::Relaxed),
        2,
        "one IPI per remote target"
    );
    assert!(
        !batch.is_empty(),
        "freeing tables is something to shoot down"
    );
    for c in 0..3u32 {
        let flushed = p.flushed[c as usize].lock().unwrap();
        assert!(
            matches!(&flushed[..], [b] if b.frees_tables()),
            "cpu {c} flushed {flushed:?}"
        );
    }
    assert_eq!(p.mail.served(1) + p.mail.served(2), 2);
}

#[test]
fn a_shootdown_from_an_interrupt_during_the_cpus_own_loses_neither() {
    let p = Arc::new(Probe::new(3));
    let mut inner = FlushBatch::new();
    inner.add_page(USER_BASE + 0x5000, PageSize::Size4K);
    *p.nested.lock().unwrap() = Some(((0..3u32).collect(), inner));
    p.run(std::time::Duration::from_secs(20), |cpu| {
        let mut outer = FlushBatch::new();
        outer.add_page(USER_BASE, PageSize::Size4K);
        cpu.p
            .mail
            .shootdown(cpu, (0..3u32).collect(), &outer)
            .expect("valid shootdown");
    });
    assert!(p.nested.lock().unwrap().is_none(), "the interrupt happened");
    for c in 1..3u32 {
        let mut pages: Vec<u64> = p.flushed[c as usize]
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.pages().iter().map(|&(va, _)| va))
            .collect();
        pages.sort_unstable();
        assert_eq!(
            pages,
            [USER_BASE, USER_BASE + 0x5000],
            "cpu {c} flushed both requests"
        );
        assert_eq!(p.mail.served(c), 2);
    }
}
