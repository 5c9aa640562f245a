//! Helpers shared by the worker's integration suites.

pub mod devsite;
pub mod pg;
pub mod proc;

/// The line `secret: …` that `rotate` (in process or through the admin API) and
/// `rotate --dry-run` print for `secret`.
#[allow(dead_code)] // not every suite prints rotate lines
pub fn line_for<'a>(stdout: &'a str, secret: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{secret}: ")))
        .unwrap_or_else(|| panic!("no line for {secret}:\n{stdout}"))
}
