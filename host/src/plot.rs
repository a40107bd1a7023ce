//! Hand-written SVG for `aci bench workload` and `aci simulate --svg`: the staleness-vs-messages
//! frontier and strategy timelines. Plain SVG 1.1, no script, no external resources: a file
//! opens in any browser and embeds in HTML as is.

use std::fmt::Write as _;

use crate::policy::Strategy;
use crate::workload::{on_frontier, RunReport};

const W: f64 = 760.0;
const FONT: &str = "font-family=\"sans-serif\" font-size=\"12\"";
const TITLE_FONT: &str = "font-family=\"sans-serif\" font-size=\"14\" font-weight=\"bold\"";

/// The colour of a strategy band: ttl grey, batched amber, eager red.
pub fn strategy_colour(s: Strategy) -> &'static str {
    match s {
        Strategy::Ttl => "#9e9e9e",
        Strategy::Batched => "#f0a030",
        Strategy::Eager => "#d83a3a",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A run of one strategy on a timeline, in ms.
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub from_ms: u64,
    pub to_ms: u64,
    pub strategy: Strategy,
}

/// One row of a timeline figure: a label and its strategy bands.
pub struct TimelineRow<'a> {
    pub label: &'a str,
    pub bands: Vec<Band>,
}

/// Bands from samples of (time, strategy), each sample holding until the next.
pub fn bands_from_samples(samples: impl IntoIterator<Item = (u64, Strategy)>, end_ms: u64) -> Vec<Band> {
    let mut out: Vec<Band> = Vec::new();
    for (t, s) in samples {
        if let Some(last) = out.last_mut() {
            last.to_ms = t;
            if last.strategy == s {
                continue;
            }
        }
        out.push(Band { from_ms: t, to_ms: t, strategy: s });
    }
    if let Some(last) = out.last_mut() {
        last.to_ms = last.to_ms.max(end_ms);
    }
    out
}

fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n <= 1.0 { 1.0 } else if n <= 2.0 { 2.0 } else if n <= 5.0 { 5.0 } else { 10.0 }
}

/// A timeline: the write rate (writes/s per time bin) as a line over the strategy bands of
/// every row. `rate` is (bin start ms, writes/s); `end_ms` is the time axis' end.
pub fn timeline_svg(title: &str, rate: &[(u64, f64)], rows: &[TimelineRow<'_>], end_ms: u64) -> String {
    let (left, right, top) = (120.0, 20.0, 34.0);
    let rate_h = 150.0;
    let row_h = 22.0;
    let h = top + rate_h + 30.0 + rows.len() as f64 * (row_h + 6.0) + 50.0;
    let pw = W - left - right;
    let end = end_ms.max(1) as f64;
    let x = |ms: u64| left + pw * (ms as f64 / end).min(1.0);
    let mut o = String::new();
    let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\">");
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(o, "<text x=\"{left}\" y=\"20\" {TITLE_FONT}>{}</text>", esc(title));
    // Rate panel.
    let max_rate = rate.iter().map(|r| r.1).fold(1.0f64, f64::max);
    let step = nice_step(max_rate, 4.0);
    let ymax = (max_rate / step).ceil() * step;
    let y = |r: f64| top + rate_h - rate_h * (r / ymax);
    let mut v = 0.0;
    while v <= ymax + 1e-9 {
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>", left + pw, y(v), y(v));
        let _ = writeln!(o, "<text x=\"{}\" y=\"{:.1}\" {FONT} text-anchor=\"end\">{v}</text>", left - 6.0, y(v) + 4.0);
        v += step;
    }
    let _ = writeln!(o, "<text x=\"14\" y=\"{:.1}\" {FONT} transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">writes/s</text>", top + rate_h / 2.0, top + rate_h / 2.0);
    if !rate.is_empty() {
        let mut d = String::new();
        for (i, (t, r)) in rate.iter().enumerate() {
            let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, x(*t), y(*r));
        }
        let _ = writeln!(o, "<path d=\"{d}\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.5\"/>");
    }
    // Strategy rows.
    let mut ry = top + rate_h + 20.0;
    for row in rows {
        let _ = writeln!(o, "<text x=\"{}\" y=\"{:.1}\" {FONT} text-anchor=\"end\">{}</text>", left - 6.0, ry + row_h / 2.0 + 4.0, esc(row.label));
        for b in &row.bands {
            let (x0, x1) = (x(b.from_ms), x(b.to_ms));
            let _ = writeln!(o, "<rect x=\"{x0:.1}\" y=\"{ry:.1}\" width=\"{:.1}\" height=\"{row_h}\" fill=\"{}\"><title>{} {:.1}-{:.1} s</title></rect>",
                (x1 - x0).max(0.5), strategy_colour(b.strategy), b.strategy.as_str(), b.from_ms as f64 / 1000.0, b.to_ms as f64 / 1000.0);
        }
        ry += row_h + 6.0;
    }
    // Time axis.
    let tstep = nice_step(end / 1000.0, 8.0);
    let mut t = 0.0;
    while t * 1000.0 <= end + 1e-6 {
        let xt = x((t * 1000.0) as u64);
        let _ = writeln!(o, "<line x1=\"{xt:.1}\" x2=\"{xt:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#f0f0f0\"/>", ry);
        let _ = writeln!(o, "<text x=\"{xt:.1}\" y=\"{:.1}\" {FONT} text-anchor=\"middle\">{}s</text>", ry + 14.0, fmt_num(t));
        t += tstep;
    }
    legend(&mut o, left, ry + 34.0);
    o.push_str("</svg>\n");
    o
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 { format!("{}", v.round() as i64) } else { format!("{v:.1}") }
}

