//! `prism-loadgen report`: every experiment's figures as one Markdown page (docs/experiments.md),
//! its charts beside it (docs/experiments/*.svg) and the raw figures as JSON, with the machine,
//! the commit and the date they came from.

use crate::dedup::{self, DedupReport};
use crate::latency::{self, LatencyReport};
use crate::saturation::{self, SaturationReport};
use crate::thumbnails::{self, Machine};
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PAGE: &str = "experiments.md";
pub const FOLDER: &str = "experiments";

#[derive(Serialize)]
pub struct Experiments {
    pub thumbnails: Vec<thumbnails::Report>,
    pub dedup: DedupReport,
    pub saturation: SaturationReport,
    pub latency: LatencyReport,
    /// The command line that ran them.
    pub command: String,
}

/// Writes the page, the charts and results.json under `docs`; returns the page's path.
pub fn write(docs: &Path, experiments: &Experiments) -> anyhow::Result<PathBuf> {
    let folder = docs.join(FOLDER);
    std::fs::create_dir_all(&folder)?;
    let mut charts = Vec::new();
    for report in &experiments.thumbnails {
        charts.push(thumbnails::charts(report)?);
    }
    let dedup_charts = dedup::charts(&experiments.dedup)?;
    for (stem, svg) in charts.iter().flatten().chain(&dedup_charts) {
        let path = folder.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(
        folder.join("results.json"),
        serde_json::to_vec_pretty(experiments)?,
    )?;
    let page = render(
        experiments,
        &charts,
        &dedup_charts,
        &commit(),
        &Machine::this_one(),
    );
    let path = docs.join(PAGE);
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// HEAD's hash, marked when the work tree had changes.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match (git(&["rev-parse", "HEAD"]), git(&["status", "--porcelain"])) {
        (Some(hash), Some(changes)) if !changes.is_empty() => {
            format!("{hash} (with uncommitted changes)")
        }
        (Some(hash), _) => hash,
        _ => "unknown (not a git checkout)".into(),
    }
}

fn image(charts: &[(String, String)], caption: &str) -> String {
    charts
        .iter()
        .map(|(stem, _)| format!("![{caption}]({FOLDER}/{stem}.svg)\n\n"))
        .collect()
}

/// The page (Markdown).
pub fn render(
    experiments: &Experiments,
    thumbnail_charts: &[Vec<(String, String)>],
    dedup_charts: &[(String, String)],
    commit: &str,
    machine: &Machine,
) -> String {
    let mut page = String::new();
    let sizes: Vec<String> = experiments
        .thumbnails
        .iter()
        .map(|r| r.dataset.images.to_string())
        .collect();
    let _ = write!(
        page,
        "# Experiments\n\n\
         Written by `prism-loadgen report` ({}). Machine: {}, {} cores, {:.0} GiB. Commit: `{commit}`. \
         Date: {}. Sizes: thumbnails over {} photos, {} rounds; deduplication over {} files per set; \
         saturation over {} photos.\n\n",
        experiments.command,
        machine.cpu_model,
        machine.cores,
        machine.memory_gib,
        experiments.saturation.date,
        sizes.join(" and "),
        experiments.saturation.rounds,
        experiments.dedup.shares.first().map_or(0, |s| s.files),
        experiments.saturation.images,
    );
    page.push_str("## Goals\n\n");
    let met = |met: bool| if met { "**met**" } else { "**not met**" };
    let saturation = &experiments.saturation;
    let served = saturation.rows.iter().skip(1).map(|r| r.of_limit);
    let lowest = served.fold(f64::INFINITY, f64::min);
    let latency = &experiments.latency;
    let _ = write!(
        page,
        "- Pipeline throughput at saturation >= {:.0}% of the plain-loop limit on the same cores: \
         lowest {:.0}% (see Saturation): {}.\n\
         - Thumbnail upload -> result p50 < {:.0} ms on an idle pipeline, with notifications: p50 \
         {:.0} ms: {}. {}\n\n",
        saturation::GOAL * 100.0,
        lowest * 100.0,
        met(saturation.goal_met),
        latency::GOAL_MS,
        latency.upload_to_result_ms.p50,
        met(latency.goal_met()),
        latency::poll_sentence(latency),
    );

    page.push_str("## Thumbnails: the seed's ways and Prism's\n\n");
    for (report, charts) in experiments.thumbnails.iter().zip(thumbnail_charts) {
        let _ = write!(
            page,
            "### {} photos\n\n{}\n\n{}\n{}\n\n",
            report.dataset.images,
            thumbnails::describe(report),
            thumbnails::table(report).markdown(),
            thumbnails::NOTES,
        );
        for line in thumbnails::goal_lines(report) {
            let _ = writeln!(page, "- {line}");
        }
        page.push('\n');
        page.push_str(&image(charts, "thumbnail chart"));
    }

    let _ = write!(
        page,
        "## Deduplication\n\n{}\n\n{}\nDedup's own time per event, hash + claim, one event at a time:\n\n{}\n{}",
        dedup_description(),
        dedup::shares_table(&experiments.dedup).markdown(),
        dedup::overhead_table(&experiments.dedup).markdown(),
        image(dedup_charts, "deduplication chart"),
    );

    let _ = write!(
        page,
        "## Saturation\n\n{}\n\n{}\n{}\n\n",
        saturation_description(),
        saturation::table(saturation).markdown(),
        saturation::goal_line(saturation),
    );

    let _ = write!(
        page,
        "## Idle latency\n\n{}\n\n{}\n{}\n\n",
        latency::DESCRIPTION,
        latency::table(latency).markdown(),
        latency::poll_sentence(latency),
    );
    page.push_str(
        "## Not in this report\n\n\
         `predict` (the seed's JMeter plan) needs a running gateway and is run by hand: \
         `prism-loadgen predict --markdown` (its last figures are in the README). There is no `day` \
         experiment yet.\n",
    );
    page
}

fn dedup_description() -> &'static str {
    "`prism run --stages thumbnail` (fresh state each run) over sets of the same number of files with \
     a share of exact copies, as they are (every copy recognised) and with each copy made new content \
     by a JPEG comment (the same pixels and work, nothing to recognise: no deduplication). Saved: one \
     minus their ratio."
}

fn saturation_description() -> &'static str {
    "The limit: the thumbnail stage's own code (`ThumbnailStage`) in a plain loop, one thread per \
     core, photos already in memory. Against it, every photo queued at once: `prism` is `prism run \
     --stages thumbnail` (files in and out), `served-1` dedup and one thumbnail replica (a job per \
     core) over the real servers, which share the same cores."
}
