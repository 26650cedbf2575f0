//! Charts as SVG for the experiments' report: box plots (a distribution per method) and line
//! charts (a figure against a parameter). Text is written as SVG `<text>` (plotters without its
//! `ttf` feature), so drawing needs no font files and the browser picks the font.

use anyhow::{anyhow, ensure};
use plotters::coord::Shift;
use plotters::prelude::*;

const SIZE: (u32, u32) = (800, 480);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One box per group: the quartiles, and whiskers to the lowest and highest values within 1.5
/// interquartile ranges of the box (plotters' `Quartiles`).
pub struct BoxPlot<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// (group name, its values); a group without values is drawn as an empty slot.
    pub groups: Vec<(String, Vec<f64>)>,
}

/// A line per series, each point marked.
pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A reference line (an ideal, a limit) rather than a measurement: drawn thin and grey.
    pub reference: bool,
}

/// The box plot as an SVG document.
pub fn box_plot(chart: &BoxPlot) -> anyhow::Result<String> {
    ensure!(
        !chart.groups.is_empty(),
        "a box plot needs at least one group"
    );
    let highest = chart
        .groups
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(0.0_f64, f64::max);
    let names: Vec<&str> = chart.groups.iter().map(|(name, _)| name.as_str()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut plot = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (0..names.len() as i32 - 1).into_segmented(),
                0.0..(highest * 1.1).max(1.0) as f32,
            )
            .map_err(drawing)?;
        plot.configure_mesh()
            .disable_x_mesh()
            .y_desc(chart.y_label)
            .x_labels(names.len())
            .x_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(at) | SegmentValue::Exact(at) => names
                    .get(*at as usize)
                    .map_or_else(String::new, |n| n.to_string()),
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(drawing)?;
        let boxes = chart
            .groups
            .iter()
            .enumerate()
            .filter(|(_, (_, values))| !values.is_empty())
            .map(|(at, (_, values))| {
                Boxplot::new_vertical(SegmentValue::CenterOf(at as i32), &Quartiles::new(values))
                    .width(40)
                    .whisker_width(0.5)
                    .style(PALETTE[at % PALETTE.len()].stroke_width(2))
            });
        plot.draw_series(boxes).map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

/// The line chart as an SVG document, with a legend naming each series.
pub fn line_chart(chart: &LineChart) -> anyhow::Result<String> {
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    ensure!(
        points().next().is_some(),
        "a line chart needs at least one point"
    );
    let (x_low, x_high) = bounds(points().map(|p| p.0));
    let (_, y_high) = bounds(points().map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        draw_lines(&root, chart, (x_low, x_high), y_high)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn draw_lines(
    root: &DrawingArea<SVGBackend, Shift>,
    chart: &LineChart,
    (x_low, x_high): (f64, f64),
    y_high: f64,
) -> anyhow::Result<()> {
    let x_margin = ((x_high - x_low) * 0.05).max(0.1);
    let mut plot = ChartBuilder::on(root)
        .caption(chart.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x_low - x_margin)..(x_high + x_margin),
            0.0..(y_high * 1.1).max(1e-9),
        )
        .map_err(drawing)?;
    plot.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .draw()
        .map_err(drawing)?;
    let mut measured = 0;
    for series in &chart.series {
        let style = if series.reference {
            RGBColor(128, 128, 128).stroke_width(1)
        } else {
            measured += 1;
            PALETTE[(measured - 1) % PALETTE.len()].stroke_width(2)
        };
        plot.draw_series(LineSeries::new(series.points.iter().copied(), style))
            .map_err(drawing)?
            .label(series.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        if !series.reference {
            let marks = series
                .points
                .iter()
                .map(|&point| Circle::new(point, 4, style.filled()));
            plot.draw_series(marks).map_err(drawing)?;
        }
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
        (low.min(v), high.max(v))
    })
}

fn drawing<E: std::error::Error + Send + Sync>(error: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing a chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_plot_draws_a_box_and_a_label_per_group_as_svg_text() {
        let svg = box_plot(&BoxPlot {
            title: "Per-image time",
            y_label: "ms",
            groups: vec![
                ("pillow-seq".into(), vec![90.0, 95.0, 100.0, 120.0, 300.0]),
                ("prism".into(), vec![40.0, 45.0, 50.0, 55.0, 60.0]),
            ],
        })
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        // plotters writes each text on a line of its own inside its <text> element.
        for text in ["Per-image time", "pillow-seq", "prism", "\nms\n"] {
            assert!(svg.contains(text), "no {text:?} in the chart");
        }
        assert!(svg.contains("<text"), "text is SVG text");
        // Each box is a rectangle of the group's colour.
        for colour in ["#1F77B4", "#FF7F0E"] {
            assert!(
                svg.to_uppercase().contains(colour),
                "no box in {colour}:\n{svg}"
            );
        }
    }

    #[test]
    fn line_chart_draws_every_series_with_its_legend() {
        let svg = line_chart(&LineChart {
            title: "Scaling",
            x_label: "replicas",
            y_label: "images/s",
            series: vec![
                Series {
                    name: "measured".into(),
                    points: vec![(1.0, 10.0), (2.0, 18.0), (4.0, 30.0)],
                    reference: false,
                },
                Series {
                    name: "ideal".into(),
                    points: vec![(1.0, 10.0), (4.0, 40.0)],
                    reference: true,
                },
            ],
        })
        .unwrap();
        for text in ["Scaling", "replicas", "images/s", "measured", "ideal"] {
            assert!(svg.contains(text), "no {text} in the chart");
        }
        assert!(svg.contains("<polyline"), "the lines");
        assert_eq!(
            svg.matches("<circle").count(),
            3,
            "one mark per measured point"
        );
    }

    #[test]
    fn empty_charts_are_refused() {
        let empty = BoxPlot {
            title: "",
            y_label: "",
            groups: Vec::new(),
        };
        assert!(box_plot(&empty).is_err());
        let empty = LineChart {
            title: "",
            x_label: "",
            y_label: "",
            series: Vec::new(),
        };
        assert!(line_chart(&empty).is_err());
    }
}