fn legend(o: &mut String, mut x: f64, y: f64) {
    for s in [Strategy::Ttl, Strategy::Batched, Strategy::Eager] {
        let _ = writeln!(o, "<rect x=\"{x}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{}\"/>", y - 9.0, strategy_colour(s));
        let _ = writeln!(o, "<text x=\"{}\" y=\"{y:.1}\" {FONT}>{}</text>", x + 18.0, s.as_str());
        x += 80.0;
    }
    let _ = writeln!(o, "<line x1=\"{x}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1f5fbf\" stroke-width=\"1.5\"/>", x + 14.0, y - 4.0, y - 4.0);
    let _ = writeln!(o, "<text x=\"{}\" y=\"{y:.1}\" {FONT}>write rate</text>", x + 18.0);
}

/// The frontier: one point per run, messages published (x) against staleness p99 (y); the
/// runs on the frontier are joined.
pub fn frontier_svg(reports: &[RunReport]) -> String {
    let (left, right, top, bottom) = (80.0, 30.0, 34.0, 50.0);
    let h = 380.0;
    let (pw, ph) = (W - left - right, h - top - bottom);
    let max_m = reports.iter().map(|r| r.published as f64).fold(1.0f64, f64::max);
    let max_s = reports.iter().map(|r| r.staleness_ms(0.99)).fold(1.0f64, f64::max);
    let (xs, ys) = (nice_step(max_m, 5.0), nice_step(max_s, 4.0));
    let (xmax, ymax) = ((max_m * 1.08 / xs).ceil() * xs, (max_s * 1.1 / ys).ceil() * ys);
    let x = |m: f64| left + pw * m / xmax;
    let y = |s: f64| top + ph - ph * s / ymax;
    let mut o = String::new();
    let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\">");
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(o, "<text x=\"{left}\" y=\"20\" {TITLE_FONT}>Staleness p99 vs Pub/Sub messages published (lower left is better)</text>");
    let mut v = 0.0;
    while v <= ymax + 1e-9 {
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>", left + pw, y(v), y(v));
        let _ = writeln!(o, "<text x=\"{}\" y=\"{:.1}\" {FONT} text-anchor=\"end\">{}</text>", left - 6.0, y(v) + 4.0, fmt_num(v));
        v += ys;
    }
    let mut v = 0.0;
    while v <= xmax + 1e-9 {
        let _ = writeln!(o, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#f0f0f0\"/>", x(v), x(v), top + ph);
        let _ = writeln!(o, "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} text-anchor=\"middle\">{}</text>", x(v), top + ph + 16.0, fmt_num(v));
        v += xs;
    }
    let _ = writeln!(o, "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} text-anchor=\"middle\">messages published (PUBLISH commands, server commandstats)</text>", left + pw / 2.0, h - 12.0);
    let _ = writeln!(o, "<text x=\"16\" y=\"{:.1}\" {FONT} transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">staleness p99 per read (ms)</text>", top + ph / 2.0, top + ph / 2.0);
    let front = on_frontier(reports);
    let mut pts: Vec<(f64, f64)> = reports.iter().zip(&front).filter(|(_, f)| **f)
        .map(|(r, _)| (r.published as f64, r.staleness_ms(0.99))).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if pts.len() > 1 {
        let d: Vec<String> = pts.iter().enumerate().map(|(i, (m, s))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x(*m), y(*s))).collect();
        let _ = writeln!(o, "<path d=\"{}\" fill=\"none\" stroke=\"#555\" stroke-dasharray=\"5,4\"/>", d.join(" "));
    }
    let texts: Vec<String> = reports.iter()
        .map(|r| format!("{} ({} msgs, p99 {:.0} ms)", r.label, r.published, r.staleness_ms(0.99)))
        .collect();
    let points: Vec<(f64, f64, f64)> = reports.iter().zip(&texts)
        .map(|(r, t)| (x(r.published as f64), y(r.staleness_ms(0.99)), text_width(t)))
        .collect();
    let labels = place_labels(&points, left + pw / 2.0);
    for ((((r, f), text), &(px, py, _)), (lx, ly, anchor)) in reports.iter().zip(&front).zip(&texts).zip(&points).zip(labels) {
        let colour = match r.label.as_str() {
            "ttl" => strategy_colour(Strategy::Ttl),
            "batched" => strategy_colour(Strategy::Batched),
            "eager" => strategy_colour(Strategy::Eager),
            _ => "#1f5fbf",
        };
        let _ = writeln!(o, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"7\" fill=\"{colour}\" stroke=\"{}\" stroke-width=\"2\"/>", if *f { "black" } else { "none" });
        let _ = writeln!(o, "<text x=\"{lx:.1}\" y=\"{ly:.1}\" {FONT} text-anchor=\"{anchor}\">{}</text>", esc(text));
    }
    o.push_str("</svg>\n");
    o
}

