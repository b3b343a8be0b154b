//! What to boot: [`QemuConfig`] and its parts.

use crate::Error;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How long a run may take before it is killed, unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Which firmware boots the kernel, and so which image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS, QEMU's default): boots `bios.img`.
    Bios,
    /// UEFI through OVMF: boots `uefi.img`.
    Uefi,
}

impl Firmware {
    /// The image file this firmware boots, inside the images directory.
    pub fn image_name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios.img",
            Firmware::Uefi => "uefi.img",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

/// Guest memory size, in MiB (QEMU's `-m` unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize {
    mib: u64,
}

impl MemSize {
    /// Smallest size accepted: below this the bootloader and kernel cannot run.
    pub const MIN_MIB: u64 = 32;
    /// Largest size accepted (QEMU's TCG allocates lazily, but not without bound).
    pub const MAX_MIB: u64 = 1 << 20;

    /// A size of `mib` MiB.
    pub fn mib(mib: u64) -> Result<MemSize, Error> {
        Self::checked(mib, &format!("{mib}M"))
    }

    /// A size of `gib` GiB.
    pub fn gib(gib: u64) -> Result<MemSize, Error> {
        Self::checked(gib.saturating_mul(1024), &format!("{gib}G"))
    }

    /// The size in MiB.
    pub fn as_mib(self) -> u64 {
        self.mib
    }

    fn checked(mib: u64, text: &str) -> Result<MemSize, Error> {
        if mib < Self::MIN_MIB {
            return Err(Error::InvalidMemSize {
                value: text.to_owned(),
                reason: "too small: at least 32M",
            });
        }
        if mib > Self::MAX_MIB {
            return Err(Error::InvalidMemSize {
                value: text.to_owned(),
                reason: "too large: at most 1T",
            });
        }
        Ok(MemSize { mib })
    }
}

impl FromStr for MemSize {
    type Err = Error;

    /// `256M`, `256MiB`, `4G`, `4GiB`, `1T`, or a bare number of MiB (like QEMU).
    fn from_str(text: &str) -> Result<MemSize, Error> {
        let invalid = |reason| Error::InvalidMemSize {
            value: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(digits_end);
        if digits.is_empty() {
            return Err(invalid("expected a number followed by M, G or T"));
        }
        let number: u64 = digits.parse().map_err(|_| invalid("number too large"))?;
        let shift = match unit.to_ascii_uppercase().as_str() {
            "" | "M" | "MB" | "MIB" => 0,
            "G" | "GB" | "GIB" => 10,
            "T" | "TB" | "TIB" => 20,
            _ => return Err(invalid("unknown unit: use M, G or T")),
        };
        let mib = number
            .checked_mul(1 << shift)
            .ok_or_else(|| invalid("number too large"))?;
        MemSize::checked(mib, text)
    }
}

impl fmt::Display for MemSize {
    /// The shortest exact spelling QEMU's `-m` takes: `8G`, `256M`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mib.is_multiple_of(1 << 20) {
            write!(f, "{}T", self.mib >> 20)
        } else if self.mib.is_multiple_of(1024) {
            write!(f, "{}G", self.mib >> 10)
        } else {
            write!(f, "{}M", self.mib)
        }
    }
}

/// Everything that describes one QEMU run.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// BIOS or UEFI (which image, which firmware).
    pub firmware: Firmware,
    /// Number of CPUs (`-smp`).
    pub smp: u32,
    /// Guest memory (`-m`).
    pub mem: MemSize,
    /// Kernel options, space-separated words (`mode=test seed=3 filter=buddy`), passed
    /// through fw_cfg `opt/mmk/cmdline`.
    pub options: String,
    /// Start QEMU halted with a GDB stub on :1234 (`-s -S`); no timeout then.
    pub gdb: bool,
    /// Kill QEMU after this long (ignored with `gdb`).
    pub timeout: Duration,
    /// Kill QEMU when one in-kernel test has run this long (ignored with `gdb`; `None`:
    /// only `timeout` applies).
    pub test_timeout: Option<Duration>,
    /// Directory holding `bios.img` and `uefi.img`.
    pub images: PathBuf,
    /// Echo the serial console to this process's stdout as it arrives.
    pub stream: bool,
    /// Further QEMU arguments, appended as given (e.g. `-accel tcg,thread=single`,
    /// `-numa` nodes).
    pub extra_args: Vec<String>,
}

impl QemuConfig {
    /// BIOS, 4 CPUs, 4 GiB, no options, [`DEFAULT_TIMEOUT`], images from
    /// [`default_images_dir`], not streamed.
    pub fn new() -> QemuConfig {
        QemuConfig {
            firmware: Firmware::Bios,
            smp: 4,
            mem: MemSize { mib: 4096 },
            options: String::new(),
            gdb: false,
            timeout: DEFAULT_TIMEOUT,
            test_timeout: None,
            images: default_images_dir(),
            stream: false,
            extra_args: Vec::new(),
        }
    }

    /// With this firmware.
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// With this many CPUs.
    pub fn smp(mut self, smp: u32) -> Self {
        self.smp = smp;
        self
    }

    /// With this much memory.
    pub fn mem(mut self, mem: MemSize) -> Self {
        self.mem = mem;
        self
    }

    /// With these kernel options.
    pub fn options(mut self, options: impl Into<String>) -> Self {
        self.options = options.into();
        self
    }

    /// With this timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With this timeout for each in-kernel test.
    pub fn test_timeout(mut self, timeout: Duration) -> Self {
        self.test_timeout = Some(timeout);
        self
    }

    /// With the images from this directory.
    pub fn images(mut self, images: impl Into<PathBuf>) -> Self {
        self.images = images.into();
        self
    }

    /// Streaming the serial console live, or not.
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Waiting for GDB, or not.
    pub fn gdb(mut self, gdb: bool) -> Self {
        self.gdb = gdb;
        self
    }

    /// The disk image this configuration boots.
    pub fn image_path(&self) -> PathBuf {
        self.images.join(self.firmware.image_name())
    }

    /// A short name for messages: `bios/4cpu/4G`.
    pub fn label(&self) -> String {
        format!("{}/{}cpu/{}", self.firmware, self.smp, self.mem)
    }
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig::new()
    }
}

/// Where the images are: `$MMK_IMAGES` if set, else `<repo>/target/images`.
pub fn default_images_dir() -> PathBuf {
    match std::env::var_os("MMK_IMAGES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("images"),
    }
}

#[cfg(test)]
mod tests;
