//! Every metric in docs/metrics.md is exported, with the catalogued type, from the first scrape.

use flagrelay_testkit as support;

use support::*;

fn catalogue() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).expect("docs/metrics.md");
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let ty = cells.get(2)?;
            Some((name.to_string(), ty.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn every_catalogued_metric_is_exported_with_its_type() {
    let relay = TestRelay::builder().start().await;
    let scrape = relay.metrics().await;
    let cat = catalogue();
    assert!(cat.len() > 30, "the catalogue parsed ({} rows)", cat.len());
    let mut missing = Vec::new();
    for (name, ty) in &cat {
        let line = format!("# TYPE {name} {ty}");
        if !scrape.lines().any(|l| l == line) {
            missing.push(format!("{name} ({ty})"));
        }
    }
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}");
    // Per-environment series exist before any traffic.
    assert_eq!(metric(&scrape, "flagrelay_sse_slow_disconnects_total", &[("env", "staging")]), Some(0.0));
}

#[tokio::test]
async fn every_exported_flagrelay_metric_is_catalogued() {
    let relay = TestRelay::builder().start().await;
    let scrape = relay.metrics().await;
    let cat: Vec<String> = catalogue().into_iter().map(|(n, _)| n).collect();
    let uncatalogued: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("flagrelay_") && !cat.iter().any(|c| c == n))
        .collect();
    assert!(uncatalogued.is_empty(), "add these to docs/metrics.md: {uncatalogued:?}");
}
