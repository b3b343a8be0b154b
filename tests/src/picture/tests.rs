//! Unit tests of `picture`: a sample of `PHYSMAP` lines drawn, written to a temporary
//! folder and decoded back with the same crate.

use super::*;
use std::io::BufReader;

/// A temporary folder of this test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mmk-picture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn line(phase: &str, part: u64, parts: u64, total: usize, cells: &str) -> String {
    format!(
        "PHYSMAP {{\"phase\":\"{phase}\",\"frames_per_cell\":512,\"cells_total\":{total},\
         \"legend\":{{\"A\":\"1:0x40000000-0x40200000\",\"B\":\"1:0x80000000-0x80400000\"}},\
         \"part\":{part},\"parts\":{parts},\"cells\":\"{cells}\"}}"
    )
}

/// Decode the PNG at `path`: (width, height, RGB bytes).
fn decode(path: &Path) -> (usize, usize, Vec<u8>) {
    let file = std::fs::File::open(path).expect("the picture exists");
    let mut reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn pixel(rgb: &[u8], width: usize, x: usize, y: usize) -> [u8; 3] {
    let at = (y * width + x) * 3;
    [rgb[at], rgb[at + 1], rgb[at + 2]]
}

/// The centre of cell `i` of the band whose top is `top`.
fn cell_centre(i: usize, top: usize) -> (usize, usize) {
    (
        GAP_PX + (i % ROW_CELLS) * CELL_PX + CELL_PX / 2,
        top + (i / ROW_CELLS) * CELL_PX + CELL_PX / 2,
    )
}

#[test]
fn two_phases_drawn_as_two_bands_and_decoded_back() {
    // "before": 200 cells (two rows) in two parts; "after": 200 cells in one.
    let before: String = "#A".to_owned() + &".".repeat(196) + "!a";
    let after: String = "#.".to_owned() + &".".repeat(126) + "A" + &":".repeat(70) + "b";
    let output = [
        line("before", 0, 2, 200, &before[..150]),
        "[INFO  cpu0] something else".to_owned(),
        line("before", 1, 2, 200, &before[150..]),
        line("after", 0, 1, 200, &after),
    ]
    .join("\n");
    let dir = TempDir::new("bands");
    let path = dir.0.join("demo").join("physmap.png");
    assert_eq!(write(&output, &path).expect("written"), 2);
    let (width, height, rgb) = decode(&path);
    let rows = 2; // 200 cells of 128 per row
    assert_eq!(width, 2 * GAP_PX + ROW_CELLS * CELL_PX);
    assert_eq!(height, GAP_PX + 2 * (rows * CELL_PX + GAP_PX));
    let at = |(x, y): (usize, usize)| pixel(&rgb, width, x, y);
    let before_top = GAP_PX;
    let after_top = GAP_PX + rows * CELL_PX + GAP_PX;
    assert_eq!(at((0, 0)), BACKGROUND);
    assert_eq!(at(cell_centre(0, before_top)), KERNEL);
    assert_eq!(at(cell_centre(1, before_top)), LETTERS[0]);
    assert_eq!(at(cell_centre(2, before_top)), FREE);
    assert_eq!(at(cell_centre(198, before_top)), PINNED);
    assert_eq!(at(cell_centre(199, before_top)), colour('a'));
    assert_ne!(colour('a'), colour('A'));
    // Past the last cell of the second row: background.
    assert_eq!(at(cell_centre(200, before_top)), BACKGROUND);
    // The gap between the bands.
    assert_eq!(at((GAP_PX + 1, after_top - 1)), BACKGROUND);
    assert_eq!(at(cell_centre(1, after_top)), FREE);
    assert_eq!(at(cell_centre(128, after_top)), LETTERS[0]);
    assert_eq!(at(cell_centre(129, after_top)), MOSTLY_FREE);
    assert_eq!(at(cell_centre(199, after_top)), colour('b'));
    assert_eq!(at(cell_centre(200, after_top)), BACKGROUND);
    // Nothing left beside the picture.
    let names: Vec<_> = std::fs::read_dir(dir.0.join("demo"))
        .expect("the folder")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(names, ["physmap.png"]);
}

#[test]
fn a_narrow_map_makes_a_narrow_picture() {
    let image = render(&crate::physmap::phases(&line("p", 0, 1, 3, ". #")).expect("parses"))
        .expect("renders");
    assert_eq!(
        (image.width, image.height),
        (2 * GAP_PX + 3 * CELL_PX, 2 * GAP_PX + CELL_PX)
    );
    let at = |x: usize, y: usize| {
        let i = (y * image.width + x) * 3;
        [image.rgb[i], image.rgb[i + 1], image.rgb[i + 2]]
    };
    assert_eq!(at(GAP_PX + CELL_PX + 1, GAP_PX + 1), NO_RAM);
    assert_eq!(at(GAP_PX + 2 * CELL_PX + 1, GAP_PX + 1), KERNEL);
}

#[test]
fn every_letter_has_its_own_colour() {
    let mut colours: Vec<[u8; 3]> = ('A'..='Z').chain('a'..='z').map(colour).collect();
    colours.extend([FREE, MOSTLY_FREE, KERNEL, PINNED, NO_RAM, BACKGROUND]);
    let n = colours.len();
    colours.sort_unstable();
    colours.dedup();
    assert_eq!(colours.len(), n);
}

#[test]
fn no_physmap_lines_no_file_and_bad_ones_an_error() {
    let dir = TempDir::new("none");
    let path = dir.0.join("physmap.png");
    assert_eq!(
        write("migration demo: ok\n", &path).expect("nothing to do"),
        0
    );
    assert!(!path.exists());
    let bad = write(&line("p", 0, 1, 9, "."), &path);
    assert!(matches!(bad, Err(PictureError::Physmap(_))), "{bad:?}");
    assert!(!path.exists());
}

#[test]
fn unwritable_path_is_an_io_error() {
    let dir = TempDir::new("unwritable");
    std::fs::create_dir_all(&dir.0).expect("the folder");
    let blocker = dir.0.join("file");
    std::fs::write(&blocker, b"not a folder").expect("a file");
    let bad = write(&line("p", 0, 1, 1, "."), &blocker.join("physmap.png"));
    assert!(matches!(bad, Err(PictureError::Io { .. })), "{bad:?}");
}
