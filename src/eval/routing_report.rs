//! What `eval routing` writes: `routing.csv` (every point of every sweep), `routing.json` (the
//! whole [`RoutingEvaluation`]), `report.md` (the thesis's tables: per threshold, fraction local,
//! the three precisions, hybrid mIoU and the computation saved; plus one line per policy with
//! its normalised AUC and the savings at an mIoU-drop budget) and plots, PNG and SVG:
//! hybrid mIoU against remote fraction and against GFLOPs per frame, and the precision curves
//! against the threshold.
//!
//! The plots are drawn by [`crate::chart`] (its font is compiled into the binary).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::routing::{Point, PolicyResult, RoutingEvaluation};
use crate::chart::{LegendPosition, Line, PALETTE};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Words around the numbers: what was evaluated and where thresholds were chosen.
#[derive(Debug, Clone, Default)]
pub struct ReportContext {
    pub title: String,
    /// The evaluated data, e.g. `camvid_voc (val.txt), 101 images`.
    pub evaluated: String,
    /// Where thresholds were chosen; `None` = on the evaluated set itself (optimistic).
    pub chosen_on: Option<String>,
    /// Further lines for the report's head (decision network, costs).
    pub notes: Vec<String>,
}

/// Files written by [`write`].
#[derive(Debug, Clone)]
pub struct RoutingFiles {
    pub csv: PathBuf,
    /// One row per image, the table the caller made (`eval routing`: the decision network's).
    pub images: PathBuf,
    pub json: PathBuf,
    pub report: PathBuf,
    pub plots: Vec<PathBuf>,
}

fn write_err(path: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Write { path: path.to_path_buf(), message }
}

fn write_file(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|e| write_err(path)(e.to_string()))
}

/// Writes everything into `dir` (created if missing), with `images_csv` as `images.csv`.
pub fn write(evaluation: &RoutingEvaluation, context: &ReportContext, images_csv: &str, dir: &Path) -> Result<RoutingFiles, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir)(e.to_string()))?;
    let files = RoutingFiles {
        csv: dir.join("routing.csv"),
        images: dir.join("images.csv"),
        json: dir.join("routing.json"),
        report: dir.join("report.md"),
        plots: Vec::new(),
    };
    write_file(&files.csv, &csv(evaluation))?;
    write_file(&files.images, images_csv)?;
    let json = serde_json::to_string_pretty(evaluation).map_err(|e| write_err(&files.json)(e.to_string()))?;
    write_file(&files.json, &json)?;
    write_file(&files.report, &markdown(evaluation, context))?;
    let plots = plots(evaluation, dir)?;
    Ok(RoutingFiles { plots, ..files })
}

fn optional(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.6}"))
}

/// One row per point: `policy,sweep,...` with `sweep` = `threshold` (the [0, 1] grid) or
/// `fraction` (every distinct cut).
pub fn csv(evaluation: &RoutingEvaluation) -> String {
    let mut out = String::from(
        "policy,sweep,threshold,local_fraction,remote_fraction,precision,precision_gt,precision_lt,miou,drop_points,drop_relative,\
         gflops_per_frame,edge_gflops_per_frame,total_reduction,edge_reduction\n",
    );
    for policy in &evaluation.policies {
        for (sweep, points) in [("threshold", &policy.thresholds), ("fraction", &policy.fractions)] {
            for p in points {
                let _ = writeln!(
                    out,
                    "{},{sweep},{:.6},{:.6},{:.6},{},{},{},{:.6},{:.4},{:.6},{:.6},{:.6},{:.6},{:.6}",
                    policy.name,
                    p.threshold,
                    p.local_fraction,
                    p.remote_fraction,
                    optional(p.precision),
                    optional(p.precision_gt),
                    optional(p.precision_lt),
                    p.miou,
                    p.drop_points,
                    p.drop_relative,
                    p.gflops_per_frame,
                    p.edge_gflops_per_frame,
                    p.total_reduction,
                    p.edge_reduction
                );
            }
        }
    }
    out
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

fn pct_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), pct)
}

