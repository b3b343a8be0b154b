//! The few Unix calls the runner needs: a process group for QEMU (so a timeout kills
//! all of it), QEMU dying with its parent, and Ctrl-C/SIGTERM turning into "kill QEMU,
//! then stop" instead of leaving an orphaned emulator.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that interrupted us (0: none).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(signal, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP: a running [`crate::run`] then kills QEMU and
/// returns [`crate::RunStatus::Interrupted`]. For command-line tools; test binaries
/// leave the default handlers (QEMU dies with them through the parent-death signal).
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe, and
        // has the signature `signal` expects.
        unsafe { libc::signal(signal, handler) };
    }
}

/// The signal that interrupted this process, if one did since
/// [`install_interrupt_handler`].
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// Make the child the leader of a new process group and have the kernel kill it when
/// the thread that started it goes away (our process killed, a test thread aborted).
pub(crate) fn isolate(command: &mut Command) {
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl, which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
}

/// Kill the child's whole process group (the child leads it, see [`isolate`]).
pub(crate) fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; -pid names the group the
        // child leads, which contains only QEMU and anything QEMU started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    // In case the group signal failed (e.g. the child already left its group).
    let _ = child.kill();
}
