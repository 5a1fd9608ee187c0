//! `edgeseg plot metrics`: what the controller did during a run, as a picture. Reads
//! `metrics.jsonl` (the monitor's samples and the controller's ticks, one JSON object a line)
//! and draws, over time: the threshold (with the battery floor and the breaker's open spells)
//! and the share of frames sent remote, the local queue against its target, CPU utilisation,
//! the remote round trip, and the frames dropped: a PNG (an SVG when the file name ends in
//! `.svg`) drawn by [`crate::chart`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chart::{self, Chart, LegendPosition, Line, Shading, PALETTE};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {path}: {source} (pass the metrics.jsonl of a run)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: not a metrics sample: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path} holds no samples with a time (t_s); was the run shorter than output.metrics_interval_ms?")]
    Empty { path: PathBuf },
    #[error("cannot draw {path}: {message}")]
    Draw { path: PathBuf, message: String },
}

/// The series of one run, each as (seconds since start, value).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSeries {
    pub threshold: Vec<(f64, f64)>,
    pub battery_floor: Vec<(f64, f64)>,
    pub remote_fraction: Vec<(f64, f64)>,
    /// Frames waiting for the small network: the controller's per-tick mean, or the monitor's
    /// samples of the local queues when no controller ran.
    pub local_queue: Vec<(f64, f64)>,
    /// The adaptive mode's target, as its ticks give it.
    pub target_local_queue: Option<f64>,
    pub cpu_percent: Vec<(f64, f64)>,
    pub rtt_ms: Vec<(f64, f64)>,
    pub dropped: Vec<(f64, f64)>,
    /// Spells during which the breaker was not closed.
    pub breaker_open: Vec<(f64, f64)>,
}

impl RunSeries {
    /// Parses the lines of `metrics.jsonl`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PlotError> {
        let mut s = RunSeries::default();
        let mut monitor_queue = Vec::new();
        let mut monitor_rtt = Vec::new();
        let mut open_since: Option<f64> = None;
        let mut last_t = 0.0;
        for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parse_error = |message: String| PlotError::Parse { path: path.to_path_buf(), line: index + 1, message };
            let value: Value = serde_json::from_str(line).map_err(|e| parse_error(e.to_string()))?;
            let t = value["t_s"].as_f64().ok_or_else(|| parse_error("no t_s".into()))?;
            last_t = t;
            if let Some(control) = value.get("control") {
                let number = |v: &Value| v.as_f64();
                let push = |series: &mut Vec<(f64, f64)>, v: Option<f64>| {
                    if let Some(v) = v {
                        series.push((t, v));
                    }
                };
                push(&mut s.threshold, number(&control["threshold"]));
                push(&mut s.battery_floor, number(&control["battery_floor"]));
                push(&mut s.remote_fraction, number(&control["remote_fraction"]));
                s.target_local_queue = number(&control["target_local_queue"]).or(s.target_local_queue);
                let signals = &control["signals"];
                push(&mut s.local_queue, number(&signals["local_queue"]));
                push(&mut s.cpu_percent, number(&signals["cpu"]).map(|c| c * 100.0));
                push(&mut s.rtt_ms, number(&signals["remote"]["rtt_ms"]).filter(|&r| r > 0.0));
                let open = control["breaker"].as_str().is_some_and(|b| b != "closed");
                match (open, open_since) {
                    (true, None) => open_since = Some(t),
                    (false, Some(since)) => {
                        s.breaker_open.push((since, t));
                        open_since = None;
                    }
                    _ => {}
                }
            } else {
                if let Some(dropped) = value["dropped"].as_f64() {
                    s.dropped.push((t, dropped));
                }
                if let Some(queues) = value["queues"].as_object() {
                    let depth: f64 = ["local", "prepared"].iter().filter_map(|q| queues.get(*q).and_then(Value::as_f64)).sum();
                    monitor_queue.push((t, depth));
                }
                if let Some(rtt) = value["remote"]["rtt_ms"].as_f64().filter(|&r| r > 0.0) {
                    monitor_rtt.push((t, rtt));
                }
            }
        }
        if let Some(since) = open_since {
            s.breaker_open.push((since, last_t));
        }
        if s.local_queue.is_empty() {
            s.local_queue = monitor_queue;
        }
        if s.rtt_ms.is_empty() {
            s.rtt_ms = monitor_rtt;
        }
        if s.threshold.is_empty() && s.local_queue.is_empty() && s.dropped.is_empty() {
            return Err(PlotError::Empty { path: path.to_path_buf() });
        }
        Ok(s)
    }

    /// A few words on what was read, for the command line.
    pub fn describe(&self) -> String {
        match self.threshold.len() {
            0 => format!("{:.1} s of monitor samples, no controller", self.duration()),
            ticks => format!("{ticks} controller steps over {:.1} s", self.duration()),
        }
    }

    fn duration(&self) -> f64 {
        [&self.threshold, &self.local_queue, &self.dropped, &self.rtt_ms]
            .iter()
            .filter_map(|series| series.last().map(|(t, _)| *t))
            .fold(1.0, f64::max)
    }
}

/// Draws `metrics` into `out` (PNG, or SVG for a `.svg` name).
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<RunSeries, PlotError> {
    let text = std::fs::read_to_string(metrics).map_err(|source| PlotError::Read { path: metrics.to_path_buf(), source })?;
    let series = RunSeries::parse(metrics, &text)?;
    chart::write(out, (1100, 1400), &panels(&series)).map_err(|message| PlotError::Draw { path: out.to_path_buf(), message })?;
    Ok(series)
}

