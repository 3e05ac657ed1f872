//! The report: `report.json` (every field) and `report.md` (the table in
//! docs/reliability.md).

use std::path::{Path, PathBuf};

use crate::scenarios::Outcome;

/// Writes both files into `dir`; returns the Markdown one.
pub fn write(dir: &Path, outcomes: &[Outcome]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(outcomes)?)?;
    let mut md = String::from(
        "| scenario | provider | acked | delivered | lost | duplicated | out of order | discontinuities | first ack after the fault | converged after | p99 before / during / after the fault |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut notes = String::new();
    for o in outcomes {
        let v = &o.verdict;
        let disc = if v.discontinuities.is_empty() {
            "0".to_owned()
        } else {
            v.discontinuities
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            o.provider,
            v.acked,
            v.delivered,
            v.lost,
            v.duplicated,
            v.out_of_order,
            disc,
            o.recovery_ms.map_or("never".into(), |ms| format!("{ms} ms")),
            o.converged_ms.map_or("never".into(), |ms| format!("{ms} ms")),
            o.p99_by_phase_ms
                .iter()
                .map(|p| p.map_or("-".into(), |ms| format!("{ms:.0}")))
                .collect::<Vec<_>>()
                .join(" / ")
                + " ms",
        ));
        for n in &o.notes {
            notes.push_str(&format!("- {} on {}: {n}\n", o.scenario, o.provider));
        }
    }
    if !notes.is_empty() {
        md.push('\n');
        md.push_str(&notes);
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}
