//! The testbed's `.feature` files as runnable rows: parsed by the `gherkin` crate, then expanded
//! here, since expansion is a runner's job that the parser leaves out.
//!
//! A scenario with `Examples:` tables gives one row per examples row, its `<placeholders>` filled
//! in the scenario name, step text, step tables and doc strings; any other scenario gives one
//! row. Background steps are prepended and feature, scenario and examples tags are joined. The
//! crate gives a table only its first line, so an examples row's line number is found by counting
//! the table's `|` lines in the source (blank lines and comments may sit between rows). A
//! `Rule:` block is refused rather than skipped, so a testbed that starts using one fails loudly.
//!
//! One fix-up before parsing: Gherkin keeps a backslash in a table cell that does not start one of
//! its escapes (`\|`, `\\`, `\n`) as it is, and the testbed relies on that (the regex `^[A-z\-]+$`),
//! but the crate rejects such a cell; so such a lone backslash is doubled first, which the crate
//! reads back as the one backslash the file meant.

use gherkin::{Feature, GherkinEnv, Scenario, Step, Table};

/// One runnable case: a plain scenario, or one examples row of an outline with placeholders filled.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// The line of the scenario, or of the examples row.
    pub line: usize,
    /// Tags without their `@`.
    pub tags: Vec<String>,
    pub steps: Vec<Step>,
}

/// Parses one `.feature` file.
pub fn parse(text: &str) -> Result<Feature, String> {
    let f = Feature::parse(keep_lone_backslashes(text), GherkinEnv::default()).map_err(|e| e.to_string())?;
    if let Some(r) = f.rules.first() {
        return Err(format!("line {}: `Rule:` blocks are not run by this runner", r.position.line));
    }
    Ok(f)
}

/// `text` with every backslash in a table row that starts no Gherkin cell escape doubled (line
/// numbers unchanged).
fn keep_lone_backslashes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.trim_start().starts_with('|') {
            out.push_str(line);
            continue;
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '\\' {
                match chars.peek() {
                    Some(&e @ ('|' | '\\' | 'n')) => {
                        out.push(e);
                        chars.next();
                    }
                    _ => out.push('\\'),
                }
            }
        }
    }
    out
}

/// Every runnable case of `feature` (parsed from `text`), outlines expanded, background steps
/// prepended.
pub fn rows(feature: &Feature, text: &str) -> Vec<Row> {
    let background: &[Step] = feature.background.as_ref().map_or(&[], |b| &b.steps);
    let mut out = Vec::new();
    for s in &feature.scenarios {
        let tags: Vec<String> = feature.tags.iter().chain(&s.tags).cloned().collect();
        if s.examples.is_empty() {
            let steps = background.iter().chain(&s.steps).cloned().collect();
            out.push(Row { scenario: s.name.clone(), line: s.position.line, tags, steps });
            continue;
        }
        for ex in &s.examples {
            let Some((header, values)) = ex.table.as_ref().and_then(|t| t.rows.split_first()) else { continue };
            let lines = ex.table.as_ref().map(|t| row_lines(text, t)).unwrap_or_default();
            for (values, line) in values.iter().zip(lines.into_iter().skip(1)) {
                let fill = |s: &str| fill(s, header, values);
                out.push(Row {
                    scenario: fill(&s.name),
                    line,
                    tags: tags.iter().chain(&ex.tags).cloned().collect(),
                    steps: background.iter().cloned().chain(filled_steps(s, &fill)).collect(),
                });
            }
        }
    }
    out
}

fn filled_steps<'a>(s: &'a Scenario, fill: &'a impl Fn(&str) -> String) -> impl Iterator<Item = Step> + 'a {
    s.steps.iter().map(move |st| {
        let mut st = st.clone();
        st.value = fill(&st.value);
        if let Some(t) = &mut st.table {
            t.rows.iter_mut().flatten().for_each(|c| *c = fill(c));
        }
        if let Some(d) = &mut st.docstring {
            *d = fill(d);
        }
        st
    })
}

fn fill(s: &str, header: &[String], values: &[String]) -> String {
    header.iter().zip(values).fold(s.to_string(), |acc, (h, v)| acc.replace(&format!("<{h}>"), v))
}

/// The source line of each row of `table`, header first.
fn row_lines(text: &str, table: &Table) -> Vec<usize> {
    text.lines()
        .enumerate()
        .skip(table.position.line.saturating_sub(1))
        .filter(|(_, l)| l.trim_start().starts_with('|'))
        .map(|(i, _)| i + 1)
        .take(table.rows.len())
        .collect()
}

#[cfg(test)]
mod tests {
    const OUTLINE: &str = "@ff\nFeature: F\n  some description\n  Scenario Outline: s <a>\n    Given x <a>\n      | k | v\\|w |\n      | <a> | 2 |\n    Then doc\n      \"\"\"\n      {\"a\": <a>}\n      \"\"\"\n    @ex\n    Examples:\n      | a |\n\n      # comment\n      | 1 |\n      | \\n |\n  Scenario: plain\n    Given y\n";

    #[test]
    fn an_outline_gives_one_row_per_examples_row_with_its_own_line_and_placeholders_filled() {
        let rows = super::rows(&super::parse(OUTLINE).unwrap(), OUTLINE);
        assert_eq!(rows.iter().map(|r| (r.scenario.as_str(), r.line)).collect::<Vec<_>>(), [("s 1", 17), ("s \n", 18), ("plain", 19)]);
        assert_eq!(rows[0].steps[0].value, "x 1");
        assert_eq!(rows[0].steps[0].table.as_ref().unwrap().rows, [["k", "v|w"], ["1", "2"]]);
        assert_eq!(rows[0].steps[1].docstring.as_deref().map(str::trim), Some("{\"a\": 1}"));
        assert_eq!(rows[0].tags, ["ff", "ex"]);
        assert_eq!(rows[2].tags, ["ff"]);
    }

    #[test]
    fn a_backslash_that_starts_no_escape_stays_in_the_cell() {
        let text = "Feature: F\n Scenario Outline: s\n  Given <p>\n  Examples:\n   | p |\n   | ^[A-z\\-]+$ \\| \\\\ |\n";
        let rows = super::rows(&super::parse(text).unwrap(), text);
        assert_eq!(rows[0].steps[0].value, "^[A-z\\-]+$ | \\");
    }

    #[test]
    fn a_line_the_parser_does_not_understand_is_an_error() {
        assert!(super::parse("Feature: F\n Scenario: s\n  Given a\n  oops\n").is_err());
    }

    #[test]
    fn a_rule_block_is_refused_rather_than_skipped() {
        assert!(super::parse("Feature: F\n Rule: r\n  Scenario: s\n   Given a\n").is_err());
    }
}
