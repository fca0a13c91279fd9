//! The RL run report: line charts (inline SVG, no external assets) of the metrics of one or
//! several runs over their steps, e.g. the token- and instance-level runs of the granularity
//! ablation drawn together.

use crate::rl::RlMetrics;
use srcode_core::html_escape as esc;
use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#d9534f", "#5b8def", "#2ca02c", "#ff9f1c", "#9467bd", "#8c564b",
];

/// One line chart of `series` (name, points (x, y)).
pub fn line_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, l, r, t, b) = (520.0, 260.0, 56.0, 16.0, 40.0, 30.0);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|p| p.1.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"system-ui,sans-serif\" font-size=\"11\"><text x=\"0\" y=\"14\" font-weight=\"bold\" font-size=\"13\">{}</text>",
        esc(title)
    );
    for (i, (name, _)) in series.iter().enumerate() {
        let x = l + i as f64 * 140.0;
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"20\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"29\">{}</text>",
            COLORS[i % COLORS.len()],
            x + 14.0,
            esc(name)
        );
    }
    for k in 0..=4 {
        let y = y0 + (y1 - y0) * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{l}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#777\">{}</text>",
            w - r,
            l - 4.0,
            py(y) + 3.0,
            short(y),
            py = py(y)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{l}\" y=\"{}\" fill=\"#777\">step {}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#777\">{}</text>",
        h - 8.0,
        short(x0),
        w - r,
        h - 8.0,
        short(x1)
    );
    for (i, (_, p)) in series.iter().enumerate() {
        let path: Vec<String> = p
            .iter()
            .filter(|q| q.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[i % COLORS.len()],
            path.join(" ")
        );
    }
    s.push_str("</svg>");
    s
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The report page of one or more runs: flagged rate, reward, KL, entropy, response length and
/// seconds per step over the steps.
pub fn rl_html(title: &str, runs: &[(String, Vec<RlMetrics>)]) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2em .6em;text-align:right}}{RL_STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>\n",
        t = esc(title),
        body = rl_body(runs)
    )
}

/// The extra style [`rl_body`] needs (its charts sit in a wrapping grid).
pub const RL_STYLE: &str = ".grid{display:flex;flex-wrap:wrap;gap:1.5em}";

/// The body of [`rl_html`]: the runs table and the charts, to embed in another page.
pub fn rl_body(runs: &[(String, Vec<RlMetrics>)]) -> String {
    type Get = fn(&RlMetrics) -> f64;
    let charts: [(&str, Get); 8] = [
        ("analyser-flagged share of rollouts", |m| {
            f64::from(m.flagged_rate)
        }),
        ("reward (mean of token sum + instance)", |m| {
            f64::from(m.reward_mean)
        }),
        ("token reward per rollout", |m| f64::from(m.token_reward)),
        ("instance reward", |m| f64::from(m.instance_reward)),
        ("KL to the reference (per sequence)", |m| f64::from(m.kl)),
        ("entropy per token (sampled estimate)", |m| {
            f64::from(m.entropy)
        }),
        ("response length (tokens)", |m| f64::from(m.response_length)),
        ("seconds per step", |m| m.seconds),
    ];
    let mut h = String::from(
        "<table><tr><th>run</th><th>steps</th><th>flagged first → last</th><th>mean s/step</th></tr>",
    );
    for (name, ms) in runs {
        let (f, l) = (ms.first(), ms.last());
        let secs = ms.iter().map(|m| m.seconds).sum::<f64>() / ms.len().max(1) as f64;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{secs:.1}</td></tr>",
            esc(name),
            ms.len(),
            f.map_or("–".into(), |m| format!("{:.0}%", 100.0 * m.flagged_rate)),
            l.map_or("–".into(), |m| format!("{:.0}%", 100.0 * m.flagged_rate)),
        );
    }
    h.push_str("</table><div class=\"grid\">");
    for (title, get) in charts {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|(n, ms)| {
                (
                    n.clone(),
                    ms.iter().map(|m| (m.step as f64, get(m))).collect(),
                )
            })
            .collect();
        h.push_str(&line_chart(title, &series));
    }
    h.push_str("</div>");
    h
}
