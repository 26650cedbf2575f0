//! Charts as SVG for the experiments' report: box plots (a distribution per method), line
//! charts (a figure against a parameter) and timelines (a bar per job on a clock). Text is written as SVG `<text>` (plotters without its
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

/// A row per job on one clock: queued, then running, and its deadline.
pub struct Timeline<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    /// Top to bottom.
    pub rows: Vec<TimelineRow>,
}

pub struct TimelineRow {
    pub name: String,
    /// (from, to) on the clock.
    pub queued: (f64, f64),
    pub running: (f64, f64),
    pub deadline: Option<f64>,
    /// Ended after its deadline: drawn red.
    pub late: bool,
}

/// A stretch of a row's time and its colour.
type Span = ((f64, f64), RGBColor);

const QUEUED: RGBColor = RGBColor(190, 190, 190);
const ON_TIME: RGBColor = RGBColor(44, 160, 44);
const LATE: RGBColor = RGBColor(214, 39, 40);

/// The timeline as an SVG document, with a legend.
pub fn timeline(chart: &Timeline) -> anyhow::Result<String> {
    ensure!(!chart.rows.is_empty(), "a timeline needs at least one row");
    let end = chart
        .rows
        .iter()
        .flat_map(|row| [row.running.1, row.deadline.unwrap_or_default()])
        .fold(0.0_f64, f64::max);
    let rows = chart.rows.len();
    // Row i is drawn at y = rows - 1 - i, so the first row is on top.
    let y_of = |at: usize| (rows - 1 - at) as f64;
    let names: Vec<&str> = chart.rows.iter().map(|row| row.name.as_str()).collect();
    let mut svg = String::new();
    {
        let height = (rows as u32 * 26 + 120).max(SIZE.1);
        let root = SVGBackend::with_string(&mut svg, (SIZE.0 + 100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let mut plot = ChartBuilder::on(&root)
            .caption(chart.title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(120)
            .build_cartesian_2d(0.0..(end * 1.05).max(1.0), -0.6..(rows as f64 - 0.4))
            .map_err(drawing)?;
        plot.configure_mesh()
            .disable_y_mesh()
            .x_desc(chart.x_label)
            .y_labels(rows)
            .y_label_formatter(&|y| {
                let at = rows as f64 - 1.0 - y.round();
                names
                    .get(at as usize)
                    .filter(|_| at >= 0.0 && (y - y.round()).abs() < 0.01)
                    .map_or_else(String::new, |name| name.to_string())
            })
            .draw()
            .map_err(drawing)?;
        let bar = |at: usize, (from, to): (f64, f64), colour: RGBColor| {
            let y = y_of(at);
            Rectangle::new(
                [(from, y - 0.35), (to.max(from), y + 0.35)],
                colour.filled(),
            )
        };
        let bars =
            |pick: fn(&TimelineRow) -> Option<Span>| {
                chart.rows.iter().enumerate().filter_map(move |(at, row)| {
                    pick(row).map(|(span, colour)| bar(at, span, colour))
                })
            };
        let legend = |colour: RGBColor| {
            move |(x, y): (i32, i32)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled())
        };
        plot.draw_series(bars(|row| Some((row.queued, QUEUED))))
            .map_err(drawing)?
            .label("queued (submitted -> first outcome)")
            .legend(legend(QUEUED));
        plot.draw_series(bars(|row| (!row.late).then_some((row.running, ON_TIME))))
            .map_err(drawing)?
            .label("running, on time")
            .legend(legend(ON_TIME));
        plot.draw_series(bars(|row| row.late.then_some((row.running, LATE))))
            .map_err(drawing)?
            .label("running, past its deadline")
            .legend(legend(LATE));
        let deadlines = chart.rows.iter().enumerate().filter_map(|(at, row)| {
            let x = row.deadline?;
            let y = y_of(at);
            Some(PathElement::new(
                [(x, y - 0.45), (x, y + 0.45)],
                BLACK.stroke_width(2),
            ))
        });
        plot.draw_series(deadlines)
            .map_err(drawing)?
            .label("deadline")
            .legend(|(x, y)| {
                PathElement::new([(x + 8, y - 6), (x + 8, y + 6)], BLACK.stroke_width(2))
            });
        plot.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
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
    fn timeline_draws_a_bar_per_phase_and_names_each_row() {
        let svg = timeline(&Timeline {
            title: "A day",
            x_label: "seconds",
            rows: vec![
                TimelineRow {
                    name: "day-01".into(),
                    queued: (0.0, 2.0),
                    running: (2.0, 10.0),
                    deadline: Some(30.0),
                    late: false,
                },
                TimelineRow {
                    name: "day-02".into(),
                    queued: (5.0, 9.0),
                    running: (9.0, 50.0),
                    deadline: Some(40.0),
                    late: true,
                },
            ],
        })
        .unwrap();
        for text in ["A day", "seconds", "day-01", "day-02", "deadline"] {
            assert!(svg.contains(text), "no {text} in the chart");
        }
        for colour in ["#BEBEBE", "#2CA02C", "#D62728"] {
            assert!(svg.to_uppercase().contains(colour), "no bar in {colour}");
        }
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
        let empty = Timeline {
            title: "",
            x_label: "",
            rows: Vec::new(),
        };
        assert!(timeline(&empty).is_err());
    }
}
