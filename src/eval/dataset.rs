//! Labelled image sets in PASCAL VOC layout: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
//! (8-bit palette PNG whose index is the class id, 255 = void), optional id lists (`val.txt`).
//!
//! Images are decoded by OpenCV to the BGR bytes the live pipeline sees; masks are read with the
//! `png` crate because OpenCV would expand the palette to colours and lose the class ids. Every
//! error names the file, and errors that concern one image are told apart from those that make
//! the whole set unusable, so an evaluation can skip bad images on request.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opencv::core::Mat;
use opencv::prelude::*;

use super::confusion::VOID;
use crate::infer::ClassMap;

pub const IMAGE_DIR: &str = "JPEGImages";
pub const MASK_DIR: &str = "SegmentationClass";
const LAYOUT: &str = "JPEGImages/<id>.jpg images and SegmentationClass/<id>.png palette masks (class id per pixel, 255 = void)";

#[derive(Debug, Clone, thiserror::Error)]
pub enum DatasetError {
    #[error("data folder {path} does not exist: expected a folder in VOC layout with {LAYOUT}")]
    MissingFolder { path: PathBuf },
    #[error("{path} is not in VOC layout: {missing} is missing; expected {LAYOUT}, optionally with id lists such as val.txt")]
    NotVocLayout { path: PathBuf, missing: PathBuf },
    #[error("cannot read image list {path}: {source}")]
    ReadList { path: PathBuf, source: Arc<std::io::Error> },
    #[error("image list {list}, line {line}: {entry:?} {problem}")]
    ListEntry { list: PathBuf, line: usize, entry: String, problem: &'static str },
    #[error("{what} names no image that has a mask: nothing to evaluate (expected {LAYOUT})")]
    NoImages { what: String },
    #[error("image {path} (id {id}) does not exist")]
    MissingImage { id: String, path: PathBuf },
    #[error("mask {path} for image {id} does not exist: every image evaluated needs SegmentationClass/<id>.png")]
    MissingMask { id: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: Arc<std::io::Error> },
    #[error("image {path} is corrupt: {problem}")]
    CorruptImage { path: PathBuf, problem: String },
    #[error("mask {path} is not a readable PNG: {problem}")]
    CorruptMask { path: PathBuf, problem: String },
    #[error("mask {path} is a {format} PNG; masks must be palette (or greyscale) PNGs of at most 8 bits whose values are class ids")]
    MaskFormat { path: PathBuf, format: String },
    #[error("mask {path} has value {value} at pixel ({x}, {y}); class ids are 0..={max_class} and 255 = void")]
    MaskValue { path: PathBuf, value: u8, x: u32, y: u32, max_class: usize },
    #[error("image {image} is {image_width}x{image_height} but its mask {mask} is {mask_width}x{mask_height}")]
    SizeMismatch { image: PathBuf, mask: PathBuf, image_width: u32, image_height: u32, mask_width: u32, mask_height: u32 },
}

impl DatasetError {
    /// True when the problem concerns one image (or one list entry) and the rest of the set can
    /// still be evaluated without it.
    pub fn concerns_one_image(&self) -> bool {
        !matches!(
            self,
            DatasetError::MissingFolder { .. }
                | DatasetError::NotVocLayout { .. }
                | DatasetError::ReadList { .. }
                | DatasetError::NoImages { .. }
        )
    }
}

/// A decoded image: tightly packed BGR, row-major, as the live pipeline's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub bgr: Vec<u8>,
}

/// An image with its ground truth (class id per pixel, 255 = void), same size.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub image: Image,
    pub mask: ClassMap,
}

/// A VOC-layout folder and the ids to evaluate, in order.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    ids: Vec<String>,
    rejected: Vec<DatasetError>,
    classes: usize,
    images_without_mask: usize,
}