/// The thesis's table for one policy: thresholds 0.1 … 0.9.
fn threshold_table(policy: &PolicyResult) -> String {
    let mut out = String::from(
        "| threshold | local % | precision % | precision_gt % | precision_lt % | hybrid mIoU % | drop (points) | total saved % | edge saved % |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in policy.thresholds.iter().filter(|p| {
        let tenth = (p.threshold * 10.0).round();
        (p.threshold * 10.0 - tenth).abs() < 1e-6 && (1.0..=9.0).contains(&tenth)
    }) {
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            p.threshold,
            pct(p.local_fraction),
            pct_opt(p.precision),
            pct_opt(p.precision_gt),
            pct_opt(p.precision_lt),
            pct(p.miou),
            p.drop_points,
            pct(p.total_reduction),
            pct(p.edge_reduction)
        );
    }
    out
}

/// Remote share, drop, total and edge saving of one point.
fn point_cells(p: &Point) -> String {
    format!("{} | {:.2} | {} | {}", pct(p.remote_fraction), p.drop_points, pct(p.total_reduction), pct(p.edge_reduction))
}

fn choice_at(policy: &PolicyResult, budget: f64) -> Option<&super::routing::Choice> {
    policy.choices.iter().find(|c| (c.budget_points - budget).abs() < 1e-9)
}

fn choice_cells(policy: &PolicyResult, budget: f64) -> String {
    match choice_at(policy, budget) {
        Some(c) => {
            format!("{:.3} | {} | {:.2} | {}", c.threshold, point_cells(&c.realised), c.chosen.drop_points, pct(c.chosen.total_reduction))
        }
        None => "– | – | – | – | – | – | –".to_string(),
    }
}

fn fraction_cells(policy: &PolicyResult, budget: f64) -> String {
    choice_at(policy, budget).map_or_else(|| "– | – | – | –".to_string(), |c| point_cells(&c.realised_at_fraction))
}

pub fn markdown(evaluation: &RoutingEvaluation, context: &ReportContext) -> String {
    let e = evaluation;
    let mut out = format!("# {}\n\n", context.title);
    let _ = writeln!(out, "- evaluated: {}", context.evaluated);
    let _ = writeln!(
        out,
        "- thresholds chosen on: {}",
        context.chosen_on.as_deref().unwrap_or("the evaluated set itself (no --choose-on: optimistic)")
    );
    let _ = writeln!(
        out,
        "- {} images, {} segmented well by the small network (IoU_img > 0.7); mIoU all-small {} %, all-large {} %",
        e.images,
        e.well_segmented,
        pct(e.all_small_miou),
        pct(e.all_large_miou)
    );
    let _ = writeln!(out, "- GFLOPs per frame: small {:.3}, large {:.3}", e.networks.small, e.networks.large);
    for note in &context.notes {
        let _ = writeln!(out, "- {note}");
    }
    out += "\n## Policies\n\nNormalised AUC = (AUC − AUC_random) / (AUC_oracle − AUC_random) of hybrid mIoU against remote fraction. \
            Cost per frame in GFLOPs: decision (every frame, edge) + local (edge) or remote (worker). \
            At a budget: the threshold with the most total computation saved whose mIoU drop stays within the budget on the choosing set; \
            *realised* figures are that threshold on the evaluated set.\n\n";
    if let Some(b) = &e.bootstrap {
        let _ = writeln!(
            out,
            "Interval: 5th to 95th percentile of the normalised AUC over {} block-bootstrap resamples of the evaluated images \
             (blocks of {} consecutive images, seed {}); *ahead of {}*: share of those resamples in which the policy's normalised AUC is higher.\n",
            b.resamples,
            b.block,
            b.seed,
            b.baseline.as_deref().unwrap_or("–")
        );
    }
    out += "| policy | normalised AUC | interval | ahead of baseline | AUC | decision | local | remote | ≤3 pt: threshold | remote % | drop (pt) | total saved % | edge saved % | chosen-on drop | chosen-on saved % | ≤1 pt: threshold | remote % | drop (pt) | total saved % | edge saved % | chosen-on drop | chosen-on saved % |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &e.policies {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.3} | {} | {} |",
            p.name,
            p.normalised_auc.map_or_else(|| "–".into(), |v| format!("{v:.2}")),
            p.normalised_auc_interval.map_or_else(|| "–".into(), |[lo, hi]| format!("{lo:.2} to {hi:.2}")),
            p.ahead_of_baseline.map_or_else(|| "–".into(), |v| format!("{:.0} %", 100.0 * v)),
            p.auc,
            p.cost.decision,
            p.cost.local,
            p.cost.remote,
            choice_cells(p, 3.0),
            choice_cells(p, 1.0)
        );
    }
    out += "\n## Keeping the chosen remote fraction instead of the threshold\n\n\
            The remote fraction of the point chosen for each budget, realised on the evaluated set by the cut that sends at least that share \
            remote (a threshold that follows a running quantile of the policy's values in deployment).\n\n";
    out += "| policy | ≤3 pt: remote % | drop (pt) | total saved % | edge saved % | ≤1 pt: remote % | drop (pt) | total saved % | edge saved % |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &e.policies {
        let _ = writeln!(out, "| {} | {} | {} |", p.name, fraction_cells(p, 3.0), fraction_cells(p, 1.0));
    }
    for p in e.policies.iter().filter(|p| p.name != "random" && p.name != "oracle") {
        let _ = write!(out, "\n## {} by threshold\n\n{}", p.name, threshold_table(p));
    }
    out
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    series: &'a [Series],
}