fn upper(values: &[(f64, f64)], at_least: f64) -> f64 {
    values.iter().map(|(_, v)| *v).fold(at_least, f64::max) * 1.1
}

/// One chart per panel, all over the run's time.
fn panels(s: &RunSeries) -> Vec<Chart> {
    let duration = s.duration();
    let flat = |value: Option<f64>| value.map(|v| vec![(0.0, v), (duration, v)]).unwrap_or_default();
    let [blue, orange, green, red, purple, ..] = PALETTE;
    let panel = |title: &str, y_label: &str, y_max: f64, lines: Vec<Line>| Chart {
        title: title.to_string(),
        x_label: "time (s)".to_string(),
        y_label: y_label.to_string(),
        x_range: (0.0, duration),
        y_range: (0.0, y_max),
        lines,
        shading: None,
        legend: LegendPosition::UpperRight,
    };
    let mut threshold = panel(
        "threshold and share of frames sent remote",
        "",
        1.05,
        vec![
            Line::new("threshold", blue, s.threshold.clone()),
            Line::new("battery floor", purple, s.battery_floor.clone()),
            Line::new("remote share", green, s.remote_fraction.clone()),
        ],
    );
    threshold.shading = Some(Shading { label: "breaker open".to_string(), spans: s.breaker_open.clone() });
    let queue_max = upper(&s.local_queue, s.target_local_queue.unwrap_or(1.0));
    vec![
        threshold,
        panel(
            "frames waiting for the small network",
            "frames",
            queue_max,
            vec![Line::new("local queue", blue, s.local_queue.clone()), Line::new("target", red, flat(s.target_local_queue))],
        ),
        panel("CPU utilisation", "%", 105.0, vec![Line::new("CPU", orange, s.cpu_percent.clone())]),
        panel("remote round trip", "ms", upper(&s.rtt_ms, 10.0), vec![Line::new("RTT", blue, s.rtt_ms.clone())]),
        panel("frames dropped (total)", "frames", upper(&s.dropped, 1.0), vec![Line::new("dropped", red, s.dropped.clone())]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"t_s":1.0,"frames_in":10,"dropped":0,"queues":{"frames":1,"local":2,"prepared":4},"remote":{"rtt_ms":30.0}}
{"t_s":1.2,"control":{"mode":"adaptive","threshold":0.4,"target_local_queue":2.0,"remote_fraction":0.3,"breaker":"closed","signals":{"local_queue":5.5,"cpu":0.5,"remote":{"rtt_ms":35.0}}}}
{"t_s":1.4,"control":{"mode":"adaptive","threshold":0.5,"battery_floor":0.6,"remote_fraction":0.35,"breaker":"open","signals":{"local_queue":3.0}}}
{"t_s":1.6,"control":{"mode":"adaptive","threshold":0.6,"remote_fraction":0.4,"breaker":"closed","signals":{"local_queue":1.0,"cpu":0.9}}}
{"t_s":2.0,"frames_in":20,"dropped":3,"queues":{"local":0}}
"#;

    #[test]
    fn metrics_lines_become_series() {
        let s = RunSeries::parse(Path::new("m.jsonl"), METRICS).unwrap();
        assert_eq!(s.threshold, [(1.2, 0.4), (1.4, 0.5), (1.6, 0.6)]);
        assert_eq!(s.battery_floor, [(1.4, 0.6)]);
        assert_eq!(s.local_queue, [(1.2, 5.5), (1.4, 3.0), (1.6, 1.0)], "the controller's queue wins over the monitor's");
        assert_eq!(s.cpu_percent, [(1.2, 50.0), (1.6, 90.0)]);
        assert_eq!(s.rtt_ms, [(1.2, 35.0)]);
        assert_eq!(s.dropped, [(1.0, 0.0), (2.0, 3.0)]);
        assert_eq!(s.breaker_open, [(1.4, 1.6)]);
        assert_eq!(s.duration(), 2.0);
        assert_eq!(s.target_local_queue, Some(2.0));
    }

    #[test]
    fn without_a_controller_the_monitor_samples_are_drawn() {
        let monitor_only: String = METRICS.lines().filter(|l| !l.contains("control")).map(|l| format!("{l}\n")).collect();
        let s = RunSeries::parse(Path::new("m.jsonl"), &monitor_only).unwrap();
        assert_eq!(s.local_queue, [(1.0, 6.0), (2.0, 0.0)]);
        assert_eq!(s.rtt_ms, [(1.0, 30.0)]);
    }

    #[test]
    fn bad_files_are_named_with_the_line() {
        let e = RunSeries::parse(Path::new("m.jsonl"), "{\"t_s\":1}\nnot json\n").unwrap_err();
        assert!(e.to_string().starts_with("m.jsonl line 2: not a metrics sample"), "{e}");
        assert!(matches!(RunSeries::parse(Path::new("m.jsonl"), "\n"), Err(PlotError::Empty { .. })));
    }

    #[test]
    fn a_png_and_an_svg_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        std::fs::write(&metrics, METRICS).unwrap();
        for name in ["plot.png", "plot.svg"] {
            let out = dir.path().join(name);
            plot_metrics(&metrics, &out).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert!(bytes.len() > 1000, "{name}: {} bytes", bytes.len());
        }
        assert!(std::fs::read(dir.path().join("plot.png")).unwrap().starts_with(b"\x89PNG"));
        let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
        assert!(svg.contains("threshold and share of frames sent remote"), "the titles are drawn as text");
    }
}
