//! Spatial pyramid pooling (SPP-net, He et al. 2014): turns encoder features of any spatial size
//! into a vector of fixed length, so one decision network serves the 33x33 features of a
//! 257x257 frame and the 17x17 features of a downscaled 129x129 frame alike.
//!
//! Layout of the output: level by level in the configured order, bins row-major within a level,
//! the `C` channel values of a bin together. For levels `[1, 2]` that is `C x (1 + 4)` values:
//! the whole map, then top-left, top-right, bottom-left, bottom-right. With both poolings
//! ([`Pooling::MaxAverage`]) a bin holds its `C` maxima, then its `C` averages.

use serde::{Deserialize, Serialize};

use super::DecisionError;

/// How a bin is summarised. SPP-net (and the thesis) use the maximum; the average is kept as
/// an option because the feasibility study (`scripts/study_routing.py`) compares both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    Max,
    Average,
    /// Both per bin (twice the values): the maximum says whether a pattern occurs anywhere in
    /// the bin, the average how much of the bin it covers.
    MaxAverage,
}

impl Pooling {
    /// Values per channel and bin.
    pub fn values(self) -> usize {
        match self {
            Pooling::Max | Pooling::Average => 1,
            Pooling::MaxAverage => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SppConfig {
    /// Bins per side of each pyramid level (`[1, 2]`: 1x1 and 2x2).
    pub levels: Vec<u32>,
    pub pooling: Pooling,
}

impl Default for SppConfig {
    fn default() -> Self {
        SppConfig { levels: vec![1, 2], pooling: Pooling::Max }
    }
}

impl SppConfig {
    pub fn validate(&self) -> Result<(), DecisionError> {
        let invalid = |problem: String| DecisionError::Invalid { what: "SPP levels", problem };
        if self.levels.is_empty() {
            return Err(invalid("no level given (use [1, 2])".into()));
        }
        if let Some(bad) = self.levels.iter().find(|&&n| n == 0 || n > 16) {
            return Err(invalid(format!("{bad} bins per side is outside 1..=16")));
        }
        Ok(())
    }

    /// Bins over all levels (5 for `[1, 2]`).
    pub fn bins(&self) -> usize {
        self.levels.iter().map(|&n| (n * n) as usize).sum()
    }

    /// Values per channel of the pooled vector (bins × values per bin).
    pub fn values_per_channel(&self) -> usize {
        self.bins() * self.pooling.values()
    }

    /// Length of the pooled vector for features with `channels` channels, whatever their size.
    pub fn output_len(&self, channels: usize) -> usize {
        channels * self.values_per_channel()
    }

    /// A stable text form, part of the feature cache key and of `dn.toml`.
    pub fn describe(&self) -> String {
        let levels = self.levels.iter().map(u32::to_string).collect::<Vec<_>>().join("+");
        let pooling = match self.pooling {
            Pooling::Max => "max",
            Pooling::Average => "average",
            Pooling::MaxAverage => "max-average",
        };
        format!("levels {levels}, {pooling}")
    }
}

/// Bin `index` of `bins` along an axis of `len` cells: `floor(i*len/n) .. ceil((i+1)*len/n)`,
/// as SPP-net. Bins overlap by a cell when `len` is not a multiple of `n`, and are never empty.
fn bin_range(index: usize, bins: usize, len: usize) -> std::ops::Range<usize> {
    (index * len) / bins..((index + 1) * len).div_ceil(bins)
}

/// One bin of a `width`-wide plane.
struct Bin {
    width: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl Bin {
    /// Row slices keep the inner loop contiguous (several times faster than a flattened
    /// iterator over the bin).
    fn rows<'a>(&'a self, map: &'a [f32]) -> impl Iterator<Item = &'a [f32]> + 'a {
        self.rows.clone().map(move |y| &map[y * self.width + self.cols.start..y * self.width + self.cols.end])
    }

    fn max(&self, map: &[f32]) -> f32 {
        self.rows(map).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).fold(f32::NEG_INFINITY, f32::max)
    }

    fn average(&self, map: &[f32]) -> f32 {
        let cells = (self.rows.len() * self.cols.len()) as f32;
        self.rows(map).map(|r| r.iter().sum::<f32>()).sum::<f32>() / cells
    }
}

/// Pools `[channels, height, width]` features (row-major) into `config.output_len(channels)` values.
pub fn spp(features: &[f32], channels: usize, height: usize, width: usize, config: &SppConfig) -> Result<Vec<f32>, DecisionError> {
    config.validate()?;
    if channels == 0 || height == 0 || width == 0 || features.len() != channels * height * width {
        return Err(DecisionError::Invalid {
            what: "SPP input",
            problem: format!("{} values do not form [{channels}, {height}, {width}] features", features.len()),
        });
    }
    let plane = height * width;
    let mut out = Vec::with_capacity(config.output_len(channels));
    for &level in &config.levels {
        let n = level as usize;
        for by in 0..n {
            let rows = bin_range(by, n, height);
            for bx in 0..n {
                let cols = bin_range(bx, n, width);
                let bin = Bin { width, rows: rows.clone(), cols };
                if matches!(config.pooling, Pooling::Max | Pooling::MaxAverage) {
                    out.extend(features.chunks_exact(plane).map(|map| bin.max(map)));
                }
                if matches!(config.pooling, Pooling::Average | Pooling::MaxAverage) {
                    out.extend(features.chunks_exact(plane).map(|map| bin.average(map)));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pooling: Pooling) -> SppConfig {
        SppConfig { levels: vec![1, 2], pooling }
    }

    #[test]
    fn output_length_does_not_depend_on_the_input_size() {
        for (h, w) in [(33, 33), (17, 17), (1, 1), (2, 7), (40, 3)] {
            let features: Vec<f32> = (0..160 * h * w).map(|i| (i % 13) as f32).collect();
            for pooling in [Pooling::Max, Pooling::Average, Pooling::MaxAverage] {
                let pooled = spp(&features, 160, h, w, &config(pooling)).unwrap();
                assert_eq!(pooled.len(), 160 * 5 * pooling.values(), "{h}x{w}");
                assert_eq!(pooled.len(), config(pooling).output_len(160));
            }
        }
    }

    #[test]
    fn values_match_a_hand_computation() {
        // Two channels of 3x3; channel 1 is channel 0 negated.
        //   1 2 3
        //   4 5 6
        //   7 8 9
        // 2x2 bins over 3 cells: rows/cols 0..2 and 1..3 (the middle row and column are shared).
        let c0: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let features: Vec<f32> = c0.iter().copied().chain(c0.iter().map(|v| -v)).collect();
        let max = spp(&features, 2, 3, 3, &config(Pooling::Max)).unwrap();
        #[rustfmt::skip]
        let expect_max = [
            9.0, -1.0,  // whole map
            5.0, -1.0,  // top-left {1,2,4,5}
            6.0, -2.0,  // top-right {2,3,5,6}
            8.0, -4.0,  // bottom-left {4,5,7,8}
            9.0, -5.0,  // bottom-right {5,6,8,9}
        ];
        assert_eq!(max, expect_max);
        let avg = spp(&features, 2, 3, 3, &config(Pooling::Average)).unwrap();
        let expect_avg = [5.0, -5.0, 3.0, -3.0, 4.0, -4.0, 6.0, -6.0, 7.0, -7.0];
        for (a, e) in avg.iter().zip(expect_avg) {
            assert!((a - e).abs() < 1e-6, "{avg:?}");
        }
        // Both: per bin the maxima of the two channels, then their averages.
        let both = spp(&features, 2, 3, 3, &config(Pooling::MaxAverage)).unwrap();
        let expect_both: Vec<f32> = expect_max.chunks(2).zip(expect_avg.chunks(2)).flat_map(|(m, a)| m.iter().chain(a).copied()).collect();
        assert_eq!(both.len(), 20);
        for (b, e) in both.iter().zip(&expect_both) {
            assert!((b - e).abs() < 1e-6, "{both:?}");
        }
    }

    #[test]
    fn bins_cover_every_cell_and_are_never_empty() {
        for len in 1..40 {
            for bins in 1..6 {
                let mut covered = vec![false; len];
                for i in 0..bins {
                    let r = bin_range(i, bins, len);
                    assert!(!r.is_empty() && r.end <= len, "len {len}, bins {bins}, bin {i}: {r:?}");
                    r.for_each(|x| covered[x] = true);
                }
                assert!(covered.iter().all(|&c| c));
            }
        }
    }

    #[test]
    fn wrong_input_length_and_empty_levels_are_errors() {
        assert!(spp(&[0.0; 5], 2, 3, 3, &config(Pooling::Max)).is_err());
        let none = SppConfig { levels: vec![], pooling: Pooling::Max };
        assert!(spp(&[0.0; 9], 1, 3, 3, &none).is_err());
    }
}
