//! The posture report as one self-contained HTML page: inline CSS, inline SVG
//! charts, no script, no external asset; a viewport for phones. Every number
//! shown carries `data-n="<path>"` naming its place in the JSON (e.g.
//! `totals.messages`, `domains.example.org.mechanisms.dane.percent`), so a
//! rendered page can be compared with `tlsrelay posture --json`.

use std::fmt::Write;

use super::{Counts, DomainPosture, Posture};
use crate::model::mechanism::Mechanism;
use crate::model::visible::visible;

/// The colour of a mechanism in charts.
fn colour(m: Mechanism) -> &'static str {
    match m {
        Mechanism::Dane => "#1b7837",
        Mechanism::MtaSts => "#2166ac",
        Mechanism::Local => "#762a83",
        Mechanism::Verify => "#5aae61",
        Mechanism::Encrypt => "#d6604d",
    }
}

/// Text escaped for HTML (element content and quoted attributes); control
/// characters shown as escapes.
fn esc(s: &str) -> String {
    let mut out = String::new();
    for c in visible(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number with its JSON path.
fn num(path: &str, value: impl std::fmt::Display) -> String {
    format!("<span data-n=\"{}\">{value}</span>", esc(path))
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222;background:#fff}\
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}\
.headline{font-size:1.25rem;background:#eef6ee;border-left:.4rem solid #1b7837;padding:.6rem .8rem;margin:.8rem 0}\
.meta{color:#555;font-size:.85rem}.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.chip{display:inline-block;width:.7rem;height:.7rem;border-radius:.15rem;margin-right:.3rem}\
svg{display:block;max-width:100%}.small{font-size:.8rem;color:#444}.none{color:#777}\
@media (max-width:40rem){body{padding:.5rem}table{font-size:.78rem}th,td{padding:.25rem .25rem}td svg{width:60px}.wide{display:none}}";

/// The whole page.
pub fn render(p: &Posture) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>tlsrelay posture</title><style>{STYLE}</style></head><body>\n\
<h1>TLS posture of outbound mail</h1>\n<p class=\"meta\">{} to {} ({} days); generated {}</p>\n",
        esc(&p.since),
        esc(&p.until),
        num("days", p.days),
        esc(&p.generated)
    );
    let t = &p.totals;
    let _ = writeln!(
        h,
        "<p class=\"headline\"><strong>{} %</strong> of messages authenticated by DANE or MTA-STS or WebPKI \
({} of {} messages, {} recipients)</p>",
        num("totals.authenticated_percent", format!("{:.1}", t.authenticated_percent)),
        num("totals.authenticated_messages", t.authenticated_messages),
        num("totals.messages", t.counts.messages),
        num("totals.recipients", t.counts.recipients),
    );
    h.push_str("<h2>Recipients by mechanism</h2>\n");
    h.push_str(&mechanism_chart(&t.counts));
    h.push_str(&mechanism_table(&t.counts, "totals"));
    h.push_str("<h2>TLS versions and refusals</h2>\n");
    h.push_str(&pairs_table(
        "TLS version",
        &t.counts.tls_versions,
        "totals.tls_versions",
    ));
    h.push_str(&pairs_table(
        "Refused (RFC 8460 type)",
        &t.counts.refusals,
        "totals.refusals",
    ));
    h.push_str(&domains_table(&p.domains));
    h.push_str(&early_warnings(p));
    h.push_str("</body></html>\n");
    h
}

/// One horizontal bar per mechanism, as an inline SVG.
fn mechanism_chart(c: &Counts) -> String {
    let row = 26;
    let height = row * c.mechanisms.len() + 4;
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"recipients by mechanism\" viewBox=\"0 0 400 {height}\" width=\"400\" height=\"{height}\">"
    );
    for (i, m) in c.mechanisms.iter().enumerate() {
        let y = i * row + 2;
        let w = (m.percent * 2.6).round();
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"13\">{}</text>\
<rect x=\"70\" y=\"{y}\" width=\"260\" height=\"18\" fill=\"#eee\"/>\
<rect x=\"70\" y=\"{y}\" width=\"{w}\" height=\"18\" fill=\"{}\"><title>{} {:.1} %</title></rect>\
<text x=\"336\" y=\"{}\" font-size=\"13\">{:.1} %</text>",
            y + 14,
            m.mechanism,
            colour(m.mechanism),
            m.mechanism,
            m.percent,
            y + 14,
            m.percent
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The mechanism counts and percents.
fn mechanism_table(c: &Counts, path: &str) -> String {
    let mut s = String::from(
        "<div class=\"scroll\"><table><tr><th>mechanism</th><th class=\"n\">recipients</th><th class=\"n\">share</th></tr>",
    );
    for m in &c.mechanisms {
        let p = format!("{path}.mechanisms.{}", m.mechanism);
        let _ = write!(
            s,
            "<tr><td><span class=\"chip\" style=\"background:{}\"></span>{}</td><td class=\"n\">{}</td><td class=\"n\">{} %</td></tr>",
            colour(m.mechanism),
            m.mechanism,
            num(&format!("{p}.recipients"), m.recipients),
            num(&format!("{p}.percent"), format!("{:.1}", m.percent)),
        );
    }
    s.push_str("</table></div>\n");
    s
}

/// A two-column table of name → count.
fn pairs_table(what: &str, pairs: &std::collections::BTreeMap<String, u64>, path: &str) -> String {
    let mut s = format!(
        "<div class=\"scroll\"><table><tr><th>{}</th><th class=\"n\">count</th></tr>",
        esc(what)
    );
    if pairs.is_empty() {
        s.push_str("<tr><td class=\"none\" colspan=\"2\">none</td></tr>");
    }
    for (k, n) in pairs {
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(k),
            num(&format!("{path}.{k}"), n)
        );
    }
    s.push_str("</table></div>\n");
    s
}

/// A stacked bar of one domain's mechanism shares.
fn stacked_bar(c: &Counts) -> String {
    let mut s = String::from("<svg viewBox=\"0 0 120 12\" width=\"120\" height=\"12\">");
    let mut x = 0.0;
    for m in c.mechanisms.iter().filter(|m| m.recipients > 0) {
        let w = m.percent * 1.2;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"12\" fill=\"{}\"><title>{} {:.1} %</title></rect>",
            colour(m.mechanism),
            m.mechanism,
            m.percent
        );
        x += w;
    }
    if c.recipients == 0 {
        s.push_str("<rect x=\"0\" y=\"0\" width=\"120\" height=\"12\" fill=\"#eee\"/>");
    }
    s.push_str("</svg>");
    s
}

/// The per-domain table.
fn domains_table(domains: &[DomainPosture]) -> String {
    let mut s = String::from(
        "<h2>Destination domains</h2>\n<div class=\"scroll\"><table><tr><th>domain</th><th class=\"n\">messages</th>\
<th class=\"n\">recipients</th><th>mechanisms</th><th class=\"wide\">TLS</th><th>refused</th><th class=\"wide\">DNS / MTA-STS now</th></tr>",
    );
    if domains.is_empty() {
        s.push_str("<tr><td class=\"none\" colspan=\"7\">no deliveries or refusals in this period</td></tr>");
    }
    for d in domains {
        let p = format!("domains.{}", d.domain);
        let c = &d.counts;
        let shares: Vec<String> = (c.mechanisms.iter())
            .filter(|m| m.recipients > 0)
            .map(|m| {
                let path = format!("{p}.mechanisms.{}.percent", m.mechanism);
                format!(
                    "{} {} %",
                    m.mechanism,
                    num(&path, format!("{:.1}", m.percent))
                )
            })
            .collect();
        let list = |map: &std::collections::BTreeMap<String, u64>, key: &str| -> String {
            let items: Vec<String> = (map.iter())
                .map(|(k, n)| format!("{} {}", esc(k), num(&format!("{p}.{key}.{k}"), n)))
                .collect();
            if items.is_empty() {
                "<span class=\"none\">none</span>".into()
            } else {
                items.join("<br>")
            }
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}<div class=\"small\">{}</div></td>\
<td class=\"wide small\">{}</td><td class=\"small\">{}</td><td class=\"wide small\">{}</td></tr>",
            esc(&d.domain),
            num(&format!("{p}.messages"), c.messages),
            num(&format!("{p}.recipients"), c.recipients),
            stacked_bar(c),
            shares.join("<br>"),
            list(&c.tls_versions, "tls_versions"),
            list(&c.refusals, "refusals"),
            state_cell(d),
        );
    }
    s.push_str("</table></div>\n");
    s
}

/// The live DNS/MTA-STS state, or a note that it was not looked up.
fn state_cell(d: &DomainPosture) -> String {
    let Some(st) = &d.state else {
        return "<span class=\"none\">not looked up (--live)</span>".into();
    };
    let mut parts = vec![format!("check: {}", esc(&st.verdict))];
    if let Some(m) = &st.mx_dnssec {
        parts.push(format!("MX DNSSEC: {}", esc(m)));
    }
    parts.push(format!("DANE hosts: {} of {}", st.dane_hosts, st.hosts));
    if let Some(m) = &st.mta_sts {
        parts.push(format!("MTA-STS: {}", esc(m)));
    }
    if let Some(l) = &st.local_policy {
        parts.push(format!("local: {}", esc(l)));
    }
    parts.join("<br>")
}

/// The early warnings section (empty unless the caller filled it).
fn early_warnings(p: &Posture) -> String {
    let mut s = String::from("<h2 id=\"early-warnings\">Early warnings</h2>\n");
    if p.early_warnings.is_empty() {
        s.push_str("<p class=\"none\">No early warnings (<span data-n=\"early_warnings.count\">0</span>).</p>\n");
        return s;
    }
    s.push_str("<ul>");
    for w in &p.early_warnings {
        let _ = write!(
            s,
            "<li><strong>{}</strong> {}: {}</li>",
            esc(&w.domain),
            esc(&w.kind),
            esc(&w.message)
        );
    }
    let _ = writeln!(
        s,
        "</ul><p class=\"none\">{} warning(s)</p>",
        num("early_warnings.count", p.early_warnings.len())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::{build, EarlyWarning, Period};
    use super::*;

    /// The `data-n` numbers of a page, in order.
    fn numbers(html: &str) -> Vec<(String, String)> {
        html.split("data-n=\"")
            .skip(1)
            .map(|rest| {
                let (path, after) = rest.split_once('"').unwrap();
                let value = after.split_once('>').unwrap().1.split('<').next().unwrap();
                (path.to_string(), value.to_string())
            })
            .collect()
    }

    #[test]
    fn page_is_self_contained_and_numbers_match() {
        let period = Period {
            generated: "2026-12-02T00:00:00+00:00".into(),
            since: "2026-11-03".into(),
            until: "2026-12-02".into(),
            days: 30,
        };
        let warn = EarlyWarning {
            domain: "x.test".into(),
            kind: "certificate-expiry".into(),
            message: "expires in 5 days <soon>".into(),
        };
        let p = build(period, &[], &[], vec![warn]);
        let html = render(&p);
        assert!(html.contains("name=\"viewport\""));
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
        assert!(html.contains("expires in 5 days &lt;soon&gt;"));
        let n = numbers(&html);
        assert!(n.contains(&("totals.messages".into(), "0".into())), "{n:?}");
        assert!(n.contains(&("early_warnings.count".into(), "1".into())));
        assert!(n.contains(&("totals.mechanisms.mta-sts.percent".into(), "0.0".into())));
        assert_eq!(esc("a\"<&>'\u{1b}"), "a&quot;&lt;&amp;&gt;&#39;\\x1b");
    }
}