impl Dataset {
    /// Opens `root` for a model with `classes` classes. With `list`, the ids it names, in its
    /// order (a relative list path that does not exist as given is looked up inside `root`, so
    /// `--list val.txt` works); without, every `JPEGImages/*.jpg` that has a mask, sorted.
    /// Malformed list lines do not fail here: they are kept in [`Dataset::rejected`].
    pub fn open(root: &Path, list: Option<&Path>, classes: usize) -> Result<Self, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::MissingFolder { path: root.to_path_buf() });
        }
        for dir in [IMAGE_DIR, MASK_DIR] {
            if !root.join(dir).is_dir() {
                return Err(DatasetError::NotVocLayout { path: root.to_path_buf(), missing: root.join(dir) });
            }
        }
        let mut set = Dataset { root: root.to_path_buf(), ids: Vec::new(), rejected: Vec::new(), classes, images_without_mask: 0 };
        match list {
            Some(list) => set.read_list(list)?,
            None => set.scan_images()?,
        }
        Ok(set)
    }

    fn read_list(&mut self, list: &Path) -> Result<(), DatasetError> {
        let path =
            if !list.exists() && list.is_relative() && self.root.join(list).is_file() { self.root.join(list) } else { list.to_path_buf() };
        let text = std::fs::read_to_string(&path).map_err(|e| DatasetError::ReadList { path: path.clone(), source: Arc::new(e) })?;
        for (index, line) in text.lines().enumerate() {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let problem = if entry.split_whitespace().count() > 1 {
                Some("has several fields; expected one image id per line (the file name without .jpg)")
            } else if entry.contains(['/', '\\']) || entry.starts_with('.') {
                Some("is not an image id (the file name in JPEGImages without .jpg)")
            } else {
                None
            };
            match problem {
                Some(problem) => {
                    self.rejected.push(DatasetError::ListEntry { list: path.clone(), line: index + 1, entry: entry.to_string(), problem })
                }
                None => self.ids.push(entry.to_string()),
            }
        }
        if self.ids.is_empty() && self.rejected.is_empty() {
            return Err(DatasetError::NoImages { what: format!("image list {}", path.display()) });
        }
        Ok(())
    }

    fn scan_images(&mut self) -> Result<(), DatasetError> {
        let dir = self.root.join(IMAGE_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|e| DatasetError::ReadFile { path: dir.clone(), source: Arc::new(e) })?;
        for entry in entries {
            let entry = entry.map_err(|e| DatasetError::ReadFile { path: dir.clone(), source: Arc::new(e) })?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".jpg")) else { continue };
            if self.mask_path(id).is_file() {
                self.ids.push(id.to_string());
            } else {
                self.images_without_mask += 1;
            }
        }
        if self.ids.is_empty() {
            return Err(DatasetError::NoImages { what: format!("data folder {}", self.root.display()) });
        }
        self.ids.sort();
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Ids to evaluate, in order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Keeps only the first `n` ids.
    pub fn truncate(&mut self, n: usize) {
        self.ids.truncate(n);
    }

    /// Malformed list lines (each a [`DatasetError::ListEntry`]).
    pub fn rejected(&self) -> &[DatasetError] {
        &self.rejected
    }

    /// Class ids run `0..classes`; mask values outside that (other than 255) are errors.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images in `JPEGImages` left out because they have no mask (only without a list).
    pub fn images_without_mask(&self) -> usize {
        self.images_without_mask
    }

    pub fn image_path(&self, id: &str) -> PathBuf {
        self.root.join(IMAGE_DIR).join(format!("{id}.jpg"))
    }

    pub fn mask_path(&self, id: &str) -> PathBuf {
        self.root.join(MASK_DIR).join(format!("{id}.png"))
    }

    pub fn read_image(&self, id: &str) -> Result<Image, DatasetError> {
        let path = self.image_path(id);
        let bytes = read_file(&path, || DatasetError::MissingImage { id: id.to_string(), path: path.clone() })?;
        decode_image(&bytes).map_err(|problem| DatasetError::CorruptImage { path, problem })
    }

    pub fn read_mask(&self, id: &str) -> Result<ClassMap, DatasetError> {
        let path = self.mask_path(id);
        let bytes = read_file(&path, || DatasetError::MissingMask { id: id.to_string(), path: path.clone() })?;
        let mask = decode_mask(&bytes, &path)?;
        if let Some(index) = mask.classes.iter().position(|&v| v != VOID && v as usize >= self.classes) {
            let (x, y) = ((index % mask.width as usize) as u32, (index / mask.width as usize) as u32);
            return Err(DatasetError::MaskValue { path, value: mask.classes[index], x, y, max_class: self.classes.saturating_sub(1) });
        }
        Ok(mask)
    }

    /// Image and mask of `id`, checked to be the same size.
    pub fn read_sample(&self, id: &str) -> Result<Sample, DatasetError> {
        let image = self.read_image(id)?;
        let mask = self.read_mask(id)?;
        if (image.width, image.height) != (mask.width, mask.height) {
            return Err(DatasetError::SizeMismatch {
                image: self.image_path(id),
                mask: self.mask_path(id),
                image_width: image.width,
                image_height: image.height,
                mask_width: mask.width,
                mask_height: mask.height,
            });
        }
        Ok(Sample { id: id.to_string(), image, mask })
    }
}

