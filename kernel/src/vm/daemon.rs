//! The background huge-page daemon on the machine: a loop on one CPU (the highest online
//! one other than the caller's) that runs [`Daemon::step`] over the kernel's memory
//! manager and sleeps `sleep_ms` between steps.
//!
//! The loop is work queued on its CPU ([`smp::run_on`]); it sleeps with
//! [`smp::sleep_serving`], halting until the next timer tick or IPI and running whatever
//! else is queued for that CPU meanwhile, so the CPU keeps answering (the test harness's
//! check after each test, a test's helpers). [`start`], [`stop`] and [`retune`] work while
//! it runs: a stop wakes it with an IPI and waits until the loop has returned; a retune
//! is taken at the next step, and a bad one is refused, typed, with the old one kept.
//! The kernel options (`thp_daemon=`, `thp_pages=`, `thp_sleep_ms=`,
//! `thp_max_ptes_none=`) give [`init`] its [`Config`].

use super::KernelMm;
use crate::arch::percpu;
use crate::arch::timer::Deadline;
use crate::smp::{self, Pending};
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use mm::ops::huge::daemon::{Daemon, Step, Tuning, TuningError};
use spin::{Mutex, Once};

/// How long [`stop`] waits for the loop to return.
const STOP_TIMEOUT_MS: u64 = 30_000;

/// The daemon's settings at boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Start it at boot.
    pub on: bool,
    /// Its tuning.
    pub tuning: Tuning,
}

/// Why the daemon refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DaemonError {
    /// [`init`] has not run (or address spaces are not set up).
    NotSetUp,
    /// No other CPU than the caller's is online to run it.
    NoCpu,
    /// It already runs, on this CPU.
    AlreadyRunning(u32),
    /// It is not running.
    NotRunning,
    /// Its loop did not return within [`STOP_TIMEOUT_MS`] of being told to (it stays
    /// stopped: its steps do nothing).
    StopTimeout(u32),
    /// The tuning was refused (the old one is kept).
    Tuning(TuningError),
    /// Queueing the loop on its CPU failed.
    Smp(u32),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DaemonError::NotSetUp => f.write_str("the daemon is not set up"),
            DaemonError::NoCpu => f.write_str("no other CPU online to run the daemon on"),
            DaemonError::AlreadyRunning(cpu) => write!(f, "the daemon already runs on CPU {cpu}"),
            DaemonError::NotRunning => f.write_str("the daemon is not running"),
            DaemonError::StopTimeout(cpu) => write!(
                f,
                "the daemon on CPU {cpu} did not stop within {STOP_TIMEOUT_MS} ms"
            ),
            DaemonError::Tuning(e) => write!(f, "tuning refused: {e}"),
            DaemonError::Smp(cpu) => write!(f, "could not queue the daemon on CPU {cpu}"),
        }
    }
}

/// What the daemon did since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Steps run (stopped steps not counted).
    pub steps: u64,
    /// Pages looked at.
    pub scanned: u64,
    /// 2 MiB ranges promoted.
    pub promoted_2m: u64,
    /// 1 GiB ranges promoted.
    pub promoted_1g: u64,
    /// Pages contiguity generation moved.
    pub placed: u64,
    /// Ranges skipped.
    pub skipped: u64,
    /// Passes over every address space finished.
    pub passes: u64,
}

/// The counters behind [`Totals`].
#[derive(Default)]
struct Counters([AtomicU64; 7]);

