//! Small helpers for what the CLI prints: sizes, JSON lines, the file progress bar.

use std::io::Write as _;

/// Writes a line to stdout; a closed stdout (`| head`) is not an error worth a panic.
pub fn out(line: &str) -> bool {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}").and_then(|_| o.flush()).is_ok()
}

/// One JSON line on stdout; `false` once stdout is closed.
pub fn json_out<T: serde::Serialize>(v: &T) -> bool {
    match serde_json::to_string(v) {
        Ok(s) => out(&s),
        Err(_) => false,
    }
}

/// The terminal's progress bar of `ferry backup` and `ferry restore`: a phase, files done of
/// the total, and a line of detail.
pub fn file_bar() -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix:9} [{bar:30}] {pos}/{len} files\n  {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn json_line<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// This process's peak resident memory so far (`VmHWM`), for the `--json` reports: memory
/// that grows with the library shows up there, and the scale tests read it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