/// About how wide `text` is in `FONT` (12 px sans-serif), to keep labels apart.
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 6.8
}

/// Where each point's label goes, as (x, baseline y, text-anchor), for points given as (x, y,
/// label width). Beside the point: to its left in the right half of the figure (`mid_x`), so
/// it stays inside; above the point, or, where that would cover a label placed before (two
/// runs with about the same p99), below it or further away.
fn place_labels(points: &[(f64, f64, f64)], mid_x: f64) -> Vec<(f64, f64, &'static str)> {
    let mut taken: Vec<[f64; 4]> = Vec::new();
    points.iter().map(|&(px, py, w)| {
        let (lx, anchor, x0, x1) =
            if px > mid_x { (px - 10.0, "end", px - 10.0 - w, px - 10.0) } else { (px + 10.0, "start", px + 10.0, px + 10.0 + w) };
        let free = |ly: f64| !taken.iter().any(|b| x0 < b[1] && b[0] < x1 && ly - 12.0 < b[3] && b[2] < ly + 3.0);
        let tries = [py - 8.0, py + 20.0, py - 24.0, py + 36.0, py - 40.0];
        let ly = tries.iter().copied().find(|&ly| free(ly)).unwrap_or(tries[0]);
        taken.push([x0, x1, ly - 12.0, ly + 3.0]);
        (lx, ly, anchor)
    }).collect()
}

/// The timeline of a workload's runs: the offered write rate over every run's strategy bands.
pub fn workload_timeline_svg(reports: &[RunReport], rate: &[(u64, f64)]) -> String {
    let end = reports.iter().filter_map(|r| r.timeline.last().map(|s| s.at_ms)).max().unwrap_or(0);
    let rows: Vec<TimelineRow<'_>> = reports.iter().map(|r| TimelineRow {
        label: &r.label,
        bands: bands_from_samples(r.timeline.iter().map(|s| (s.at_ms, s.strategy)), end),
    }).collect();
    timeline_svg("Write rate of the trace and each run's fleet strategy (controller's view)", rate, &rows, end)
}

/// A self-contained page: the table and both figures.
pub fn workload_html(reports: &[RunReport], rate: &[(u64, f64)], title: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>", esc(title));
    let _ = writeln!(o, "<style>body{{font-family:sans-serif;margin:24px}}pre{{font-size:12px}}</style></head><body>");
    let _ = writeln!(o, "<h1>{}</h1>\n<pre>{}</pre>", esc(title), esc(&crate::workload::table(reports)));
    o.push_str(&frontier_svg(reports));
    o.push_str("<br>\n");
    o.push_str(&workload_timeline_svg(reports, rate));
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_merge_equal_neighbours_and_reach_the_end() {
        let b = bands_from_samples([(0, Strategy::Ttl), (100, Strategy::Ttl), (200, Strategy::Eager), (300, Strategy::Ttl)], 1000);
        assert_eq!(b, [
            Band { from_ms: 0, to_ms: 200, strategy: Strategy::Ttl },
            Band { from_ms: 200, to_ms: 300, strategy: Strategy::Eager },
            Band { from_ms: 300, to_ms: 1000, strategy: Strategy::Ttl },
        ]);
        assert!(bands_from_samples([], 10).is_empty());
    }

    #[test]
    fn labels_of_points_at_the_same_height_do_not_cover_each_other() {
        // batched and adaptive at about the same p99, 90 px apart: the second label moves.
        let pts = [(230.0, 228.0, 215.0), (318.0, 229.0, 220.0), (577.0, 330.0, 180.0)];
        let l = place_labels(&pts, 430.0);
        assert_eq!(l[0], (240.0, 220.0, "start"));
        assert_eq!(l[1], (328.0, 249.0, "start"), "below its point");
        assert_eq!(l[2], (567.0, 322.0, "end"), "right half: to the left, and free above");
        // Far apart, every label stays above its point.
        let l = place_labels(&[(100.0, 100.0, 50.0), (400.0, 100.0, 50.0)], 1000.0);
        assert_eq!((l[0].1, l[1].1), (92.0, 92.0));
    }

    #[test]
    fn a_timeline_is_well_formed_svg_with_every_band() {
        let rows = [TimelineRow { label: "a<b", bands: vec![Band { from_ms: 0, to_ms: 500, strategy: Strategy::Batched }] }];
        let svg = timeline_svg("t", &[(0, 3.0), (500, 40.0)], &rows, 1000);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(strategy_colour(Strategy::Batched)));
        assert!(svg.contains("a&lt;b"), "labels are escaped");
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