impl Counters {
    fn add(&self, step: &Step) {
        let values = [
            1,
            step.scanned,
            step.promoted_2m,
            step.promoted_1g,
            step.placed,
            step.skipped,
            u64::from(step.full_pass),
        ];
        for (c, v) in self.0.iter().zip(values) {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }

    fn totals(&self) -> Totals {
        let v: [u64; 7] = core::array::from_fn(|i| self.0[i].load(Ordering::Relaxed));
        Totals {
            steps: v[0],
            scanned: v[1],
            promoted_2m: v[2],
            promoted_1g: v[3],
            placed: v[4],
            skipped: v[5],
            passes: v[6],
        }
    }
}

/// The loop while it runs: its CPU, its exit flag, its end.
struct Thread {
    cpu: u32,
    exit: Arc<AtomicBool>,
    done: Pending<()>,
}

struct KernelDaemon {
    mm: &'static KernelMm,
    daemon: Daemon,
    counters: Counters,
    thread: Mutex<Option<Thread>>,
}

static DAEMON: Once<KernelDaemon> = Once::new();

/// Set the daemon up with `config` (once, after [`super::init`]), and start it if
/// `config.on`.
pub fn init(config: Config) -> Result<(), DaemonError> {
    let mm = super::mm().ok_or(DaemonError::NotSetUp)?;
    let daemon = Daemon::new(config.tuning).map_err(DaemonError::Tuning)?;
    DAEMON.call_once(|| KernelDaemon {
        mm,
        daemon,
        counters: Counters::default(),
        thread: Mutex::new(None),
    });
    if config.on {
        let cpu = start()?;
        log::info!(
            "huge-page daemon: running on CPU {cpu}, {:?}",
            config.tuning
        );
    }
    Ok(())
}

fn kernel_daemon() -> Result<&'static KernelDaemon, DaemonError> {
    DAEMON.get().ok_or(DaemonError::NotSetUp)
}

/// Start the loop on the highest online CPU other than the caller's; returns that CPU.
pub fn start() -> Result<u32, DaemonError> {
    let kd = kernel_daemon()?;
    let mut thread = kd.thread.lock();
    if let Some(t) = thread.as_ref() {
        return Err(DaemonError::AlreadyRunning(t.cpu));
    }
    let me = percpu::cpu_index();
    let cpu = percpu::online()
        .iter()
        .filter(|&c| c != me)
        .max()
        .ok_or(DaemonError::NoCpu)?;
    let exit = Arc::new(AtomicBool::new(false));
    kd.daemon.start();
    let flag = exit.clone();
    let done = smp::run_on(cpu, move || run(kd, &flag)).map_err(|_| {
        kd.daemon.stop();
        DaemonError::Smp(cpu)
    })?;
    *thread = Some(Thread { cpu, exit, done });
    Ok(cpu)
}

/// The loop: a step, then a sleep, until told to exit.
fn run(kd: &KernelDaemon, exit: &AtomicBool) {
    while !exit.load(Ordering::Acquire) {
        let step = kd.daemon.step(kd.mm);
        if step != Step::default() {
            kd.counters.add(&step);
        }
        let sleep = Deadline::after_ms(kd.daemon.tuning().sleep_ms);
        smp::sleep_serving(sleep, || exit.load(Ordering::Acquire));
    }
}

/// Stop the loop and wait until it has returned; what the daemon did since boot.
pub fn stop() -> Result<Totals, DaemonError> {
    let kd = kernel_daemon()?;
    let mut thread = kd.thread.lock();
    let t = thread.take().ok_or(DaemonError::NotRunning)?;
    kd.daemon.stop();
    t.exit.store(true, Ordering::Release);
    // A no-op queued there wakes it from its halt at once.
    let woken = smp::run_on(t.cpu, || ());
    if t.done.wait_timeout_ms(STOP_TIMEOUT_MS).is_none() {
        let cpu = t.cpu;
        *thread = Some(t);
        return Err(DaemonError::StopTimeout(cpu));
    }
    if let Ok(p) = woken {
        p.wait();
    }
    Ok(kd.counters.totals())
}

/// Change the tuning, running or not; a bad one is refused and the old one kept.
pub fn retune(tuning: Tuning) -> Result<(), DaemonError> {
    kernel_daemon()?
        .daemon
        .retune(tuning)
        .map_err(DaemonError::Tuning)
}

/// The tuning now.
pub fn tuning() -> Result<Tuning, DaemonError> {
    Ok(kernel_daemon()?.daemon.tuning())
}

/// The CPU the loop runs on, if it runs.
pub fn running_on() -> Option<u32> {
    DAEMON.get()?.thread.lock().as_ref().map(|t| t.cpu)
}

/// What the daemon did since boot.
pub fn totals() -> Totals {
    DAEMON
        .get()
        .map_or_else(Totals::default, |kd| kd.counters.totals())
}
