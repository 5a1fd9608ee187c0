//! `edgeseg plot metrics`: what the controller did during a run, as a picture. Reads
//! `metrics.jsonl` (the monitor's samples and the controller's ticks, one JSON object a line)
//! and draws, over time: the threshold (with the battery floor and the breaker's open spells)
//! and the share of frames sent remote, the local queue against its target, CPU utilisation,
//! the remote round trip, and the frames dropped. PNG through plotters' bitmap backend (SVG
//! when the file name ends in `.svg`), with a font compiled into the binary: nothing is looked
//! up on the machine.

use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

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

    fn duration(&self) -> f64 {
        [&self.threshold, &self.local_queue, &self.dropped, &self.rtt_ms]
            .iter()
            .filter_map(|series| series.last().map(|(t, _)| *t))
            .fold(1.0, f64::max)
    }
}

/// Draws `metrics` into `out` (PNG, or SVG for a `.svg` name).
pub fn plot_metrics(metrics: &Path, out: &Path, target_local_queue: Option<f64>) -> Result<RunSeries, PlotError> {
    let text = std::fs::read_to_string(metrics).map_err(|source| PlotError::Read { path: metrics.to_path_buf(), source })?;
    let mut series = RunSeries::parse(metrics, &text)?;
    series.target_local_queue = target_local_queue;
    register_font();
    const SIZE: (u32, u32) = (1100, 1300);
    let drawn = if out.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        draw(SVGBackend::new(out, SIZE).into_drawing_area(), &series)
    } else {
        draw(BitMapBackend::new(out, SIZE).into_drawing_area(), &series)
    };
    drawn.map_err(|message| PlotError::Draw { path: out.to_path_buf(), message })?;
    Ok(series)
}

/// The font every text is drawn with, compiled in (Noto Sans, Apache-2.0).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR).is_err() {
            tracing::warn!("the embedded font could not be loaded; the plot's text will be missing");
        }
    });
}

/// One panel: a title, a y range and its lines.
struct Panel<'a> {
    title: &'a str,
    y: Range<f64>,
    lines: Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>,
    /// Shaded time spans (the breaker's open spells), with their legend.
    spans: Option<(&'a str, &'a [(f64, f64)])>,
}

fn upper(values: &[(f64, f64)], at_least: f64) -> f64 {
    values.iter().map(|(_, v)| *v).fold(at_least, f64::max) * 1.1
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &RunSeries) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let duration = s.duration();
    let flat = |value: Option<f64>| value.map(|v| vec![(0.0, v), (duration, v)]).unwrap_or_default();
    let panels = [
        Panel {
            title: "threshold and share of frames sent remote",
            y: 0.0..1.05,
            lines: vec![
                ("threshold", BLUE, s.threshold.clone()),
                ("battery floor", MAGENTA, s.battery_floor.clone()),
                ("remote share", RGBColor(0, 150, 0), s.remote_fraction.clone()),
            ],
            spans: Some(("breaker open", &s.breaker_open)),
        },
        Panel {
            title: "frames waiting for the small network",
            y: 0.0..upper(&s.local_queue, s.target_local_queue.unwrap_or(1.0)),
            lines: vec![("local queue", BLUE, s.local_queue.clone()), ("target", RED, flat(s.target_local_queue))],
            spans: None,
        },
        Panel { title: "CPU utilisation (%)", y: 0.0..105.0, lines: vec![("CPU", BLUE, s.cpu_percent.clone())], spans: None },
        Panel {
            title: "remote round trip (ms)",
            y: 0.0..upper(&s.rtt_ms, 10.0),
            lines: vec![("RTT", BLUE, s.rtt_ms.clone())],
            spans: None,
        },
        Panel {
            title: "frames dropped (total)",
            y: 0.0..upper(&s.dropped, 1.0),
            lines: vec![("dropped", RED, s.dropped.clone())],
            spans: None,
        },
    ];
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(&panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..duration, panel.y.clone())
            .map_err(err)?;
        chart.configure_mesh().x_desc("time (s)").light_line_style(WHITE.mix(0.0)).draw().map_err(err)?;
        if let Some((label, spans)) = panel.spans.filter(|(_, spans)| !spans.is_empty()) {
            let (low, high) = (panel.y.start, panel.y.end);
            let shade = RED.mix(0.15);
            chart
                .draw_series(spans.iter().map(|&(from, to)| Rectangle::new([(from, low), (to, high)], shade.filled())))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade.filled()));
        }
        for (label, colour, points) in panel.lines.iter().filter(|(_, _, points)| !points.is_empty()) {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"{"t_s":1.0,"frames_in":10,"dropped":0,"queues":{"frames":1,"local":2,"prepared":4},"remote":{"rtt_ms":30.0}}
{"t_s":1.2,"control":{"mode":"adaptive","threshold":0.4,"remote_fraction":0.3,"breaker":"closed","signals":{"local_queue":5.5,"cpu":0.5,"remote":{"rtt_ms":35.0}}}}
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
            plot_metrics(&metrics, &out, Some(2.0)).unwrap();
            let bytes = std::fs::read(&out).unwrap();
            assert!(bytes.len() > 1000, "{name}: {} bytes", bytes.len());
        }
        assert!(std::fs::read(dir.path().join("plot.png")).unwrap().starts_with(b"\x89PNG"));
        let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
        assert!(svg.contains("threshold and share of frames sent remote"), "the titles are drawn as text");
    }
}
