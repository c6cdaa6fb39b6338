//! The Grafana dashboard (helm/flagrelay/dashboards/flagrelay.json) is built on what the relay exports.
//!
//! Every PromQL expression of every panel and variable is read with a small lexer (no network, no
//! promtool): parentheses balance, every identifier is a known function, keyword, label or metric,
//! every metric is in docs/metrics.md (histograms only through their `_bucket`, `_sum` or `_count`
//! series), every label matched or grouped by is one the metric has (or `job`, `instance`, `le`),
//! counters only appear under `rate`/`increase` and gauges never do, and every `$variable` is
//! defined. Then a real relay is scraped and every series the dashboard reads must be in it.
//! `ci/checks/promtool.sh` additionally runs `promtool check rules` on the same expressions
//! (ci/checks/dashboard_rules.py).

use flagrelay_testkit as support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/flagrelay/dashboards/flagrelay.json");

/// Target labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Functions and aggregations the dashboard may use.
const FUNCTIONS: &[&str] = &[
    "histogram_quantile", "sum", "max", "min", "avg", "count", "rate", "increase", "label_values", "clamp_min",
];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
const RANGE_VARS: &[&str] = &["$__rate_interval", "$__interval", "$__range"];

struct Metric {
    ty: String,
    labels: BTreeSet<String>,
}

/// name -> (type, labels) from the tables of docs/metrics.md.
fn catalogue() -> BTreeMap<String, Metric> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).expect("docs/metrics.md");
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        let Some(name) = cells.get(1).and_then(|c| c.strip_prefix('`')).and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        let (Some(ty), Some(labels)) = (cells.get(2), cells.get(3)) else { continue };
        // "env, event (`initial`, `change`)" -> {env, event}: drop the parenthesised value lists.
        let mut plain = String::new();
        let mut depth = 0;
        for c in labels.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        let labels = plain.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "—").map(String::from).collect();
        out.insert(name.to_string(), Metric { ty: ty.to_string(), labels });
    }
    out
}

/// `label op "value"` of a selector.
type Matcher = (String, String, String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `{label op "value", ...}`
    Matchers(Vec<Matcher>),
    /// `[5m]` or `[$__rate_interval]`
    Range(String),
    LParen,
    RParen,
    Str(String),
    Num,
    Op,
    Comma,
}

