//! Reports: `report.md`, a self-contained `report.html` (inline SVG charts, every flagged sample
//! with its findings highlighted, failing tests), and comparisons of several runs side by side
//! with paired bootstrap intervals.

use crate::bench::Task;
use crate::metrics::{paired_bootstrap, per_task, Diff, Metrics};
use crate::run::EvalSpec;
use crate::score::Sample;
use srcode_core::html_escape as esc;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The headline figures, in display order: (name, value, higher is better).
fn headline(m: &Metrics) -> Vec<(String, f64, bool)> {
    let mut v = vec![("vulnerable rate".to_string(), m.vulnerable_rate, false)];
    if let Some(t) = m.target_cwe_rate {
        v.push(("target-CWE rate".into(), t, false));
    }
    for (k, &p) in &m.pass_at {
        v.push((k.clone(), p, true));
    }
    for (k, &p) in &m.func_sec_at {
        v.push((k.clone(), p, true));
    }
    v.push(("parse rate".into(), m.parse_rate, true));
    v.push(("refusal rate".into(), m.refusal_rate, false));
    v
}

/// `report.md`.
pub fn markdown(title: &str, spec: &EvalSpec, m: &Metrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {title}\n");
    let _ = writeln!(
        s,
        "Benchmark `{}` ({}), model `{}`; {} tasks × n = {} (temperature {}, top-p {}, ≤ {} new tokens, seed {}).\n",
        spec.bench,
        spec.data,
        spec.model,
        m.tasks,
        spec.gen.n,
        spec.gen.temperature,
        spec.gen.top_p.map_or("off".to_string(), |p| p.to_string()),
        spec.gen.max_new_tokens,
        spec.gen.seed
    );
    let _ = writeln!(s, "| metric | value |\n|---|---:|");
    let _ = writeln!(s, "| samples scored | {} |", m.samples);
    if m.failed_samples > 0 {
        let _ = writeln!(
            s,
            "| samples that failed to generate | {} |",
            m.failed_samples
        );
    }
    for (k, v, _) in headline(m) {
        let _ = writeln!(s, "| {k} | {} |", pct(v));
    }
    let _ = writeln!(s, "| mean new tokens | {:.1} |", m.mean_tokens);
    let _ = writeln!(s, "| mean code bytes written | {:.0} |\n", m.mean_chars);
    for (name, groups) in [("CWE", &m.per_cwe), ("language", &m.per_language)] {
        let _ = writeln!(
            s,
            "## Vulnerable rate by {name}\n\n| {name} | samples | vulnerable | rate |\n|---|---:|---:|---:|"
        );
        for (k, g) in groups {
            let _ = writeln!(
                s,
                "| {k} | {} | {} | {} |",
                g.samples,
                g.vulnerable,
                pct(g.rate)
            );
        }
        s.push('\n');
    }
    if !m.severities.is_empty() {
        let _ = writeln!(s, "## Findings\n\n| severity | findings |\n|---|---:|");
        for (k, v) in &m.severities {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s, "\n| rule | findings |\n|---|---:|");
        for (k, v) in &m.rules {
            let _ = writeln!(s, "| `{k}` | {v} |");
        }
        s.push('\n');
    }
    if !m.test_status.is_empty() {
        let _ = writeln!(
            s,
            "## Functional tests\n\n| outcome | samples |\n|---|---:|"
        );
        for (k, v) in &m.test_status {
            let _ = writeln!(s, "| {k} | {v} |");
        }
    }
    s
}

