//! A small Gherkin reader for the testbed's `.feature` files (no dependencies).
//!
//! Supports: `Feature:`, `Background:`, `Scenario:` / `Example:`, `Scenario Outline:` /
//! `Scenario Template:` with one or more `Examples:` / `Scenarios:` tables (blank lines and `#`
//! comments may sit between rows), tags on features, scenarios and examples, steps
//! (`Given`/`When`/`Then`/`And`/`But`/`*`) with data tables and doc strings (`"""` or ```` ``` ````,
//! indentation stripped up to the opening delimiter), free-text descriptions under headers, and the
//! cell escapes `\|`, `\\`, `\n`. Anything else is an error naming the line, so a testbed change that
//! this reader does not understand fails loudly instead of being skipped.

#[derive(Debug, Clone)]
pub struct Step {
    pub keyword: String,
    pub text: String,
    pub table: Vec<Vec<String>>,
    pub doc: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub tags: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub name: String,
    pub tags: Vec<String>,
    pub line: usize,
    pub outline: bool,
    pub steps: Vec<Step>,
    pub examples: Vec<Examples>,
}

#[derive(Debug, Clone, Default)]
pub struct FeatureFile {
    pub name: String,
    pub tags: Vec<String>,
    pub background: Vec<Step>,
    pub scenarios: Vec<Scenario>,
}

/// One runnable case: a plain scenario, or one examples row of an outline with placeholders filled.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// `line N` of the scenario, or of the examples row.
    pub line: usize,
    pub tags: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(PartialEq)]
enum Section {
    Start,
    Background,
    Scenario,
    Examples,
}

struct Doc {
    indent: usize,
    delim: &'static str,
    lines: Vec<String>,
}

fn keyword<'a>(t: &'a str, kws: &[&str]) -> Option<&'a str> {
    kws.iter().find_map(|k| t.strip_prefix(k)).map(str::trim)
}

/// Splits `| a | b\\|c |` into cells: trimmed first, then unescaped.
fn cells(t: &str) -> Vec<String> {
    let mut raw = Vec::new();
    let mut cur = String::new();
    let mut chars = t.trim().strip_prefix('|').unwrap_or(t).chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                cur.extend(chars.next());
            }
            '|' => raw.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    raw.iter().map(|r| unescape(r.trim())).collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('|') => out.push('|'),
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(o) => out.extend(['\\', o]),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

pub fn parse(text: &str) -> Result<FeatureFile, String> {
    let mut f = FeatureFile::default();
    let mut section = Section::Start;
    let mut tags: Vec<String> = Vec::new();
    let mut doc: Option<Doc> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |m: &str| Err(format!("line {line}: {m}: {raw:?}"));
        if let Some(d) = &mut doc {
            if raw.trim() == d.delim {
                let body = d.lines.join("\n");
                let steps = match section {
                    Section::Background => &mut f.background,
                    _ => match f.scenarios.last_mut() {
                        Some(s) => &mut s.steps,
                        None => return err("doc string outside a scenario"),
                    },
                };
                match steps.last_mut() {
                    Some(step) => step.doc = Some(body),
                    None => return err("doc string without a step"),
                }
                doc = None;
            } else {
                let strip = raw.char_indices().take_while(|&(j, c)| j < d.indent && c == ' ').count();
                d.lines.push(raw[strip..].to_string());
            }
            continue;
        }
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.starts_with('@') {
            tags.extend(t.split_whitespace().map(str::to_string));
            continue;
        }
        if let Some(name) = keyword(t, &["Feature:"]) {
            f.name = name.to_string();
            f.tags = std::mem::take(&mut tags);
        } else if keyword(t, &["Background:"]).is_some() {
            section = Section::Background;
        } else if let Some(name) = keyword(t, &["Scenario Outline:", "Scenario Template:"]) {
            f.scenarios.push(Scenario { name: name.into(), tags: std::mem::take(&mut tags), line, outline: true, ..Default::default() });
            section = Section::Scenario;
        } else if let Some(name) = keyword(t, &["Scenario:", "Example:"]) {
            f.scenarios.push(Scenario { name: name.into(), tags: std::mem::take(&mut tags), line, ..Default::default() });
            section = Section::Scenario;
        } else if keyword(t, &["Examples:", "Scenarios:"]).is_some() {
            match f.scenarios.last_mut() {
                Some(s) if s.outline => s.examples.push(Examples { tags: std::mem::take(&mut tags), ..Default::default() }),
                _ => return err("Examples outside a Scenario Outline"),
            }
            section = Section::Examples;
        } else if t.starts_with('|') {
            let row = cells(t);
            if section == Section::Examples {
                let ex = f.scenarios.last_mut().and_then(|s| s.examples.last_mut());
                match ex {
                    Some(ex) if ex.header.is_empty() => ex.header = row,
                    Some(ex) if ex.header.len() == row.len() => ex.rows.push((line, row)),
                    _ => return err("examples row width differs from its header"),
                }
            } else {
                let steps = match section {
                    Section::Background => Some(&mut f.background),
                    Section::Scenario => f.scenarios.last_mut().map(|s| &mut s.steps),
                    _ => None,
                };
                match steps.and_then(|s| s.last_mut()) {
                    Some(step) => step.table.push(row),
                    None => return err("table without a step"),
                }
            }
        } else if let Some(delim) = ["\"\"\"", "```"].into_iter().find(|d| t.starts_with(d)) {
            doc = Some(Doc { indent: raw.find(delim).unwrap_or(0), delim, lines: Vec::new() });
        } else if let Some((kw, text)) = ["Given ", "When ", "Then ", "And ", "But ", "* "]
            .iter()
            .find_map(|k| t.strip_prefix(k).map(|rest| (k.trim(), rest.trim())))
        {
            let step = Step { keyword: kw.into(), text: text.into(), table: Vec::new(), doc: None, line };
            match section {
                Section::Background => f.background.push(step),
                Section::Scenario => match f.scenarios.last_mut() {
                    Some(s) => s.steps.push(step),
                    None => return err("step outside a scenario"),
                },
                _ => return err("step outside a scenario"),
            }
        } else {
            // A free-text description is allowed under a header, before its first step.
            let in_description = match section {
                Section::Start => true,
                Section::Background => f.background.is_empty(),
                Section::Scenario => f.scenarios.last().is_some_and(|s| s.steps.is_empty()),
                Section::Examples => false,
            };
            if !in_description {
                return err("unrecognised line");
            }
        }
    }
    if doc.is_some() {
        return Err("unterminated doc string".into());
    }
    Ok(f)
}

