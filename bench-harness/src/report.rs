//! `bench-harness report`: markdown and SVG charts from result lines.

use crate::config::ReportArgs;

/// Writes the report.
pub fn run(_args: &ReportArgs) -> Result<(), String> {
    Err("not yet".into())
}
