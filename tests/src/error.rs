//! The errors of the runner: bad configuration values, missing files, QEMU that
//! cannot be started. A run that starts and then fails is not an error: it is a
//! [`crate::RunStatus`].

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a run could not be set up or started.
#[derive(Debug)]
pub enum Error {
    /// A memory size that QEMU's `-m` would not take (e.g. `4X`, `0`).
    InvalidMemSize {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CPU count out of range (1 to 255).
    InvalidSmp(String),
    /// The disk image to boot does not exist.
    MissingImage(PathBuf),
    /// No OVMF firmware pair found for a UEFI boot.
    MissingFirmware {
        /// The CODE files looked for.
        tried: Vec<PathBuf>,
    },
    /// QEMU could not be started.
    Spawn {
        /// The program run.
        program: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Any other I/O failure while preparing or running QEMU.
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidMemSize { value, reason } => {
                write!(f, "invalid memory size {value:?}: {reason} (examples: 256M, 4G, 8G)")
            }
            Error::InvalidSmp(value) => {
                write!(f, "invalid CPU count {value:?}: expected a number from 1 to 255")
            }
            Error::MissingImage(path) => write!(
                f,
                "disk image {} not found (build it: ./run-qemu.sh builds the kernel and both images)",
                path.display()
            ),
            Error::MissingFirmware { tried } => {
                write!(f, "no OVMF firmware found for a UEFI boot (install Debian's `ovmf`, or set MMK_OVMF_CODE and MMK_OVMF_VARS); looked for:")?;
                for path in tried {
                    write!(f, " {}", path.display())?;
                }
                Ok(())
            }
            Error::Spawn { program, source } => write!(
                f,
                "cannot start {program}: {source} (install Debian's `qemu-system-x86`, or set MMK_QEMU)"
            ),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