fn fill(s: &str, header: &[String], row: &[String]) -> String {
    header.iter().zip(row).fold(s.to_string(), |acc, (h, v)| acc.replace(&format!("<{h}>"), v))
}

impl FeatureFile {
    /// Every runnable case, outlines expanded, background steps prepended.
    pub fn rows(&self) -> Vec<Row> {
        let mut out = Vec::new();
        for s in &self.scenarios {
            let tags: Vec<String> = self.tags.iter().chain(&s.tags).cloned().collect();
            if !s.outline {
                let steps = self.background.iter().chain(&s.steps).cloned().collect();
                out.push(Row { scenario: s.name.clone(), line: s.line, tags, steps });
                continue;
            }
            for ex in &s.examples {
                for (line, row) in &ex.rows {
                    let steps = self
                        .background
                        .iter()
                        .cloned()
                        .chain(s.steps.iter().map(|st| Step {
                            text: fill(&st.text, &ex.header, row),
                            table: st.table.iter().map(|r| r.iter().map(|c| fill(c, &ex.header, row)).collect()).collect(),
                            doc: st.doc.as_ref().map(|d| fill(d, &ex.header, row)),
                            ..st.clone()
                        }))
                        .collect();
                    let tags = tags.iter().chain(&ex.tags).cloned().collect();
                    out.push(Row { scenario: fill(&s.name, &ex.header, row), line: *line, tags, steps });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_outline_tables_docs_and_escapes() {
        let f = super::parse(
            "@ff\nFeature: F\n  some description\n  Scenario Outline: s <a>\n    Given x <a>\n      | k | v\\|w |\n      | <a> | 2 |\n    Then doc\n      \"\"\"\n      {\"a\": <a>}\n        indented\n      \"\"\"\n    Examples:\n      | a |\n\n      # comment\n      | 1 |\n      | \\n |\n",
        )
        .unwrap();
        let rows = f.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].scenario, "s 1");
        assert_eq!(rows[0].steps[0].table, vec![vec!["k", "v|w"], vec!["1", "2"]]);
        assert_eq!(rows[0].steps[1].doc.as_deref(), Some("{\"a\": 1}\n  indented"));
        assert_eq!(rows[1].steps[0].text, "x \n");
        assert_eq!(rows[0].tags, vec!["@ff"]);
        assert!(super::parse("Feature: F\n Scenario: s\n  Given a\n  oops\n").is_err());
    }
}