fn read_file(path: &Path, missing: impl FnOnce() -> DatasetError) -> Result<Vec<u8>, DatasetError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(),
        _ => DatasetError::ReadFile { path: path.to_path_buf(), source: Arc::new(e) },
    })
}

/// Decodes with OpenCV, as the live pipeline does. EXIF orientation is ignored because VOC
/// masks are drawn on the stored pixel grid. libjpeg fills a truncated JPEG with grey and only
/// warns, so a JPEG must also end its last scan with the end-of-image marker.
fn decode_image(bytes: &[u8]) -> Result<Image, String> {
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_has_end_marker(bytes) {
        return Err("JPEG data ends before its end-of-image marker (truncated file?)".into());
    }
    let err = |e: opencv::Error| e.to_string();
    let buf = Mat::from_slice(bytes).map_err(err)?;
    let flags = opencv::imgcodecs::IMREAD_COLOR | opencv::imgcodecs::IMREAD_IGNORE_ORIENTATION;
    let mat = opencv::imgcodecs::imdecode(&buf, flags).map_err(err)?;
    if mat.empty() {
        return Err("OpenCV cannot decode it (not a JPEG or damaged)".into());
    }
    let mat = if mat.is_continuous() { mat } else { mat.try_clone().map_err(err)? };
    Ok(Image { width: mat.cols() as u32, height: mat.rows() as u32, bgr: mat.data_bytes().map_err(err)?.to_vec() })
}

/// Entropy-coded data never contains 0xFF followed by a marker byte other than RSTn (bytes are
/// stuffed), so after the last start-of-scan (FF DA) an end-of-image (FF D9) must follow.
/// Embedded EXIF thumbnails come before the main image's scans and do not confuse this.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap_or(0);
    bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn decode_mask(bytes: &[u8], path: &Path) -> Result<ClassMap, DatasetError> {
    let corrupt = |e: png::DecodingError| DatasetError::CorruptMask { path: path.to_path_buf(), problem: e.to_string() };
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().map_err(corrupt)?;
    let (color, depth) = (reader.info().color_type, reader.info().bit_depth);
    let bits = match (color, depth) {
        (png::ColorType::Indexed | png::ColorType::Grayscale, png::BitDepth::Eight) => 8,
        (png::ColorType::Indexed | png::ColorType::Grayscale, png::BitDepth::Four) => 4,
        (png::ColorType::Indexed | png::ColorType::Grayscale, png::BitDepth::Two) => 2,
        (png::ColorType::Indexed | png::ColorType::Grayscale, png::BitDepth::One) => 1,
        _ => return Err(DatasetError::MaskFormat { path: path.to_path_buf(), format: format!("{color:?} {}-bit", depth as u8) }),
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DatasetError::CorruptMask { path: path.to_path_buf(), problem: "image is too large to decode".into() })?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
    let (width, height) = (frame.width, frame.height);
    let classes = if bits == 8 {
        buf.truncate(width as usize * height as usize);
        buf
    } else {
        unpack_rows(&buf, frame.line_size, width as usize, height as usize, bits)
    };
    Ok(ClassMap { width, height, classes })
}

/// Sub-byte PNG samples, most significant bits first, each row starting on a byte boundary.
fn unpack_rows(buf: &[u8], line_size: usize, width: usize, height: usize, bits: usize) -> Vec<u8> {
    let per_byte = 8 / bits;
    let mask = (1u8 << bits) - 1;
    let mut out = Vec::with_capacity(width * height);
    for row in buf.chunks(line_size).take(height) {
        out.extend((0..width).map(|x| (row[x / per_byte] >> (8 - bits * (x % per_byte + 1))) & mask));
    }
    out
}

