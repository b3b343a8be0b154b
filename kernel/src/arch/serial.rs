//! The serial console (COM1 through `uart_16550`) behind the `log` facade.
//!
//! Every line reads `[LEVEL cpuN] message`. Lines from different CPUs never interleave:
//! one lock covers a whole record.

use core::fmt::Write;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550Tty};

const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550Tty<PioBackend>>> = Mutex::new(None);

struct Logger;

static LOGGER: Logger = Logger;

/// Bring up COM1 and install the logger. Without a serial port (some real machines)
/// output is dropped; the kernel still runs.
pub fn init() {
    // SAFETY: COM1 at 0x3f8 is the standard PC serial port and this is the only place
    // that creates a driver for it; the driver is kept behind CONSOLE's lock.
    let config = Config {
        baud_rate: BaudRate::Baud115200,
        ..Config::default()
    };
    // SAFETY: as above.
    let uart = unsafe { Uart16550Tty::new_port(COM1, config) }.ok();
    *CONSOLE.lock() = uart;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Write raw text (no prefix) to the console, for output that tools parse
/// (test lines, BENCH lines, the summary).
pub fn write_fmt(args: core::fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = CONSOLE.lock().as_mut() {
            let _ = uart.write_fmt(args);
        }
    });
}

/// On the panic path the lock may be held by the code that panicked (on this CPU,
/// which will never release it): wait a bounded time for it, then take it anyway.
pub fn emergency_unlock() {
    for _ in 0..10_000_000 {
        if !CONSOLE.is_locked() {
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: the holder has not released the console for ~10^7 spins; it is this CPU
    // (interrupted mid-line and now panicking) or a CPU that is stuck. Either way it
    // will not touch the uart again before we finish the panic report.
    unsafe { CONSOLE.force_unlock() }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            write_fmt(format_args!(
                "[{:5} cpu{}] {}\n",
                record.level(),
                super::cpu_number(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! sprint {
    ($($arg:tt)*) => { $crate::arch::serial::write_fmt(format_args!($($arg)*)) };
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! sprintln {
    () => { $crate::sprint!("\n") };
    ($($arg:tt)*) => { $crate::arch::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
