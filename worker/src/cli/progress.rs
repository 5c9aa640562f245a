//! What `kv-rotator rotate` shows while it runs and when it ends, the same whether the
//! running service's engine rotates (through its admin API) or this process does.
//!
//! - `--output auto` (the default): a progress bar on stderr when stdout is a terminal,
//!   with each failure printed as it happens, then the text result; JSON lines when stdout
//!   is not a terminal (a pipeline, a log collector).
//! - `--output text`: one line per secret, `NAME: OUTCOME`, in the order asked, then a
//!   blank line and a summary table (outcomes and how many secrets ended each way).
//! - `--output json`: one object per secret as it ends (`"type": "secret"`, the fields of
//!   [`JobSecret`]), then one `"type": "summary"` object.
//!
//! [`Progress::finish`] is an error when any secret failed (or was refused as too soon),
//! so the exit code says whether the operator got what was asked. Text from the vault or
//! the engine is printed escaped.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::admin::jobs::JobSecret;
use crate::logging::sanitized;

/// How `rotate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A progress bar and text on a terminal, JSON lines otherwise.
    Auto,
    /// One line per secret and a summary table.
    Text,
    /// One JSON object per secret as it ends, then a summary object.
    Json,
}

/// The output of one `rotate` run.
#[derive(Debug)]
pub struct Progress {
    json: bool,
    bar: Option<ProgressBar>,
    /// The secrets, in the order asked.
    names: Vec<String>,
    /// Each secret's end, in the order asked.
    ended: Vec<Option<JobSecret>>,
}

/// A name or text from the vault or the engine, escaped for printing.
fn shown(text: &str, max: usize) -> String {
    sanitized(text, max)
}

impl Progress {
    /// Starts the output of a run over the secrets `names`.
    pub fn start(format: OutputFormat, names: &[String]) -> Self {
        let total = names.len();
        let terminal = std::io::stdout().is_terminal();
        let json = match format {
            OutputFormat::Json => true,
            OutputFormat::Text => false,
            OutputFormat::Auto => !terminal,
        };
        let bar = (format == OutputFormat::Auto && terminal && total > 0).then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { json, bar, names: names.to_vec(), ended: vec![None; total] }
    }

    /// Secret number `index` (in the order asked) has ended as `entry` says. Each is
    /// counted once, however often it is reported.
    pub fn ended(&mut self, index: usize, entry: &JobSecret) {
        let Some(slot) = self.ended.get_mut(index) else { return };
        if slot.is_some() {
            return;
        }
        *slot = Some(entry.clone());
        if self.json {
            let mut line = serde_json::to_value(entry).unwrap_or_default();
            line["type"] = json!("secret");
            println!("{line}");
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if entry.ok != Some(true) {
                bar.println(line_of(entry));
            }
            let failed = self.ended.iter().flatten().filter(|e| e.ok != Some(true)).count();
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
    }

    /// Ends the output: the text lines and summary table, or the summary object. An error
    /// when any secret failed or never ended.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let total = self.ended.len();
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = 0;
        for entry in &self.ended {
            let state = entry.as_ref().map_or("unfinished", |e| e.state.as_str());
            *by_state.entry(shown(state, 40)).or_default() += 1;
            if entry.as_ref().is_none_or(|e| e.ok != Some(true)) {
                failed += 1;
            }
        }
        if self.json {
            println!("{}", json!({ "type": "summary", "total": total, "failed": failed, "states": by_state }));
        } else if total == 0 {
            println!("nothing to do");
        } else {
            for (name, entry) in self.names.iter().zip(&self.ended) {
                match entry {
                    Some(entry) => println!("{}", line_of(entry)),
                    None => println!("{}: unfinished: no outcome was reported", shown(name, 200)),
                }
            }
            println!();
            print!("{}", summary_table(&by_state, total));
        }
        if failed > 0 {
            bail!("{failed} of {total} rotation(s) failed");
        }
        Ok(())
    }
}

/// `NAME: OUTCOME`, escaped.
fn line_of(entry: &JobSecret) -> String {
    let detail = entry.detail.as_deref().unwrap_or(&entry.state);
    format!("{}: {}", shown(&entry.secret, 200), shown(detail, 4096))
}

/// The outcomes and how many secrets ended each way, then the total.
fn summary_table(by_state: &BTreeMap<String, usize>, total: usize) -> String {
    let width = by_state.keys().map(String::len).max().unwrap_or(0).max("outcome".len());
    let mut table = format!("{:<width$}  secrets\n", "outcome");
    for (state, count) in by_state {
        table.push_str(&format!("{state:<width$}  {count:>7}\n"));
    }
    table.push_str(&format!("{:<width$}  {total:>7}\n", "total"));
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_table_counts_each_outcome_and_the_total() {
        let by_state = BTreeMap::from([("failed".to_owned(), 2), ("rotated".to_owned(), 198)]);
        let table = summary_table(&by_state, 200);
        let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            rows,
            vec![vec!["outcome", "secrets"], vec!["failed", "2"], vec!["rotated", "198"], vec!["total", "200"]]
        );
    }
}