fn lex(expr: &str) -> Result<Vec<Tok>, String> {
    let s: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let read_str = |i: &mut usize| -> Result<String, String> {
        let q = s[*i];
        *i += 1;
        let mut v = String::new();
        while *i < s.len() && s[*i] != q {
            if s[*i] == '\\' {
                *i += 1;
            }
            if *i < s.len() {
                v.push(s[*i]);
            }
            *i += 1;
        }
        if *i >= s.len() {
            return Err("unterminated string".into());
        }
        *i += 1;
        Ok(v)
    };
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            out.push(Tok::Str(read_str(&mut i)?));
        } else if c == '(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if c == '[' {
            let end = s[i..].iter().position(|&c| c == ']').ok_or("unterminated [range]")? + i;
            let r: String = s[i + 1..end].iter().collect();
            let duration = !r.is_empty()
                && r.chars().all(|c| c.is_ascii_alphanumeric())
                && r.chars().next().is_some_and(|c| c.is_ascii_digit());
            if !duration && !RANGE_VARS.contains(&r.as_str()) {
                return Err(format!("range [{r}] is neither a duration nor one of {RANGE_VARS:?}"));
            }
            out.push(Tok::Range(r));
            i = end + 1;
        } else if c == '{' {
            i += 1;
            let mut ms = Vec::new();
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() {
                    return Err("unterminated {matchers}".into());
                }
                if s[i] == '}' {
                    i += 1;
                    break;
                }
                if !ident_start(s[i]) {
                    return Err(format!("bad label name at {:?}", s[i..].iter().collect::<String>()));
                }
                let st = i;
                while i < s.len() && ident_char(s[i]) {
                    i += 1;
                }
                let label: String = s[st..i].iter().collect();
                while i < s.len() && s[i].is_whitespace() {
                    i += 1;
                }
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| s[i..].iter().take(op.len()).collect::<String>() == *op)
                    .ok_or_else(|| format!("no matcher operator after label {label}"))?;
                i += op.len();
                while i < s.len() && s[i].is_whitespace() {
                    i += 1;
                }
                if i >= s.len() || (s[i] != '"' && s[i] != '\'') {
                    return Err(format!("label {label}: the value is not a string"));
                }
                let v = read_str(&mut i)?;
                ms.push((label, op.to_string(), v));
            }
            out.push(Tok::Matchers(ms));
        } else if ident_start(c) {
            let st = i;
            while i < s.len() && ident_char(s[i]) {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num);
        } else if "+-*/%^<>=!".contains(c) {
            i += 1;
            while i < s.len() && "=~".contains(s[i]) {
                i += 1;
            }
            out.push(Tok::Op);
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// What one expression reads.
#[derive(Default, Debug)]
struct Uses {
    /// (series name, innermost enclosing function, labels it is matched on)
    series: Vec<(String, String, Vec<Matcher>)>,
    grouping: BTreeSet<String>,
}

fn analyse(expr: &str) -> Result<Uses, String> {
    let toks = lex(expr)?;
    let mut uses = Uses::default();
    let mut stack: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(id) if GROUPING.contains(&id.as_str()) => {
                if toks.get(i + 1) == Some(&Tok::LParen) {
                    i += 2;
                    loop {
                        match toks.get(i) {
                            Some(Tok::Ident(l)) => {
                                uses.grouping.insert(l.clone());
                            }
                            Some(Tok::Comma) => {}
                            Some(Tok::RParen) => break,
                            other => return Err(format!("{id} (...): unexpected {other:?}")),
                        }
                        i += 1;
                    }
                }
            }
            Tok::Ident(id) if KEYWORDS.contains(&id.as_str()) => {}
            Tok::Ident(id) if toks.get(i + 1) == Some(&Tok::LParen) => {
                if !FUNCTIONS.contains(&id.as_str()) {
                    return Err(format!("unknown function {id}"));
                }
                stack.push(id.clone());
                i += 1;
            }
            Tok::Ident(id) if toks.get(i + 1).is_some_and(|t| matches!(t, Tok::Ident(g) if GROUPING.contains(&g.as_str()))) => {
                // `sum by (env) (...)`: the aggregation comes before its grouping.
                if !FUNCTIONS.contains(&id.as_str()) {
                    return Err(format!("unknown aggregation {id}"));
                }
                // The grouping is consumed by the next iterations; the aggregation's own `(` follows it.
                let mut j = i + 2;
                if toks.get(j) == Some(&Tok::LParen) {
                    while toks.get(j) != Some(&Tok::RParen) {
                        if let Some(Tok::Ident(l)) = toks.get(j) {
                            uses.grouping.insert(l.clone());
                        }
                        j += 1;
                        if j >= toks.len() {
                            return Err(format!("{id}: unterminated grouping"));
                        }
                    }
                }
                if toks.get(j + 1) != Some(&Tok::LParen) {
                    return Err(format!("{id} by (...) is not followed by (expression)"));
                }
                stack.push(id.clone());
                i = j + 1;
            }
            Tok::Ident(id) if stack.last().is_some_and(|f| f == "label_values") && i > 0 && toks[i - 1] == Tok::Comma => {
                // label_values(series, label): the second argument is a label.
                uses.grouping.insert(id.clone());
            }
            Tok::Ident(id) => {
                let matchers = match toks.get(i + 1) {
                    Some(Tok::Matchers(m)) => {
                        i += 1;
                        m.clone()
                    }
                    _ => Vec::new(),
                };
                let inner = stack.last().cloned().unwrap_or_default();
                uses.series.push((id.clone(), inner, matchers));
            }
            Tok::Matchers(_) => return Err("label matchers without a metric name".into()),
            Tok::LParen => stack.push(String::new()),
            Tok::RParen => {
                stack.pop().ok_or("unbalanced ')'")?;
            }
            Tok::Range(_) | Tok::Str(_) | Tok::Num | Tok::Op | Tok::Comma => {}
        }
        i += 1;
    }
    if !stack.is_empty() {
        return Err(format!("{} unclosed '('", stack.len()));
    }
    Ok(uses)
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("the dashboard JSON")).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

/// (where, expression) for every query: panel targets and query variables.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap_or_else(|| panic!("panel {:?}: a target without expr", p["title"]));
            out.push((format!("panel {:?} {}", p["title"].as_str().unwrap_or(""), t["refId"]), e.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query");
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// The catalogued metric a series belongs to: itself, or the histogram of a _bucket/_sum/_count.
fn base<'a>(cat: &'a BTreeMap<String, Metric>, series: &str) -> Option<(&'a str, &'a Metric, &'static str)> {
    if let Some((n, m)) = cat.get_key_value(series) {
        return (m.ty != "histogram").then_some((n.as_str(), m, ""));
    }
    for suf in ["_bucket", "_sum", "_count"] {
        if let Some((n, m)) = series.strip_suffix(suf).and_then(|b| cat.get_key_value(b)) {
            if m.ty == "histogram" {
                return Some((n.as_str(), m, suf));
            }
        }
    }
    None
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_the_variables() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "schemaVersion {:?}", d["schemaVersion"]);
    assert_eq!(d["uid"], "flagrelay");
    assert!(d["title"].is_string());
    assert!(d["id"].is_null(), "id must be null so that imports create the dashboard");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).unwrap_or_else(|| panic!("no variable {n}"));
    let ds = var("datasource");
    assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let env = var("env");
    let q = env["query"]["query"].as_str().unwrap();
    assert!(q.starts_with("label_values(flagrelay_environment_revision") && q.ends_with(", env)"), "env from {q}");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        assert!(p["description"].as_str().is_some_and(|s| !s.is_empty()), "{title}: no description");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: target datasource");
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId twice");
        }
    }
}

