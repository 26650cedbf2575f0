//! `prism-loadgen report --quick`: every experiment at the smallest sizes, over the real servers,
//! Pillow and the photos that deploy/local/install.sh provides (the shared servers, like the
//! end-to-end test). Checks that the page, its charts and its figures are written and well formed;
//! what they say is the business of a real run (docs/experiments.md).

use prism_e2e::{loadgen_binary, prism_binary};
use quick_xml::Reader;
use quick_xml::events::Event;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// The page's section of each experiment, by heading.
const EXPERIMENTS: [&str; 6] = [
    "Thumbnails: the seed's ways and Prism's",
    "Deduplication",
    "Saturation",
    "Idle latency",
    "Batch jobs",
    "A day of batch jobs",
];

#[test]
fn a_quick_report_writes_its_page_charts_and_figures() {
    let docs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = Command::new(loadgen_binary())
        .args(["report", "--quick", "--docs"])
        .arg(docs.path())
        .arg("--prism")
        .arg(prism_binary())
        .arg("--work")
        .arg(work.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("prism-loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "prism-loadgen report --quick failed:\n{}",
        tail(&stderr, 60)
    );

    let page = std::fs::read_to_string(docs.path().join("experiments.md")).unwrap();
    assert!(page.contains("A smoke run (`--quick`)"), "{page}");
    let sections = sections(&page);
    for heading in std::iter::once("Goals").chain(EXPERIMENTS) {
        assert!(
            sections.contains_key(heading),
            "no section {heading:?} in\n{page}"
        );
    }

    // Every goal of issue #17 (and #16's batch-job goals) is decided, with its figure.
    let goals: Vec<&str> = sections["Goals"]
        .lines()
        .filter(|line| line.starts_with("- "))
        .collect();
    assert_eq!(goals.len(), 5, "{goals:#?}");
    for goal in &goals {
        assert!(
            goal.contains("**met**") || goal.contains("**not met**"),
            "undecided: {goal}"
        );
        assert!(
            goal.chars().any(|c| c.is_ascii_digit()),
            "no figure: {goal}"
        );
    }

    // Each experiment's tables have rows of figures.
    for section in EXPERIMENTS {
        let rows = table_rows(sections[section]);
        assert!(
            !rows.is_empty(),
            "no table in {section}:\n{}",
            sections[section]
        );
        for row in &rows {
            assert!(row.len() >= 3, "{section}: short row {row:?}");
            assert!(
                row.iter().skip(1).any(|cell| cell.parse::<f64>().is_ok()),
                "{section}: no number in {row:?}"
            );
        }
    }

    // Every chart the page shows exists and is well-formed SVG with text and drawing.
    let charts: Vec<&str> = page
        .match_indices("](experiments/")
        .map(|(at, _)| {
            let link = &page[at + 2..];
            &link[..link.find(')').unwrap()]
        })
        .collect();
    // Per-image box plot and scalability chart, dedup, the day's timeline.
    assert!(charts.len() >= 4, "{charts:?}");
    for chart in charts {
        check_svg(&docs.path().join(chart));
    }

    let figures: serde_json::Value = serde_json::from_slice(
        &std::fs::read(docs.path().join("experiments/results.json")).unwrap(),
    )
    .unwrap();
    for experiment in [
        "thumbnails",
        "dedup",
        "saturation",
        "latency",
        "jobs",
        "day",
    ] {
        assert!(
            !figures[experiment].is_null(),
            "results.json has no {experiment}"
        );
    }
    assert!(
        figures["saturation"]["rows"][0]["images_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// The page's `## ` sections by heading.
fn sections(page: &str) -> BTreeMap<&str, &str> {
    let starts: Vec<usize> = page.match_indices("\n## ").map(|(at, _)| at + 1).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts.get(i + 1).copied().unwrap_or(page.len());
            let body = &page[start + 3..end];
            let (heading, rest) = body.split_once('\n').unwrap_or((body, ""));
            (heading.trim(), rest)
        })
        .collect()
}

/// The body rows of the Markdown tables in `text` (header and rule left out), cells trimmed.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    (0..lines.len())
        .filter(|&i| lines[i].starts_with('|') && !is_rule(lines[i]) && below_a_rule(&lines, i))
        .map(|i| {
            lines[i]
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect()
        })
        .collect()
}

fn is_rule(line: &str) -> bool {
    line.starts_with("| ---")
}

/// Whether line `i` is in a table whose rule came earlier, with only rows between.
fn below_a_rule(lines: &[&str], i: usize) -> bool {
    lines[..i]
        .iter()
        .rev()
        .take_while(|line| line.starts_with('|'))
        .any(|line| is_rule(line))
}

/// Parses `path` as XML: an `<svg>` root, some `<text>`, some shapes.
fn check_svg(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = Reader::from_str(&svg);
    let (mut root, mut texts, mut shapes) = (None, 0, 0);
    loop {
        match reader.read_event() {
            Ok(Event::Start(element)) | Ok(Event::Empty(element)) => {
                let name = String::from_utf8_lossy(element.name().as_ref()).to_string();
                match name.as_str() {
                    "text" => texts += 1,
                    "rect" | "line" | "polyline" | "path" | "circle" | "polygon" => shapes += 1,
                    _ => {}
                }
                root.get_or_insert(name);
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(error) => panic!("{} is not well-formed XML: {error}", path.display()),
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    assert!(
        texts > 0 && shapes > 0,
        "{}: {texts} texts, {shapes} shapes",
        path.display()
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
