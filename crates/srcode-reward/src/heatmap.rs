//! Self-contained HTML heat maps: every token of a completion coloured by its reward (red
//! negative, green positive, stronger for larger magnitudes), with the findings listed. No
//! external assets.

use crate::align::TokenSpan;
use crate::TokenRewards;
use std::fmt::Write;

/// One completion to draw.
pub struct HeatmapEntry<'a> {
    pub title: &'a str,
    pub prompt: Option<&'a str>,
    pub completion: &'a str,
    pub tokens: &'a [TokenSpan],
    pub rewards: &'a TokenRewards,
}

use srcode_core::html_escape as esc;

/// The stylesheet of the heat maps ([`sections`] needs it).
pub const STYLE: &str = "pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.45;background:#fafafa;border:1px solid #ddd;padding:1em;white-space:pre-wrap;word-break:break-all}\
pre span{border-radius:2px}\
.meta{color:#555;font-size:13px} .legend span{padding:0 .5em;margin-right:.5em}\
section{margin-bottom:3em} details{margin:.5em 0}";

/// The colour legend shown above heat maps.
pub const LEGEND: &str =
    "<p class=\"legend\"><span style=\"background:rgba(220,40,40,.6)\">penalised</span>\
<span style=\"background:rgba(30,160,60,.6)\">rewarded</span>\
hover a token for its reward; the instance-level reward goes on the last token.</p>";

/// Renders one HTML page for all entries.
pub fn render(title: &str, entries: &[HeatmapEntry<'_>]) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ddd;padding:2px 8px;text-align:left}}\
{STYLE}</style></head><body><h1>{t}</h1>{LEGEND}{body}</body></html>\n",
        t = esc(title),
        body = sections(entries)
    )
}

/// One `<section>` per entry (title, reward breakdown, prompt, coloured tokens, findings), to
/// embed in a page styled with [`STYLE`].
pub fn sections(entries: &[HeatmapEntry<'_>]) -> String {
    let mut h = String::new();
    for e in entries {
        let r = e.rewards;
        let max = r
            .per_token
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        let _ = write!(
            h,
            "<section><h2>{}</h2><p class=\"meta\">total {:.3} = tokens {:.3} + instance {:.3} \
(parse {:.2}, clean {:.2}, compile {:.2}{})</p>",
            esc(e.title),
            r.total,
            r.total - r.instance,
            r.instance,
            r.breakdown.parse,
            r.breakdown.clean,
            r.breakdown.compile,
            r.breakdown
                .guard_reason
                .as_ref()
                .map(|g| format!("; guard: {}", esc(g)))
                .unwrap_or_default()
        );
        if let Some(p) = e.prompt {
            let _ = write!(
                h,
                "<details><summary>prompt</summary><pre>{}</pre></details>",
                esc(p)
            );
        }
        h.push_str("<pre>");
        let text = e.completion.as_bytes();
        let mut pos = 0;
        for (i, &(s, t)) in e.tokens.iter().enumerate() {
            if s > pos && s <= text.len() {
                h.push_str(&esc(&String::from_utf8_lossy(&text[pos..s])));
            }
            let s = s.max(pos).min(text.len());
            let t = t.max(s).min(text.len());
            let v = r.per_token.get(i).copied().unwrap_or(0.0);
            let a = (v.abs() / max * 0.7).min(0.7);
            let bg = if v < 0.0 {
                format!("rgba(220,40,40,{a:.2})")
            } else if v > 0.0 {
                format!("rgba(30,160,60,{a:.2})")
            } else {
                "transparent".into()
            };
            let _ = write!(
                h,
                "<span style=\"background:{bg}\" title=\"token {i}: {v:+.3}\">{}</span>",
                esc(&String::from_utf8_lossy(&text[s..t]))
            );
            pos = t;
        }
        if pos < text.len() {
            h.push_str(&esc(&String::from_utf8_lossy(&text[pos..])));
        }
        h.push_str("</pre>");
        if !r.findings.is_empty() {
            h.push_str("<table><tr><th>line</th><th>rule</th><th>CWE</th><th>severity</th><th>message</th></tr>");
            for f in &r.findings {
                let _ = write!(
                    h,
                    "<tr><td>{}:{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                    f.line,
                    f.column,
                    esc(&f.rule_id),
                    f.cwe.map(|c| c.to_string()).unwrap_or_default(),
                    f.severity,
                    esc(&f.message)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>");
    }
    h
}
