//! Line charts written as PNG or SVG (by the file's extension), for the reports and plots of
//! the command line (`eval routing`, `plot metrics`). One file holds one chart or several
//! stacked ones sharing its width. Text is drawn with a font compiled into the binary (Noto
//! Sans through plotters' `ab_glyph`), so no font library or installed font is looked up.

use std::path::Path;

use plotters::coord::Shift;
pub use plotters::prelude::SeriesLabelPosition as LegendPosition;
use plotters::prelude::*;
pub use plotters::style::RGBColor;

/// Colours for lines that have no colour of their own, in order (matplotlib's).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line: (x, y) points joined in order. A line without points is left out, legend too.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

impl Line {
    pub fn new(label: impl Into<String>, colour: RGBColor, points: Vec<(f64, f64)>) -> Self {
        Line { label: label.into(), colour, points }
    }
}

/// Spans of x shaded across the whole height (e.g. while a breaker was open), with their legend.
#[derive(Debug, Clone)]
pub struct Shading {
    pub label: String,
    pub spans: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub lines: Vec<Line>,
    pub shading: Option<Shading>,
    pub legend: LegendPosition,
}

/// Draws `charts` stacked top to bottom into `path` (`.svg`: SVG, anything else: PNG) of
/// `size` pixels; the error says what plotters could not do.
pub fn write(path: &Path, size: (u32, u32), charts: &[Chart]) -> Result<(), String> {
    register_font();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) {
        draw_all(SVGBackend::new(path, size).into_drawing_area(), charts)
    } else {
        draw_all(BitMapBackend::new(path, size).into_drawing_area(), charts)
    }
}

/// Registers the embedded font once; plotters' `ab_glyph` text looks fonts up by family name.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR).is_err() {
            tracing::warn!("the embedded font could not be registered: the plots will lack text");
        }
    });
}

fn draw_all<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, charts: &[Chart]) -> Result<(), String> {
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    for (area, chart) in root.split_evenly((charts.len().max(1), 1)).iter().zip(charts) {
        draw(area, chart)?;
    }
    root.present().map_err(text)
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let ((x_low, x_high), (y_low, y_high)) = (chart.x_range, chart.y_range);
    let mut c = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_low..x_high, y_low..y_high)
        .map_err(text)?;
    c.configure_mesh().x_desc(&chart.x_label).y_desc(&chart.y_label).label_style(("sans-serif", 14)).draw().map_err(text)?;
    if let Some(shading) = chart.shading.as_ref().filter(|s| !s.spans.is_empty()) {
        let shade = RED.mix(0.15);
        c.draw_series(shading.spans.iter().map(|&(from, to)| Rectangle::new([(from, y_low), (to, y_high)], shade.filled())))
            .map_err(text)?
            .label(shading.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], shade.filled()));
    }
    for line in chart.lines.iter().filter(|l| !l.points.is_empty()) {
        let colour = line.colour;
        c.draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)))
            .map_err(text)?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(chart.legend.clone())
        .draw()
        .map_err(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(title: &str) -> Chart {
        Chart {
            title: title.to_string(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_range: (0.0, 2.0),
            y_range: (0.0, 1.0),
            lines: vec![Line::new("rising", PALETTE[0], vec![(0.0, 0.1), (2.0, 0.9)]), Line::new("empty", PALETTE[1], Vec::new())],
            shading: Some(Shading { label: "shaded".into(), spans: vec![(0.5, 1.0)] }),
            legend: LegendPosition::UpperRight,
        }
    }

    #[test]
    fn png_and_svg_by_extension_with_the_text_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("c.png"), dir.path().join("c.SVG"));
        write(&png, (400, 600), &[chart("first"), chart("second")]).unwrap();
        write(&svg, (400, 300), &[chart("only")]).unwrap();
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.contains("only") && svg.contains("rising") && svg.contains("shaded"), "titles and legends are text");
        assert!(!svg.contains("empty"), "a line without points has no legend");
        let error = write(&dir.path().join("missing/c.png"), (400, 300), &[chart("x")]).unwrap_err();
        assert!(!error.is_empty());
    }
}