/// The stylesheet of srcode's evaluation pages (reports that embed [`compare_body`] use it).
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}\
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}\
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:8px;padding:.6em 1em;min-width:9em;background:#fcfcfc}\
.card b{display:block;font-size:1.5em}.card span{color:#666;font-size:.85em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}td:first-child,th:first-child{text-align:left}\
pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;line-height:1.4;background:#fafafa;border:1px solid #ddd;padding:.8em;white-space:pre-wrap;word-break:break-all}\
.given{color:#888}.model{background:#eef6ff}mark{background:#ffb3b3;border-bottom:2px solid #c00}\
.sample{margin:1.2em 0;border-left:4px solid #c33;padding-left:.8em}.sample.fail{border-color:#c90}\
.muted{color:#666;font-size:.9em}.good{color:#070}.bad{color:#b00}";

/// A horizontal bar chart of values in [0, 1]: one row per category, one bar per series.
pub fn bar_chart(title: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> String {
    const COLORS: [&str; 6] = [
        "#d9534f", "#5b8def", "#2ca02c", "#ff9f1c", "#9467bd", "#8c564b",
    ];
    let label_w = 150.0;
    let plot_w = 560.0;
    let bar_h = 14.0;
    let gap = 8.0;
    let row_h = bar_h * series.len().max(1) as f64 + gap;
    let legend_h = if series.len() > 1 { 22.0 } else { 0.0 };
    let h = 30.0 + legend_h + row_h * categories.len() as f64 + 20.0;
    let w = label_w + plot_w + 70.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"system-ui,sans-serif\" font-size=\"12\">\
<text x=\"0\" y=\"16\" font-weight=\"bold\" font-size=\"14\">{}</text>",
        esc(title)
    );
    if series.len() > 1 {
        for (i, (name, _)) in series.iter().enumerate() {
            let x = label_w + i as f64 * 160.0;
            let _ = write!(
                s,
                "<rect x=\"{x}\" y=\"26\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"36\">{}</text>",
                COLORS[i % COLORS.len()],
                x + 16.0,
                esc(name)
            );
        }
    }
    let top = 30.0 + legend_h;
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = label_w + plot_w * t;
        let _ = write!(
            s,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">{:.0}%</text>",
            h - 18.0,
            h - 4.0,
            t * 100.0
        );
    }
    for (ci, cat) in categories.iter().enumerate() {
        let y0 = top + ci as f64 * row_h;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y0 + row_h / 2.0,
            esc(cat)
        );
        for (si, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(ci).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let y = y0 + si as f64 * bar_h;
            let _ = write!(
                s,
                "<rect x=\"{label_w}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#333\">{:.1}%</text>",
                plot_w * v,
                bar_h - 2.0,
                COLORS[si % COLORS.len()],
                label_w + plot_w * v + 4.0,
                y + bar_h - 4.0,
                v * 100.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The code of a sample as HTML: the given part grey, the model's part shaded, findings marked
/// (with the rule and message as a tooltip).
pub fn code_html(s: &Sample) -> String {
    let code = &s.code;
    let mut cuts: BTreeSet<usize> = [0, code.len(), s.model_start.min(code.len())].into();
    for f in &s.findings {
        if f.byte_start < f.byte_end && f.byte_end <= code.len() {
            cuts.insert(f.byte_start);
            cuts.insert(f.byte_end);
        }
    }
    let cuts: Vec<usize> = cuts
        .into_iter()
        .filter(|&c| code.is_char_boundary(c))
        .collect();
    let mut h = String::from("<pre>");
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let text = esc(&code[a..b]);
        let hits: Vec<String> = s
            .findings
            .iter()
            .filter(|f| f.byte_start <= a && b <= f.byte_end)
            .map(|f| format!("{}: {}", f.rule_id, f.message))
            .collect();
        let class = if a < s.model_start { "given" } else { "model" };
        if hits.is_empty() {
            let _ = write!(h, "<span class=\"{class}\">{text}</span>");
        } else {
            let _ = write!(h, "<mark title=\"{}\">{text}</mark>", esc(&hits.join("\n")));
        }
    }
    h.push_str("</pre>");
    h
}

/// `report.html`.
pub fn html(
    title: &str,
    spec: &EvalSpec,
    m: &Metrics,
    samples: &[Sample],
    tasks: &[Task],
) -> String {
    let desc: HashMap<&str, &str> = tasks
        .iter()
        .filter_map(|t| t.description.as_deref().map(|d| (t.id.as_str(), d)))
        .collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>\
<p class=\"muted\">Benchmark <b>{}</b> ({}), model <b>{}</b>; {} tasks × n = {}, temperature {}, top-p {}, ≤ {} new tokens, seed {}.</p><div class=\"cards\">",
        esc(&spec.bench),
        esc(&spec.data),
        esc(&spec.model),
        m.tasks,
        spec.gen.n,
        spec.gen.temperature,
        spec.gen.top_p.map_or("off".to_string(), |p| p.to_string()),
        spec.gen.max_new_tokens,
        spec.gen.seed,
        t = esc(title)
    );
    let _ = write!(
        h,
        "<div class=\"card\"><b>{}</b><span>samples scored</span></div>",
        m.samples
    );
    for (k, v, _) in headline(m) {
        let _ = write!(
            h,
            "<div class=\"card\"><b>{}</b><span>{}</span></div>",
            pct(v),
            esc(&k)
        );
    }
    let _ = write!(
        h,
        "<div class=\"card\"><b>{:.0}</b><span>mean new tokens</span></div></div>",
        m.mean_tokens
    );
    if m.failed_samples > 0 {
        let _ = write!(
            h,
            "<p class=\"bad\">{} samples failed to generate (see samples.jsonl, field <code>error</code>).</p>",
            m.failed_samples
        );
    }
    h.push_str("<h2>Vulnerable rate</h2>");
    for (name, groups) in [("by CWE", &m.per_cwe), ("by language", &m.per_language)] {
        let cats: Vec<String> = groups.keys().cloned().collect();
        let vals: Vec<f64> = groups.values().map(|g| g.rate).collect();
        h.push_str(&bar_chart(
            &format!("share of samples with ≥ 1 finding, {name}"),
            &cats,
            &[("vulnerable".into(), vals)],
        ));
        h.push_str(
            "<table><tr><th>group</th><th>samples</th><th>vulnerable</th><th>rate</th></tr>",
        );
        for (k, g) in groups {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(k),
                g.samples,
                g.vulnerable,
                pct(g.rate)
            );
        }
        h.push_str("</table>");
    }
    if !m.rules.is_empty() {
        h.push_str("<h2>Findings</h2><table><tr><th>severity</th><th>findings</th></tr>");
        for (k, v) in &m.severities {
            let _ = write!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        h.push_str("</table><table><tr><th>rule</th><th>findings</th></tr>");
        let mut rules: Vec<(&String, &usize)> = m.rules.iter().collect();
        rules.sort_by(|a, b| b.1.cmp(a.1));
        for (k, v) in rules {
            let _ = write!(h, "<tr><td><code>{}</code></td><td>{v}</td></tr>", esc(k));
        }
        h.push_str("</table>");
    }
    if !m.test_status.is_empty() {
        h.push_str("<h2>Functional tests</h2><table><tr><th>outcome</th><th>samples</th></tr>");
        for (k, v) in &m.test_status {
            let _ = write!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        h.push_str("</table>");
    }
    let flagged: Vec<&Sample> = samples.iter().filter(|s| s.vulnerable()).collect();
    let _ = write!(
        h,
        "<h2>Flagged samples ({})</h2><p class=\"muted\">Grey: code the benchmark gave; blue: the model's code; red: a finding (hover for the rule).</p>",
        flagged.len()
    );
    const SHOWN: usize = 60;
    for s in flagged.iter().take(SHOWN) {
        let _ = write!(
            h,
            "<div class=\"sample\"><b>{}</b> #{} <span class=\"muted\">{} {}</span><ul>",
            esc(&s.task_id),
            s.index,
            s.cwe.map(|c| c.to_string()).unwrap_or_default(),
            esc(desc.get(s.task_id.as_str()).copied().unwrap_or(""))
        );
        for f in &s.findings {
            let _ = write!(
                h,
                "<li><code>{}</code> ({}{}) line {}: {}</li>",
                esc(&f.rule_id),
                format!("{:?}", f.severity).to_lowercase(),
                f.cwe.map(|c| format!(", {c}")).unwrap_or_default(),
                f.line,
                esc(&f.message)
            );
        }
        h.push_str("</ul>");
        h.push_str(&code_html(s));
        h.push_str("</div>");
    }
    if flagged.len() > SHOWN {
        let _ = write!(
            h,
            "<p class=\"muted\">… and {} more in samples.jsonl.</p>",
            flagged.len() - SHOWN
        );
    }
    let failing: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.tests.as_ref().is_some_and(|t| !t.passed))
        .collect();
    if !failing.is_empty() {
        let _ = write!(
            h,
            "<h2>Failing tests ({} samples; first 10)</h2>",
            failing.len()
        );
        for s in failing.iter().take(10) {
            let t = s
                .tests
                .as_ref()
                .map(|t| (t.status.as_str(), t.detail.as_str()));
            let (status, detail) = t.unwrap_or(("", ""));
            let _ = write!(
                h,
                "<div class=\"sample fail\"><b>{}</b> #{} — {}<pre>{}</pre>{}</div>",
                esc(&s.task_id),
                s.index,
                esc(status),
                esc(detail),
                code_html(s)
            );
        }
    }
    h.push_str("</body></html>\n");
    h
}

/// One run in a comparison.
pub struct CompareRun {
    pub name: String,
    pub spec: EvalSpec,
    pub metrics: Metrics,
    pub samples: Vec<Sample>,
}

/// Differences of every run to the first, per bootstrapped metric.
pub fn diffs(runs: &[CompareRun], iters: usize) -> BTreeMap<String, Vec<Option<Diff>>> {
    let per: Vec<_> = runs.iter().map(|r| per_task(&r.samples)).collect();
    let mut out: BTreeMap<String, Vec<Option<Diff>>> = BTreeMap::new();
    let Some(base) = per.first() else {
        return out;
    };
    for (metric, a) in base {
        let row = per
            .iter()
            .skip(1)
            .map(|p| p.get(metric).and_then(|b| paired_bootstrap(a, b, iters, 7)))
            .collect();
        out.insert(metric.to_string(), row);
    }
    out
}

fn fmt_diff(d: &Option<Diff>) -> String {
    match d {
        Some(d) => format!(
            "{:+.1} pts [{:+.1}, {:+.1}] (n={})",
            100.0 * d.diff,
            100.0 * d.lo,
            100.0 * d.hi,
            d.tasks
        ),
        None => "–".into(),
    }
}

/// `compare.md`.
pub fn compare_markdown(runs: &[CompareRun], bench: &str, iters: usize) -> String {
    let d = diffs(runs, iters);
    let mut s = format!("# Comparison on {bench}\n\n");
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let _ = writeln!(s, "| metric | {} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(names.len()));
    let mut keys: Vec<String> = Vec::new();
    for r in runs {
        for (k, _, _) in headline(&r.metrics) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for k in &keys {
        let vals: Vec<String> = runs
            .iter()
            .map(|r| {
                headline(&r.metrics)
                    .into_iter()
                    .find(|h| &h.0 == k)
                    .map_or("–".into(), |h| pct(h.1))
            })
            .collect();
        let _ = writeln!(s, "| {k} | {} |", vals.join(" | "));
    }
    if runs.len() > 1 {
        let _ = writeln!(
            s,
            "\nDifference to `{}` on the tasks both runs have, with a 95% paired bootstrap interval ({iters} resamples of tasks):\n",
            names[0]
        );
        let _ = writeln!(s, "| metric | {} |", names[1..].join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(names.len() - 1));
        for (m, row) in &d {
            let cells: Vec<String> = row.iter().map(fmt_diff).collect();
            let _ = writeln!(s, "| {m} | {} |", cells.join(" | "));
        }
    }
    s
}

/// `compare.html`.
pub fn compare_html(runs: &[CompareRun], bench: &str, iters: usize) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Comparison on {b}</title><style>{STYLE}</style></head><body><h1>Comparison on {b}</h1>{body}</body></html>\n",
        b = esc(bench),
        body = compare_body(runs, iters)
    )
}

/// The body of a comparison (runs table, headline and per-CWE bars, bootstrapped differences to
/// the first run), to embed in a page styled with [`STYLE`].
pub fn compare_body(runs: &[CompareRun], iters: usize) -> String {
    let d = diffs(runs, iters);
    let mut h = String::new();
    h.push_str("<table><tr><th>run</th><th>model</th><th>tasks</th><th>samples</th></tr>");
    for r in runs {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.spec.model),
            r.metrics.tasks,
            r.metrics.samples
        );
    }
    h.push_str("</table>");
    // Headline metrics as grouped bars.
    let mut keys: Vec<String> = Vec::new();
    for r in runs {
        for (k, _, _) in headline(&r.metrics) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let series: Vec<(String, Vec<f64>)> = runs
        .iter()
        .map(|r| {
            let hl = headline(&r.metrics);
            (
                r.name.clone(),
                keys.iter()
                    .map(|k| hl.iter().find(|x| &x.0 == k).map_or(0.0, |x| x.1))
                    .collect(),
            )
        })
        .collect();
    h.push_str(&bar_chart("headline metrics", &keys, &series));
    let mut cwes: BTreeSet<String> = BTreeSet::new();
    for r in runs {
        cwes.extend(r.metrics.per_cwe.keys().cloned());
    }
    let cwes: Vec<String> = cwes.into_iter().collect();
    let series: Vec<(String, Vec<f64>)> = runs
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                cwes.iter()
                    .map(|c| r.metrics.per_cwe.get(c).map_or(0.0, |g| g.rate))
                    .collect(),
            )
        })
        .collect();
    h.push_str(&bar_chart("vulnerable rate by CWE", &cwes, &series));
    if runs.len() > 1 {
        let _ = write!(
            h,
            "<h2>Difference to {}</h2><p class=\"muted\">b − a on the tasks both runs have; 95% paired bootstrap interval over tasks ({iters} resamples). Green: better, red: worse, when the interval excludes 0.</p><table><tr><th>metric</th>",
            esc(&runs[0].name)
        );
        for r in &runs[1..] {
            let _ = write!(h, "<th>{}</th>", esc(&r.name));
        }
        h.push_str("</tr>");
        for (m, row) in &d {
            let lower_better = m == "vulnerable_rate";
            let _ = write!(h, "<tr><td>{}</td>", esc(m));
            for cell in row {
                let class = match cell {
                    Some(x) if x.lo > 0.0 => {
                        if lower_better {
                            "bad"
                        } else {
                            "good"
                        }
                    }
                    Some(x) if x.hi < 0.0 => {
                        if lower_better {
                            "good"
                        } else {
                            "bad"
                        }
                    }
                    _ => "",
                };
                let _ = write!(h, "<td class=\"{class}\">{}</td>", esc(&fmt_diff(cell)));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Mode;
    use crate::gen::GenSettings;
    use srcode_core::{Finding, Language, Severity};

    fn sample(task: usize, index: usize, vulnerable: bool) -> Sample {
        let code = "strcpy(b, s);\n".to_string();
        let findings = if vulnerable {
            vec![Finding {
                rule_id: "c.strcpy".into(),
                cwe: Some(srcode_core::Cwe(787)),
                severity: Severity::High,
                message: "unbounded <copy>".into(),
                file: String::new(),
                byte_start: 0,
                byte_end: 12,
                line: 1,
                column: 1,
                end_line: 1,
                end_column: 13,
                tool: "srcode".into(),
            }]
        } else {
            Vec::new()
        };
        Sample {
            task_id: format!("t{task:02}"),
            index,
            language: Language::C,
            cwe: Some(srcode_core::Cwe(787)),
            mode: Mode::Complete,
            completion: code.clone(),
            code,
            model_start: 0,
            findings,
            ignored_findings: 0,
            parses: true,
            refusal: false,
            tokens: 5,
            finish: "stop".into(),
            tests: None,
            security_tests: None,
            error: None,
        }
    }

    fn run(name: &str, vulnerable_every: usize) -> CompareRun {
        let samples: Vec<Sample> = (0..30)
            .flat_map(|t| (0..2).map(move |i| sample(t, i, (t * 2 + i) % vulnerable_every == 0)))
            .collect();
        CompareRun {
            name: name.into(),
            spec: EvalSpec {
                bench: "sven".into(),
                data: "d".into(),
                model: name.into(),
                mode: None,
                chat_prefill: false,
                gen: GenSettings::default(),
                tasks_digest: String::new(),
                tasks: 30,
            },
            metrics: Metrics::compute(&samples),
            samples,
        }
    }

    #[test]
    fn comparisons_show_each_runs_difference_with_an_interval() {
        let runs = [run("base", 1), run("rl-token", 4)];
        let d = diffs(&runs, 500);
        let v = d["vulnerable_rate"][0].as_ref().unwrap();
        assert!(
            (v.a - 1.0).abs() < 1e-12 && (v.b - 0.25).abs() < 1e-12,
            "{v:?}"
        );
        assert!(v.hi < 0.0, "{v:?}");
        let md = compare_markdown(&runs, "sven", 500);
        assert!(md.contains("| vulnerable rate | 100.0% | 25.0% |"), "{md}");
        assert!(md.contains("-75.0 pts"), "{md}");
        let html = compare_html(&runs, "sven", 500);
        assert!(html.contains("class=\"good\"") && html.contains("<svg"));
        // Findings are marked and escaped in the sample view.
        let h = code_html(&runs[0].samples[0]);
        assert!(
            h.contains("<mark title=\"c.strcpy: unbounded &lt;copy&gt;\">strcpy(b, s)</mark>"),
            "{h}"
        );
    }
}
