//! The samples of a run, summed up: min and median per measure and scenario, ratios to
//! plain TCP, written as JSON, as Markdown, and into docs/BENCHMARKS.md.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};

/// One machine's run (host or VM): facts about it and every sample, in order.
pub struct Run {
    pub name: String,
    pub info: Vec<(String, String)>,
    samples: Vec<Sample>,
}

struct Sample {
    scenario: String,
    measure: String,
    value: f64,
}

impl Run {
    /// Reads the `BENCH` and `BENCH-INFO` lines of a suite's output.
    pub fn parse(name: &str, output: &str) -> Self {
        let mut run = Run {
            name: name.to_string(),
            info: Vec::new(),
            samples: Vec::new(),
        };
        for line in output.lines().map(str::trim) {
            if let Some((key, value)) = line
                .strip_prefix("BENCH-INFO ")
                .and_then(|kv| kv.split_once('='))
            {
                run.info.push((key.into(), value.into()));
            } else if let Some([scenario, measure, value]) = line
                .strip_prefix("BENCH ")
                .map(|s| s.split_whitespace().collect::<Vec<_>>())
                .as_deref()
                .and_then(|f| <[&str; 3]>::try_from(f).ok())
                && let Ok(value) = value.parse()
            {
                run.samples.push(Sample {
                    scenario: scenario.to_string(),
                    measure: measure.to_string(),
                    value,
                });
            }
        }
        run
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Scenarios in the order they ran.
    fn scenarios(&self) -> Vec<&str> {
        first_seen(self.samples.iter().map(|s| s.scenario.as_str()))
    }

    /// Each measure with its statistics per scenario (in `scenarios` order).
    fn table(&self) -> Vec<(&str, Vec<Option<Stats>>)> {
        let scenarios = self.scenarios();
        first_seen(self.samples.iter().map(|s| s.measure.as_str()))
            .into_iter()
            .map(|measure| {
                let cells = scenarios
                    .iter()
                    .map(|scenario| {
                        Stats::of(
                            self.samples
                                .iter()
                                .filter(|s| s.measure == measure && s.scenario == *scenario)
                                .map(|s| s.value)
                                .collect(),
                        )
                    })
                    .collect();
                (measure, cells)
            })
            .collect()
    }
}

fn first_seen<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

struct Stats {
    samples: Vec<f64>,
    min: f64,
    median: f64,
}

impl Stats {
    fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        samples.shrink_to_fit();
        Some(Stats {
            min: sorted[0],
            median,
            samples,
        })
    }

    /// This median over plain TCP's.
    fn ratio(&self, plain: Option<&Stats>) -> Option<f64> {
        plain
            .filter(|p| p.median != 0.0)
            .map(|p| self.median / p.median)
    }
}

/// A measure's name and unit from its id's suffix.
fn unit(measure: &str) -> (&str, &str) {
    const UNITS: &[(&str, &str)] = &[
        ("_gbps", "Gbit/s"),
        ("_s_per_gib", "CPU s/GiB"),
        ("_s_per_1000_newconn", "CPU s/1000 conns"),
        ("_bytes_per_byte", "B copied/B moved"),
        ("_kib_per_conn", "KiB/conn"),
        ("_rps", "req/s"),
        ("_us", "µs"),
        ("_ms", "ms"),
    ];
    UNITS
        .iter()
        .find_map(|(suffix, unit)| Some((measure.strip_suffix(suffix)?, *unit)))
        .unwrap_or((measure, ""))
}

/// Writes target/bench/results.json and results.md, and the run into docs/BENCHMARKS.md.
pub fn write(workspace: &Path, runs: &[Run]) -> Result<()> {
    let dir = workspace.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), json(runs))?;
    let markdown = markdown(runs);
    std::fs::write(dir.join("results.md"), &markdown)?;
    update_doc(&workspace.join("docs/BENCHMARKS.md"), &markdown)?;
    println!("{markdown}");
    Ok(())
}

fn json(runs: &[Run]) -> String {
    let runs: Vec<String> = runs.iter().map(run_json).collect();
    format!("{{\n  \"runs\": [\n{}\n  ]\n}}\n", runs.join(",\n"))
}

fn run_json(run: &Run) -> String {
    let info: Vec<String> = run
        .info
        .iter()
        .map(|(k, v)| format!("{}: {}", quoted(k), quoted(v)))
        .collect();
    let scenarios = run.scenarios();
    let measures: Vec<String> = run
        .table()
        .iter()
        .map(|(measure, cells)| {
            let results: Vec<String> = scenarios
                .iter()
                .zip(cells)
                .filter_map(|(scenario, cell)| {
                    let stats = cell.as_ref()?;
                    let samples: Vec<String> = stats.samples.iter().map(|v| number(*v)).collect();
                    let ratio = stats
                        .ratio(cells[0].as_ref())
                        .map_or("null".into(), number);
                    Some(format!(
                        "{}: {{\"samples\": [{}], \"min\": {}, \"median\": {}, \"ratio_to_plain\": {ratio}}}",
                        quoted(scenario),
                        samples.join(", "),
                        number(stats.min),
                        number(stats.median)
                    ))
                })
                .collect();
            format!(
                "      {{\"measure\": {}, \"unit\": {}, \"results\": {{{}}}}}",
                quoted(measure),
                quoted(unit(measure).1),
                results.join(", ")
            )
        })
        .collect();
    format!(
        "    {{\"name\": {}, \"info\": {{{}}},\n     \"measures\": [\n{}\n     ]}}",
        quoted(&run.name),
        info.join(", "),
        measures.join(",\n")
    )
}

fn quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        "null".into()
    }
}

/// One table per run: median (min) per scenario, and the median's ratio to plain TCP.
fn markdown(runs: &[Run]) -> String {
    let mut md = String::new();
    for run in runs {
        let scenarios = run.scenarios();
        let _ = writeln!(md, "### {}\n", run.name);
        for (key, value) in &run.info {
            let _ = writeln!(md, "- {key}: {value}");
        }
        let _ = writeln!(
            md,
            "\nmedian (min) of the repeats; ×: median over plain TCP's.\n\n| measure | unit | {} |\n| --- | --- |{}",
            scenarios.join(" | "),
            " ---: |".repeat(scenarios.len())
        );
        for (measure, cells) in run.table() {
            let (name, unit) = unit(measure);
            // Plain TCP runs first; its own cell needs no ratio.
            let row: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    let Some(s) = cell else { return "–".into() };
                    let cell = format!("{} ({})", short(s.median), short(s.min));
                    match s.ratio(cells[0].as_ref()).filter(|_| i > 0) {
                        Some(r) => format!("{cell} ×{}", short(r)),
                        None => cell,
                    }
                })
                .collect();
            let _ = writeln!(md, "| {name} | {unit} | {} |", row.join(" | "));
        }
        md.push('\n');
    }
    md
}

/// Three significant digits or so.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 0.1 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

const BEGIN: &str = "<!-- bench:begin (written by cargo xtask bench) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of the document, keeping what people wrote around it.
fn update_doc(path: &Path, generated: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path)
        .unwrap_or_else(|_| format!("# Benchmarks\n\n{BEGIN}\n{END}\n"));
    let (head, rest) = doc
        .split_once(BEGIN)
        .with_context(|| format!("{} lacks the line {BEGIN}", path.display()))?;
    let (_, tail) = rest
        .split_once(END)
        .with_context(|| format!("{} lacks the line {END}", path.display()))?;
    std::fs::write(path, format!("{head}{BEGIN}\n{generated}{END}{tail}"))?;
    Ok(())
}
