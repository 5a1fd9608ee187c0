//! On-disk cache of SPP vectors, so that training (and re-training with other settings) runs the
//! encoder through ONNX Runtime once per image, not once per run.
//!
//! Key: (encoder model SHA-256, how frames are prepared for it (size, fit, normalisation), SPP
//! config) names a folder; the image's content hash names the entry inside it. Changing the
//! encoder, the size, the preprocessing or the pooling therefore never serves stale vectors. An entry is `MAGIC`, the value count (u32 LE), the values (f32 LE) and
//! the SHA-256 of all that; one that fails any check (a run killed mid-write, a flipped bit) is
//! treated as missing and recomputed, never fatal. Entries are written to a temporary file and
//! renamed, so readers see whole entries only, even with several writers.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::spp::SppConfig;
use super::DecisionError;

const MAGIC: &[u8; 12] = b"EDGESEG-SPP1";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file's contents, lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String, DecisionError> {
    let io_err = |source| DecisionError::Io { action: "read", path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Hash of a data set for `dn.toml`: of its images' content hashes in the given order, so the
/// same images in the same order give the same hash whatever their file names.
pub fn set_hash(image_hashes: &[String]) -> String {
    let mut hasher = Sha256::new();
    for h in image_hashes {
        hasher.update(h.as_bytes());
        hasher.update(b"\n");
    }
    hex(&hasher.finalize())
}

/// What a cache lookup did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Computed,
    /// The entry existed but was unreadable or corrupt, and was computed again.
    Recomputed,
}

#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    /// Opens (creating) the cache under `root` for one base (encoder and the preprocessing its
    /// frames get, [`super::Encoder::preprocessing`]) and SPP configuration.
    pub fn open(root: &Path, encoder_sha256: &str, preprocessing: &str, spp: &SppConfig) -> Result<Self, DecisionError> {
        let description = format!("encoder sha256 {encoder_sha256}\npreprocessing {preprocessing}\nspp {}\n", spp.describe());
        let dir = root.join(&content_hash(description.as_bytes())[..16]);
        std::fs::create_dir_all(&dir).map_err(|source| DecisionError::Io { action: "create cache folder", path: dir.clone(), source })?;
        // For people looking into the folder; never read back.
        let key_file = dir.join("KEY.txt");
        if !key_file.is_file() {
            std::fs::write(&key_file, &description).map_err(|source| DecisionError::Io { action: "write", path: key_file, source })?;
        }
        Ok(FeatureCache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, image_hash: &str) -> Result<PathBuf, DecisionError> {
        if image_hash.len() < 16 || !image_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DecisionError::Invalid { what: "image hash", problem: format!("{image_hash:?} is not a hex digest") });
        }
        Ok(self.dir.join(format!("{image_hash}.spp")))
    }

    /// The cached vector, or `None` when absent or corrupt.
    pub fn get(&self, image_hash: &str) -> Result<Option<Vec<f32>>, DecisionError> {
        let bytes = match std::fs::read(self.entry_path(image_hash)?) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        Ok(decode(&bytes))
    }

    pub fn put(&self, image_hash: &str, values: &[f32]) -> Result<(), DecisionError> {
        let path = self.entry_path(image_hash)?;
        let tmp = self.dir.join(format!("{image_hash}.{}.tmp", std::process::id()));
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DecisionError::Io { action: "write cache entry", path, source }
        };
        std::fs::write(&tmp, encode(values)).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The cached vector for `image_hash`, or `compute()`'s, which is then cached.
    pub fn get_or_compute(
        &self,
        image_hash: &str,
        compute: impl FnOnce() -> Result<Vec<f32>, DecisionError>,
    ) -> Result<(Vec<f32>, CacheOutcome), DecisionError> {
        let existed = self.entry_path(image_hash)?.exists();
        if let Some(values) = self.get(image_hash)? {
            return Ok((values, CacheOutcome::Hit));
        }
        if existed {
            tracing::warn!(entry = %self.entry_path(image_hash)?.display(), "corrupt feature cache entry; recomputing it");
        }
        let values = compute()?;
        self.put(image_hash, &values)?;
        Ok((values, if existed { CacheOutcome::Recomputed } else { CacheOutcome::Computed }))
    }
}

fn encode(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + 4 * values.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    let header = MAGIC.len() + 4;
    if bytes.len() < header + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let count = u32::from_le_bytes(bytes[MAGIC.len()..header].try_into().ok()?) as usize;
    if bytes.len() != header + 4 * count + 32 {
        return None;
    }
    let (body, digest) = bytes.split_at(header + 4 * count);
    if Sha256::digest(body).as_slice() != digest {
        return None;
    }
    Some(body[header..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::spp::Pooling;

    fn cache(root: &Path, pooling: Pooling) -> FeatureCache {
        FeatureCache::open(root, &content_hash(b"encoder"), "257x257", &SppConfig { levels: vec![1, 2], pooling }).unwrap()
    }

    #[test]
    fn computes_once_then_hits() {
        let root = tempfile::tempdir().unwrap();
        let c = cache(root.path(), Pooling::Max);
        let image = content_hash(b"image bytes");
        let mut calls = 0;
        let (v, outcome) = c
            .get_or_compute(&image, || {
                calls += 1;
                Ok(vec![1.0, -2.5, f32::MAX])
            })
            .unwrap();
        assert_eq!((v.clone(), outcome), (vec![1.0, -2.5, f32::MAX], CacheOutcome::Computed));
        let (again, outcome) = c.get_or_compute(&image, || panic!("must not recompute")).unwrap();
        assert_eq!((again, outcome), (v, CacheOutcome::Hit));
        assert_eq!(calls, 1);
    }

    #[test]
    fn key_separates_pooling_and_encoder() {
        let root = tempfile::tempdir().unwrap();
        let (max, avg) = (cache(root.path(), Pooling::Max), cache(root.path(), Pooling::Average));
        assert_ne!(max.dir(), avg.dir());
        let other_encoder = FeatureCache::open(root.path(), &content_hash(b"other"), "257x257", &SppConfig::default()).unwrap();
        assert_ne!(max.dir(), other_encoder.dir());
        let image = content_hash(b"x");
        max.put(&image, &[1.0]).unwrap();
        assert_eq!(avg.get(&image).unwrap(), None);
    }

    #[test]
    fn corrupt_entries_are_recomputed() {
        let root = tempfile::tempdir().unwrap();
        let c = cache(root.path(), Pooling::Max);
        let image = content_hash(b"frame");
        c.put(&image, &[0.5; 10]).unwrap();
        let path = c.entry_path(&image).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[20] ^= 0x01;
        for bad in [flipped, good[..good.len() - 5].to_vec(), b"garbage".to_vec(), Vec::new()] {
            std::fs::write(&path, &bad).unwrap();
            assert_eq!(c.get(&image).unwrap(), None);
            let (v, outcome) = c.get_or_compute(&image, || Ok(vec![0.25; 10])).unwrap();
            assert_eq!((v, outcome), (vec![0.25; 10], CacheOutcome::Recomputed));
            assert_eq!(c.get(&image).unwrap(), Some(vec![0.25; 10]));
        }
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(content_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(file_sha256(&file).unwrap(), content_hash(b"abc"));
        assert_ne!(set_hash(&["a".into(), "b".into()]), set_hash(&["b".into(), "a".into()]));
        assert!(cache(dir.path(), Pooling::Max).get("../../etc/passwd").is_err(), "hash must be hex");
    }
}