/// Writes `mask` as an 8-bit palette PNG with the VOC colours (255 = void in cream), the
/// format `SegmentationClass` holds; tests and tools use it to build sets.
pub fn write_palette_png(path: &Path, mask: &ClassMap) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, mask.width, mask.height);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(crate::sink::voc_palette().concat());
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&mask.classes).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::Vector;

    /// A VOC-layout folder with one good 8x6 image "a" and its mask.
    fn folder() -> (tempfile::TempDir, Dataset) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(IMAGE_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(MASK_DIR)).unwrap();
        write_jpeg(&dir.path().join("JPEGImages/a.jpg"), 8, 6);
        write_palette_png(&dir.path().join("SegmentationClass/a.png"), &mask(8, 6, 15)).unwrap();
        let set = Dataset::open(dir.path(), None, 21).unwrap();
        (dir, set)
    }

    fn mask(width: u32, height: u32, class: u8) -> ClassMap {
        let mut classes = vec![class; (width * height) as usize];
        classes[0] = VOID;
        ClassMap { width, height, classes }
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let bgr: Vec<u8> = (0..width * height).flat_map(|i| [(i * 7) as u8, 100, 200]).collect();
        let mat = Mat::new_rows_cols_with_bytes::<opencv::core::Vec3b>(height as i32, width as i32, &bgr).unwrap();
        let mut out = Vector::<u8>::new();
        opencv::imgcodecs::imencode(".jpg", &mat, &mut out, &Vector::new()).unwrap();
        out.to_vec()
    }

    fn write_jpeg(path: &Path, width: u32, height: u32) {
        std::fs::write(path, jpeg(width, height)).unwrap();
    }

    fn names(err: &DatasetError, file: &str) {
        assert!(err.to_string().contains(file), "{err} does not name {file}");
    }

    #[test]
    fn reads_image_and_palette_mask_as_class_ids() {
        let (_dir, set) = folder();
        assert_eq!(set.ids(), ["a"]);
        let sample = set.read_sample("a").unwrap();
        assert_eq!((sample.image.width, sample.image.height, sample.image.bgr.len()), (8, 6, 8 * 6 * 3));
        assert_eq!(sample.mask, mask(8, 6, 15));
    }

    #[test]
    fn only_images_with_masks_are_listed_without_a_list() {
        let (dir, _) = folder();
        write_jpeg(&dir.path().join("JPEGImages/b.jpg"), 8, 6);
        let set = Dataset::open(dir.path(), None, 21).unwrap();
        assert_eq!((set.ids(), set.images_without_mask()), (&["a".to_string()][..], 1));
    }

    #[test]
    fn corrupt_and_truncated_jpegs_name_the_file() {
        let (dir, set) = folder();
        let path = dir.path().join("JPEGImages/a.jpg");
        std::fs::write(&path, b"this is not a jpeg").unwrap();
        let err = set.read_sample("a").unwrap_err();
        assert!(matches!(err, DatasetError::CorruptImage { .. }), "{err}");
        names(&err, "JPEGImages/a.jpg");

        let full = jpeg(8, 6);
        std::fs::write(&path, &full[..full.len() - 20]).unwrap();
        let err = set.read_image("a").unwrap_err();
        assert!(matches!(err, DatasetError::CorruptImage { .. }), "{err}");
        names(&err, "JPEGImages/a.jpg");
        assert!(err.concerns_one_image());
    }

    #[test]
    fn missing_mask_names_the_file() {
        let (dir, _) = folder();
        std::fs::write(dir.path().join("list.txt"), "a\nb\n").unwrap();
        write_jpeg(&dir.path().join("JPEGImages/b.jpg"), 8, 6);
        let set = Dataset::open(dir.path(), Some(Path::new("list.txt")), 21).unwrap();
        assert_eq!(set.ids(), ["a", "b"]);
        let err = set.read_sample("b").unwrap_err();
        assert!(matches!(err, DatasetError::MissingMask { .. }), "{err}");
        names(&err, "SegmentationClass/b.png");
    }

    #[test]
    fn size_mismatch_names_both_files() {
        let (dir, set) = folder();
        write_palette_png(&dir.path().join("SegmentationClass/a.png"), &mask(8, 5, 1)).unwrap();
        let err = set.read_sample("a").unwrap_err();
        assert!(matches!(err, DatasetError::SizeMismatch { .. }), "{err}");
        names(&err, "JPEGImages/a.jpg");
        names(&err, "SegmentationClass/a.png");
        assert!(err.to_string().contains("8x6") && err.to_string().contains("8x5"), "{err}");
    }

    #[test]
    fn mask_values_outside_the_classes_name_file_and_pixel() {
        let (dir, set) = folder();
        let mut bad = mask(8, 6, 0);
        bad.classes[2 * 8 + 3] = 21;
        write_palette_png(&dir.path().join("SegmentationClass/a.png"), &bad).unwrap();
        let err = set.read_sample("a").unwrap_err();
        assert!(matches!(err, DatasetError::MaskValue { value: 21, x: 3, y: 2, max_class: 20, .. }), "{err}");
        names(&err, "SegmentationClass/a.png");
    }

    #[test]
    fn corrupt_and_colour_masks_name_the_file() {
        let (dir, set) = folder();
        let path = dir.path().join("SegmentationClass/a.png");
        std::fs::write(&path, b"\x89PNG garbage").unwrap();
        let err = set.read_mask("a").unwrap_err();
        assert!(matches!(err, DatasetError::CorruptMask { .. }), "{err}");
        names(&err, "SegmentationClass/a.png");

        let mut encoder = png::Encoder::new(std::fs::File::create(&path).unwrap(), 2, 1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.write_header().unwrap().write_image_data(&[0; 6]).unwrap();
        let err = set.read_mask("a").unwrap_err();
        assert!(matches!(err, DatasetError::MaskFormat { .. }), "{err}");
        names(&err, "SegmentationClass/a.png");
    }

    #[test]
    fn four_bit_palette_masks_unpack_to_class_ids() {
        let (dir, set) = folder();
        let path = dir.path().join("SegmentationClass/a.png");
        let mut encoder = png::Encoder::new(std::fs::File::create(&path).unwrap(), 3, 2);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Four);
        encoder.set_palette(crate::sink::voc_palette()[..16].concat());
        // Rows of 3 pixels: [1, 2, 3] and [15, 0, 7], two per byte, padded.
        encoder.write_header().unwrap().write_image_data(&[0x12, 0x30, 0xF0, 0x70]).unwrap();
        assert_eq!(set.read_mask("a").unwrap().classes, vec![1, 2, 3, 15, 0, 7]);
    }

    #[test]
    fn layout_errors_say_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let err = Dataset::open(&dir.path().join("nope"), None, 21).unwrap_err();
        assert!(matches!(err, DatasetError::MissingFolder { .. }) && err.to_string().contains("JPEGImages/<id>.jpg"), "{err}");
        let err = Dataset::open(dir.path(), None, 21).unwrap_err();
        assert!(matches!(err, DatasetError::NotVocLayout { .. }) && err.to_string().contains("SegmentationClass/<id>.png"), "{err}");
        assert!(!err.concerns_one_image());
    }

    #[test]
    fn malformed_list_lines_are_rejected_with_file_and_line() {
        let (dir, _) = folder();
        let list = dir.path().join("val.txt");
        std::fs::write(&list, "# comment\na\n\n/JPEGImages/a.jpg /SegmentationClass/a.png\n../a\n").unwrap();
        let set = Dataset::open(dir.path(), Some(&list), 21).unwrap();
        assert_eq!(set.ids(), ["a"]);
        assert_eq!(set.rejected().len(), 2);
        assert!(matches!(&set.rejected()[0], DatasetError::ListEntry { line: 4, .. }), "{}", set.rejected()[0]);
        names(&set.rejected()[1], "val.txt");
        let err = Dataset::open(dir.path(), Some(Path::new("missing.txt")), 21).unwrap_err();
        assert!(matches!(err, DatasetError::ReadList { .. }), "{err}");
        names(&err, "missing.txt");
    }
}
