//! A terminal progress bar for evaluations (indicatif). Nothing is drawn when stderr is not a
//! terminal, so logs and CI output stay clean.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::segment::{ImageScore, Observer, Skipped};

pub struct ProgressObserver {
    bar: ProgressBar,
    iou_sum: f64,
    scored: usize,
    skipped: usize,
}

impl ProgressObserver {
    /// `label` starts the line (e.g. the model's name).
    pub fn new(label: &str) -> Self {
        let target = if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let template = format!("{label} {{wide_bar}} {{pos}}/{{len}} images, {{per_sec}}, eta {{eta}} {{msg}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        ProgressObserver { bar, iou_sum: 0.0, scored: 0, skipped: 0 }
    }

    fn update_message(&self) {
        let mean = if self.scored > 0 { self.iou_sum / self.scored as f64 } else { 0.0 };
        let skipped = if self.skipped > 0 { format!(", {} skipped", self.skipped) } else { String::new() };
        self.bar.set_message(format!("(mean IoU_img {mean:.3}{skipped})"));
    }
}

impl Observer for ProgressObserver {
    fn started(&mut self, images: usize) {
        self.bar.set_length(images as u64);
    }

    fn scored(&mut self, score: &ImageScore) {
        if let Some(iou) = score.iou_img {
            self.iou_sum += iou;
            self.scored += 1;
        }
        self.update_message();
        self.bar.inc(1);
    }

    fn skipped(&mut self, _skipped: &Skipped) {
        self.skipped += 1;
        self.update_message();
        self.bar.inc(1);
    }

    fn finished(&mut self) {
        self.bar.finish_and_clear();
    }
}
