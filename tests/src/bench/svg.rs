//! A small SVG writer for the report's plots: line charts (several series, linear or log x) and
//! bar charts (stacked segments per bar). Hand-written so the bench pulls no plotting stack.
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 170.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn head(title: &str, xlabel: &str, ylabel: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>
"#,
        (L + W - R) / 2.0,
        esc(title),
        (L + W - R) / 2.0,
        H - 10.0,
        esc(xlabel),
        (T + H - B) / 2.0,
        esc(ylabel)
    );
    s
}

fn y_axis(s: &mut String, ymax: f64) {
    for i in 0..=5 {
        let v = ymax * f64::from(i) / 5.0;
        let y = H - B - (H - T - B) * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/><line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - B,
        H - B,
        W - R,
        H - B
    );
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{:.0}", v)
    } else if v >= 1.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn legend(s: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = T + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            W - R + 12.0,
            y - 10.0,
            COLORS[i % COLORS.len()],
            W - R + 30.0,
            y,
            esc(n)
        );
    }
}

/// A line chart; `hlines` are dashed reference lines (label, y).
pub fn lines(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    hlines: &[(String, f64)],
) -> String {
    let mut s = head(title, xlabel, ylabel);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    for (_, y) in hlines {
        ymax = ymax.max(*y);
    }
    if xmin > xmax {
        xmin = 0.0;
        xmax = 1.0;
    }
    let tx = |x: f64| -> f64 {
        let (a, b, v) = if log_x {
            (
                xmin.max(1e-9).log10(),
                xmax.max(1e-9).log10(),
                x.max(1e-9).log10(),
            )
        } else {
            (xmin.min(0.0), xmax, x)
        };
        let span = if (b - a).abs() < 1e-12 { 1.0 } else { b - a };
        L + (W - L - R) * (v - a) / span
    };
    let ymax = nice_max(ymax * 1.05);
    let ty = |y: f64| H - B - (H - T - B) * y / ymax;
    y_axis(&mut s, ymax);
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            tx(x),
            H - B + 16.0,
            fmt_num(x)
        );
    }
    for (i, (label, y)) in hlines.iter().enumerate() {
        let c = COLORS[(series.len() + i) % COLORS.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{L}" y1="{0}" x2="{1}" y2="{0}" stroke="{c}" stroke-dasharray="6,4"/><text x="{2}" y="{3}" fill="{c}">{4}</text>"#,
            ty(*y),
            W - R,
            L + 4.0,
            ty(*y) - 4.0,
            esc(label)
        );
    }
    for (i, (_, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", tx(*x), ty(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in p {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                tx(*x),
                ty(*y)
            );
        }
    }
    legend(
        &mut s,
        &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    );
    s.push_str("</svg>\n");
    s
}

/// Bars with stacked segments: `bars` are (label, [segment values]), `segments` name them.
pub fn stacked_bars(
    title: &str,
    ylabel: &str,
    segments: &[String],
    bars: &[(String, Vec<f64>)],
    hlines: &[(String, f64)],
) -> String {
    let mut s = head(title, "", ylabel);
    let mut ymax = bars
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0, f64::max);
    for (_, y) in hlines {
        ymax = ymax.max(*y);
    }
    let ymax = nice_max(ymax * 1.05);
    let ty = |y: f64| (H - T - B) * y / ymax;
    y_axis(&mut s, ymax);
    let slot = (W - L - R) / bars.len().max(1) as f64;
    for (i, (label, vals)) in bars.iter().enumerate() {
        let x = L + slot * i as f64 + slot * 0.2;
        let mut base = H - B;
        for (j, v) in vals.iter().enumerate() {
            let h = ty(*v);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
                base - h,
                slot * 0.6,
                COLORS[j % COLORS.len()]
            );
            base -= h;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + slot * 0.3,
            H - B + 16.0,
            esc(label),
            x + slot * 0.3,
            base - 4.0,
            fmt_num(vals.iter().sum())
        );
    }
    for (i, (label, y)) in hlines.iter().enumerate() {
        let c = COLORS[(segments.len() + i) % COLORS.len()];
        let yy = H - B - ty(*y);
        let _ = writeln!(
            s,
            r#"<line x1="{L}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="{c}" stroke-dasharray="6,4"/><text x="{}" y="{:.1}" fill="{c}">{}</text>"#,
            W - R,
            L + 4.0,
            yy - 4.0,
            esc(label)
        );
    }
    legend(&mut s, segments);
    s.push_str("</svg>\n");
    s
}
