//! The PNG of the kernel's picture of physical memory: the phases of its `PHYSMAP`
//! lines ([`crate::physmap`]) as bands one above the other, in the order the kernel
//! printed them (the demo's `before` above its `after`).
//!
//! A band is its phase's cells from physical address 0 on, [`ROW_CELLS`] cells per
//! row, each cell a square of [`CELL_PX`] pixels: a labelled VMA's own colour (a paler
//! shade where it shares the cell), white free, light grey mostly free, grey kernel,
//! red pinned, black no RAM. Bands and the border are [`GAP_PX`] pixels of dark grey.
//! `qemu-run` writes it to [`default_path`] (`target/demo/physmap.png`) unless told
//! another path.

use crate::physmap::{self, Phase, PhysmapError};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Cells per row of a band.
pub const ROW_CELLS: usize = 128;
/// Side of a cell's square, in pixels.
pub const CELL_PX: usize = 6;
/// Pixels between bands and around them.
pub const GAP_PX: usize = 8;
/// Most pixels the picture may have (a guard against absurd `cells_total`s).
const MAX_PIXELS: usize = 1 << 26;

/// Gaps and border.
pub const BACKGROUND: [u8; 3] = [48, 48, 48];
/// `.`
pub const FREE: [u8; 3] = [255, 255, 255];
/// `:`
pub const MOSTLY_FREE: [u8; 3] = [208, 208, 208];
/// `#`
pub const KERNEL: [u8; 3] = [128, 128, 128];
/// `!`
pub const PINNED: [u8; 3] = [220, 0, 0];
/// A blank.
pub const NO_RAM: [u8; 3] = [0, 0, 0];

/// One colour per letter, none of them grey or red.
const LETTERS: [[u8; 3]; 26] = [
    [31, 119, 180],  // A blue
    [255, 127, 14],  // B orange
    [44, 160, 44],   // C green
    [148, 103, 189], // D purple
    [140, 86, 75],   // E brown
    [227, 119, 194], // F pink
    [188, 189, 34],  // G olive
    [23, 190, 207],  // H cyan
    [0, 0, 128],     // I navy
    [0, 128, 128],   // J teal
    [255, 215, 0],   // K gold
    [50, 205, 50],   // L lime
    [255, 0, 255],   // M magenta
    [160, 82, 0],    // N rust
    [135, 206, 250], // O sky
    [75, 0, 130],    // P indigo
    [46, 139, 87],   // Q sea green
    [210, 180, 140], // R tan
    [142, 69, 133],  // S plum
    [85, 107, 47],   // T dark olive
    [65, 105, 225],  // U royal blue
    [210, 105, 30],  // V chocolate
    [64, 224, 208],  // W turquoise
    [238, 130, 238], // X violet
    [189, 183, 107], // Y khaki
    [70, 130, 180],  // Z steel blue
];

/// Where `qemu-run` writes the picture unless told otherwise:
/// `<repo>/target/demo/physmap.png`.
pub fn default_path() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target")
        .join("demo")
        .join("physmap.png")
}

/// Why no picture was written.
#[derive(Debug)]
pub enum PictureError {
    /// The `PHYSMAP` lines do not make a picture.
    Physmap(PhysmapError),
    /// More than 2^26 pixels.
    TooLarge {
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
    },
    /// The PNG encoder refused.
    Encode(png::EncodingError),
    /// The file could not be written.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl fmt::Display for PictureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PictureError::Physmap(e) => write!(f, "{e}"),
            PictureError::TooLarge { width, height } => {
                write!(f, "a picture of {width}x{height} pixels is too large")
            }
            PictureError::Encode(e) => write!(f, "PNG encoding: {e}"),
            PictureError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for PictureError {}

impl From<PhysmapError> for PictureError {
    fn from(e: PhysmapError) -> Self {
        PictureError::Physmap(e)
    }
}

impl From<png::EncodingError> for PictureError {
    fn from(e: png::EncodingError) -> Self {
        PictureError::Encode(e)
    }
}

/// An RGB image, 8 bits per channel, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` pixels of 3 bytes.
    pub rgb: Vec<u8>,
}