/// Writes `stem.png` and `stem.svg`.
fn plot(dir: &Path, stem: &str, chart: &Chart<'_>, written: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    let lines = chart.series.iter().enumerate();
    let drawn = crate::chart::Chart {
        title: chart.title.to_string(),
        x_label: chart.x_label.to_string(),
        y_label: chart.y_label.to_string(),
        x_range: chart.x_range,
        y_range: chart.y_range,
        lines: lines.map(|(i, s)| Line::new(s.name.as_str(), PALETTE[i % PALETTE.len()], s.points.clone())).collect(),
        shading: None,
        legend: LegendPosition::LowerRight,
    };
    for extension in ["png", "svg"] {
        let path = dir.join(format!("{stem}.{extension}"));
        crate::chart::write(&path, (960, 640), std::slice::from_ref(&drawn)).map_err(write_err(&path))?;
        written.push(path);
    }
    Ok(())
}

fn range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(1e-6);
    (lo - pad * span, hi + pad * span)
}

fn plots(e: &RoutingEvaluation, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let mut written = Vec::new();
    let curve = |f: fn(&Point) -> (f64, f64)| -> Vec<Series> {
        e.policies.iter().map(|p| Series { name: p.name.clone(), points: p.fractions.iter().map(f).collect() }).collect()
    };
    let by_fraction = curve(|p| (p.remote_fraction, 100.0 * p.miou));
    let miou_range = range(by_fraction.iter().flat_map(|s| s.points.iter().map(|p| p.1)), 0.05);
    plot(
        dir,
        "miou_vs_remote_fraction",
        &Chart {
            title: "Hybrid mIoU against remote fraction",
            x_label: "fraction of frames sent to the large network",
            y_label: "hybrid mIoU %",
            x_range: (0.0, 1.0),
            y_range: miou_range,
            series: &by_fraction,
        },
        &mut written,
    )?;
    let by_compute = curve(|p| (p.gflops_per_frame, 100.0 * p.miou));
    let compute_range = range(by_compute.iter().flat_map(|s| s.points.iter().map(|p| p.0)), 0.02);
    plot(
        dir,
        "miou_vs_compute",
        &Chart {
            title: "Hybrid mIoU against total computation",
            x_label: "GFLOPs per frame (decision + small on local + large on remote)",
            y_label: "hybrid mIoU %",
            x_range: compute_range,
            y_range: miou_range,
            series: &by_compute,
        },
        &mut written,
    )?;
    for p in e.policies.iter().filter(|p| p.name != "random" && p.name != "oracle") {
        let series: Vec<Series> = [
            ("precision", (|p: &Point| p.precision) as fn(&Point) -> Option<f64>),
            ("precision_gt", |p: &Point| p.precision_gt),
            ("precision_lt", |p: &Point| p.precision_lt),
            ("fraction local", |p: &Point| Some(p.local_fraction)),
        ]
        .into_iter()
        .map(|(name, f)| Series {
            name: name.to_string(),
            points: p.thresholds.iter().filter_map(|point| f(point).map(|v| (point.threshold, 100.0 * v))).collect(),
        })
        .collect();
        let title = format!("{}: precision against threshold", p.name);
        plot(
            dir,
            &format!("precision_{}", p.name),
            &Chart { title: &title, x_label: "threshold", y_label: "%", x_range: (0.0, 1.0), y_range: (0.0, 101.0), series: &series },
            &mut written,
        )?;
    }
    Ok(written)
}
