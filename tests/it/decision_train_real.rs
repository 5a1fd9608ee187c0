//! Measurements on real data, not run by default (`cargo test --release --test
//! decision_train_real -- --ignored --nocapture`):
//! - training the decision network on real SPP vectors exported by `scripts/study_routing.py`
//!   (out/study_routing/samples_*.bin), with AdamW and with SGD + momentum, printing validation
//!   metrics and training time;
//!   (`DN_SPLITS=camvid_seq_avg DN_SEED=7` narrows a run to one split and another seed).
//!
//! The decision's cost per frame against the small network is `edgeseg bench decision`.
//!
//! They print numbers and assert nothing about them; speed is never asserted.

use std::path::Path;
use std::time::Instant;

use edgeseg::decision::rule::{remote_score, Rule};
use edgeseg::decision::train::{evaluate, train};
use edgeseg::decision::{DecisionNet, NetShape, OptimizerKind, Sample, TrainConfig};

use super::common;

fn read_samples(path: &Path) -> Option<Vec<Sample>> {
    let bytes = std::fs::read(path).ok()?;
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (count, spp_len) = (word(0), word(4));
    let floats = |at: usize, n: usize| -> Vec<f32> {
        bytes[at..at + 4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let record = 4 * spp_len + 4 * 21 + 21 + 4;
    assert_eq!(bytes.len(), 8 + count * record, "{} is not a sample file", path.display());
    Some(
        (0..count)
            .map(|i| {
                let at = 8 + i * record;
                Sample {
                    spp: floats(at, spp_len),
                    class_iou: floats(at + 4 * spp_len, 21),
                    present: bytes[at + 4 * spp_len + 84..at + 4 * spp_len + 105].iter().map(|&b| b != 0).collect(),
                    gain: floats(at + 4 * spp_len + 105, 1)[0],
                }
            })
            .collect(),
    )
}

#[test]
#[ignore = "measurement: needs out/study_routing from scripts/study_routing.py"]
fn train_on_real_spp_vectors_with_both_optimizers() {
    let dir = common::root().join("out/study_routing");
    // DN_SPLITS (comma-separated) and DN_SEED narrow or vary a run.
    let only = std::env::var("DN_SPLITS").ok();
    let seed: Option<u64> = std::env::var("DN_SEED").ok().and_then(|v| v.parse().ok());
    for split in ["camvid_seq", "to_coco", "camvid_seq_avg", "to_coco_avg"] {
        if only.as_ref().is_some_and(|o| !o.split(',').any(|s| s == split)) {
            continue;
        }
        // The optimiser comparison runs on max-pooled vectors; average pooling with the defaults only.
        let compare_optimizers = !split.ends_with("_avg");
        let (Some(train_set), Some(test_set)) =
            (read_samples(&dir.join(format!("samples_{split}_train.bin"))), read_samples(&dir.join(format!("samples_{split}_test.bin"))))
        else {
            eprintln!("SKIPPED {split}: no sample files in {} (run scripts/study_routing.py)", dir.display());
            continue;
        };
        let shape = NetShape::for_input(train_set[0].spp.len());
        let baseline = {
            let config = TrainConfig { progress: false, ..TrainConfig::default() };
            let net = DecisionNet::new_seeded(shape, config.seed).unwrap();
            evaluate(&net, &test_set, &config, 0).unwrap()
        };
        println!(
            "{split}: {} train, {} validation samples; untrained validation loss {:.4}",
            train_set.len(),
            test_set.len(),
            baseline.loss
        );
        // What predicting the training set's means would score.
        let mean_iou: Vec<f32> = (0..21).map(|c| train_set.iter().map(|s| s.class_iou[c]).sum::<f32>() / train_set.len() as f32).collect();
        let mean_gain = train_set.iter().map(|s| s.gain).sum::<f32>() / train_set.len() as f32;
        let constant_iou_mse = test_set.iter().flat_map(|s| s.class_iou.iter().zip(&mean_iou).map(|(t, m)| (t - m).powi(2))).sum::<f32>()
            / (21 * test_set.len()) as f32;
        let constant_gain_mae = test_set.iter().map(|s| (s.gain - mean_gain).abs()).sum::<f32>() / test_set.len() as f32;
        println!("  constant (training means): IoU MSE {constant_iou_mse:.4}, gain MAE {constant_gain_mae:.3}");
        let iterations: usize = std::env::var("DN_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        for (optimizer, base_lr, dropout) in [
            (OptimizerKind::AdamW { weight_decay: 0.01 }, 0.001, 0.0),
            (OptimizerKind::AdamW { weight_decay: 0.01 }, 0.001, 0.5),
            (OptimizerKind::AdamW { weight_decay: 0.1 }, 0.0003, 0.5),
            (OptimizerKind::Sgd { momentum: 0.9 }, 0.001, 0.5),
            (OptimizerKind::Sgd { momentum: 0.9 }, 0.003, 0.5),
        ]
        .into_iter()
        .filter(|_| compare_optimizers)
        {
            let config = TrainConfig {
                optimizer,
                base_lr,
                dropout,
                max_iterations: iterations,
                validate_every: iterations / 4,
                progress: false,
                ..TrainConfig::default()
            };
            let start = Instant::now();
            let label = format!("{optimizer:?} lr {base_lr} dropout {dropout}");
            let report = match train(&train_set, &test_set, shape, &config) {
                Ok((_, report)) => report,
                // Plain SGD diverges above a learning rate of about 2 / (hidden units): worth seeing.
                Err(e) => {
                    println!("  {label}: {e}");
                    continue;
                }
            };
            let seconds = start.elapsed().as_secs_f64();
            for m in &report.validation {
                println!(
                    "  {label}: it {:>4} | val loss {:.4} IoU MSE {:.4} MAE {:.3} | IoU_img MAE {:.3} r {:.2} | gain MAE {:.3} r {:.2} | presence acc {:.3}",
                    m.iteration,
                    m.loss,
                    m.class_iou_mse,
                    m.class_iou_mae,
                    m.iou_img_mae,
                    m.iou_img_correlation,
                    m.gain_mae,
                    m.gain_correlation,
                    m.presence_accuracy
                );
            }
            println!("  {label}: final train loss {:.4}; {iterations} iterations of batch 20 in {seconds:.1} s", report.final_train_loss);
        }
        // The defaults' remote-first scores on the validation samples, for
        // `scripts/study_routing.py --rust-scores` to turn into routing quality.
        let defaults = TrainConfig::default();
        let config = TrainConfig {
            max_iterations: iterations,
            validate_every: iterations,
            progress: false,
            seed: seed.unwrap_or(defaults.seed),
            ..defaults
        };
        let (net, report) = train(&train_set, &test_set, shape, &config).unwrap();
        if let Some(m) = report.validation.last() {
            println!(
                "  defaults: val IoU MSE {:.4} | IoU_img MAE {:.3} r {:.2} | gain MAE {:.3} r {:.2} | presence acc {:.3}",
                m.class_iou_mse, m.iou_img_mae, m.iou_img_correlation, m.gain_mae, m.gain_correlation, m.presence_accuracy
            );
        }
        let inputs: Vec<f32> = test_set.iter().flat_map(|s| s.spp.iter().copied()).collect();
        let mut csv = String::from("thesis,iou_img,gain\n");
        for p in net.predict_batch(&inputs, test_set.len()).unwrap() {
            let score = |rule| remote_score(rule, &p, config.presence as f32);
            csv += &format!("{},{},{}\n", score(Rule::Thesis), score(Rule::PredictedIouImg), score(Rule::Gain));
        }
        std::fs::write(dir.join(format!("rust_scores_{split}.csv")), csv).unwrap();
    }
}