impl Image {
    fn filled(width: usize, height: usize, colour: [u8; 3]) -> Image {
        Image {
            width,
            height,
            rgb: colour.repeat(width * height),
        }
    }

    fn square(&mut self, x: usize, y: usize, side: usize, colour: [u8; 3]) {
        for row in y..(y + side).min(self.height) {
            for col in x..(x + side).min(self.width) {
                let at = (row * self.width + col) * 3;
                self.rgb[at..at + 3].copy_from_slice(&colour);
            }
        }
    }
}

/// The colour of a cell character (see [`physmap::is_cell`]).
pub fn colour(cell: char) -> [u8; 3] {
    match cell {
        '.' => FREE,
        ':' => MOSTLY_FREE,
        '#' => KERNEL,
        '!' => PINNED,
        'A'..='Z' => LETTERS[usize::from(cell as u8 - b'A')],
        'a'..='z' => {
            let [r, g, b] = LETTERS[usize::from(cell as u8 - b'a')];
            let pale = |c: u8| ((u16::from(c) + 255) / 2) as u8;
            [pale(r), pale(g), pale(b)]
        }
        _ => NO_RAM,
    }
}

/// Rows of [`ROW_CELLS`] a band of `cells` cells takes.
fn band_rows(cells: usize) -> usize {
    cells.div_ceil(ROW_CELLS)
}

/// The top pixel row of each band, and the picture's height.
fn band_tops(phases: &[Phase]) -> (Vec<usize>, usize) {
    let mut tops = Vec::with_capacity(phases.len());
    let mut y = GAP_PX;
    for p in phases {
        tops.push(y);
        y += band_rows(p.cells.len()) * CELL_PX + GAP_PX;
    }
    (tops, y)
}

/// Draw the phases, one band each, top to bottom.
pub fn render(phases: &[Phase]) -> Result<Image, PictureError> {
    let widest = phases.iter().map(|p| p.cells.len()).max().unwrap_or(0);
    let width = 2 * GAP_PX + widest.min(ROW_CELLS) * CELL_PX;
    let (tops, height) = band_tops(phases);
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(PictureError::TooLarge { width, height });
    }
    let mut image = Image::filled(width, height, BACKGROUND);
    for (p, top) in phases.iter().zip(tops) {
        for (i, cell) in p.cells.chars().enumerate() {
            let x = GAP_PX + (i % ROW_CELLS) * CELL_PX;
            let y = top + (i / ROW_CELLS) * CELL_PX;
            image.square(x, y, CELL_PX, colour(cell));
        }
    }
    Ok(image)
}

/// `image` as a PNG into `out`.
pub fn encode(image: &Image, out: impl Write) -> Result<(), PictureError> {
    let too_large = || PictureError::TooLarge {
        width: image.width,
        height: image.height,
    };
    let width = u32::try_from(image.width).map_err(|_| too_large())?;
    let height = u32::try_from(image.height).map_err(|_| too_large())?;
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&image.rgb)?;
    writer.finish()?;
    Ok(())
}

/// If `output` has `PHYSMAP` lines, draw its phases into a PNG at `path` (directories
/// made as needed; written aside and renamed into place, so a reader never sees half a
/// file) and return how many phases it shows; `Ok(0)` and no file when there is none.
pub fn write(output: &str, path: &Path) -> Result<usize, PictureError> {
    let phases = physmap::phases(output)?;
    if phases.is_empty() {
        return Ok(0);
    }
    let image = render(&phases)?;
    let io_error = |source| PictureError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error)?;
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".tmp-{}", std::process::id()));
    let aside = PathBuf::from(aside);
    let written = std::fs::File::create(&aside)
        .map_err(io_error)
        .and_then(|file| {
            let mut out = io::BufWriter::new(file);
            encode(&image, &mut out)?;
            out.flush().map_err(io_error)
        })
        .and_then(|()| std::fs::rename(&aside, path).map_err(io_error));
    if written.is_err() {
        let _ = std::fs::remove_file(&aside);
    }
    written.map(|()| phases.len())
}

#[cfg(test)]
mod tests;