#[test]
fn every_expression_parses_and_reads_only_catalogued_metrics() {
    let d = dashboard();
    let cat = catalogue();
    assert!(cat.len() > 30, "the catalogue parsed ({} rows)", cat.len());
    let vars: BTreeSet<String> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| format!("${}", v["name"].as_str().unwrap())).collect();
    let mut errors = Vec::new();
    let mut used = BTreeSet::new();
    for (at, expr) in expressions(&d) {
        let uses = match analyse(&expr) {
            Ok(u) => u,
            Err(e) => {
                errors.push(format!("{at}: {e}: {expr}"));
                continue;
            }
        };
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        for (series, inner, matchers) in &uses.series {
            let Some((name, m, suffix)) = base(&cat, series) else {
                errors.push(format!("{at}: {series} is not a series of a metric in docs/metrics.md"));
                continue;
            };
            used.insert(name.to_string());
            labels.extend(m.labels.iter().cloned());
            if suffix == "_bucket" {
                labels.insert("le".into());
            }
            let counting = matches!(inner.as_str(), "rate" | "increase");
            let cumulative = m.ty == "counter" || m.ty == "histogram";
            if cumulative && !counting && inner != "label_values" {
                errors.push(format!("{at}: {series} is a {} but not under rate/increase", m.ty));
            }
            if !cumulative && counting {
                errors.push(format!("{at}: {series} is a {} under {inner}", m.ty));
            }
            for (l, _, v) in matchers {
                if !m.labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    errors.push(format!("{at}: {series} has no label {l}"));
                }
                if let Some(var) = v.strip_prefix('$') {
                    if !vars.contains(&format!("${var}")) {
                        errors.push(format!("{at}: ${var} is not a dashboard variable"));
                    }
                }
            }
        }
        for g in &uses.grouping {
            if !labels.contains(g) {
                errors.push(format!("{at}: grouping by {g}, which none of its metrics has"));
            }
        }
        if expr.contains("histogram_quantile") && !(uses.grouping.contains("le") && uses.series.iter().all(|s| s.0.ends_with("_bucket"))) {
            errors.push(format!("{at}: histogram_quantile needs _bucket series aggregated by le"));
        }
    }
    assert!(errors.is_empty(), "dashboard expressions:\n{}", errors.join("\n"));
    // What issue 15 asks the dashboard to show.
    for m in [
        "flagrelay_sse_clients",
        "flagrelay_sse_delivery_seconds",
        "flagrelay_sse_change_delivery_seconds",
        "flagrelay_propagation_seconds",
        "flagrelay_data_age_seconds",
        "flagrelay_upstream_connected",
        "flagrelay_upstream_resyncs_total",
        "flagrelay_upstream_topology_changes_total",
        "flagrelay_sse_slow_disconnects_total",
        "flagrelay_events_dropped_total",
    ] {
        assert!(used.contains(m), "no panel reads {m}");
    }
}

#[test]
fn the_lexer_refuses_what_it_should() {
    for bad in [
        "sum(rate(x[5m])",
        "rate(x[5m]))",
        r#"x{env="a""#,
        "x[$foo]",
        "frobnicate(x)",
        r#"{env="a"}"#,
        "sum by (env (x)",
    ] {
        assert!(analyse(bad).is_err(), "accepted {bad}");
    }
    let u = analyse(r#"histogram_quantile(0.99, sum by (le, env) (rate(a_bucket{env=~"$env"}[$__rate_interval])))"#).unwrap();
    assert_eq!(u.series.len(), 1);
    assert_eq!(u.series[0].1, "rate");
    assert_eq!(u.grouping, ["env", "le"].iter().map(|s| s.to_string()).collect());
}

#[tokio::test]
async fn every_series_the_dashboard_reads_is_exported() {
    let d = dashboard();
    let relay = support::TestRelay::builder().start().await;
    let scrape = relay.metrics().await;
    let mut missing = BTreeSet::new();
    for (_, expr) in expressions(&d) {
        for (series, _, _) in analyse(&expr).unwrap().series {
            let exported = scrape.lines().any(|l| {
                l.strip_prefix(series.as_str()).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            });
            if !exported {
                missing.insert(series);
            }
        }
    }
    assert!(missing.is_empty(), "the dashboard reads series /metrics does not have: {missing:?}");
}
