//! `leak-scan --ledger FILE --dir DIR [--require STREAM,...] [--show N]`: searches every
//! file under DIR for every secret of the ledger (see `kv_rotator_leakscan::scan`).
//!
//! Prints what it tracked and scanned, each hit (file, byte offset, kind, form — never the
//! secret), then a self-check: a recorded password planted in a synthetic log line must be
//! found. Exit status: 0 clean; 1 on any hit; 2 when the scan proves nothing (an
//! unreadable or empty ledger, a required stream with no bytes, a failed self-check).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use kv_rotator_leakscan::scan::{Ledger, Patterns, MIN_LEN};

struct Args {
    ledger: PathBuf,
    dir: PathBuf,
    require: Vec<String>,
    show: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut ledger, mut dir, mut require, mut show) = (None, None, Vec::new(), 50);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--ledger" => ledger = Some(PathBuf::from(value()?)),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--require" => require.extend(value()?.split(',').filter(|s| !s.is_empty()).map(str::to_owned)),
            "--show" => show = value()?.parse().map_err(|e| format!("--show: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        ledger: ledger.ok_or("--ledger FILE is required")?,
        dir: dir.ok_or("--dir DIR is required")?,
        require,
        show,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leak scan: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let args = parse_args()?;
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.ledger).map_err(|e| format!("{}: {e}", args.ledger.display()))?;
    let ledger = Ledger::parse(&text)?;
    if ledger.secrets.is_empty() {
        return Err(format!(
            "{}: no secret to search (was the suite built with the leak-ledger feature and KVR_LEAK_LEDGER set?)",
            args.ledger.display()
        ));
    }
    let patterns = Patterns::new(&ledger)?;
    let report = patterns.scan_dir(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let total = report.total();
    let kinds: Vec<String> = ledger.by_kind.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    println!(
        "leak scan: tracked {} passwords and verifiers ({}; {} shorter than {MIN_LEN} characters not searched) as {} \
         patterns, scanned {} bytes in {} files in {:.1} s, {} hits",
        ledger.total(),
        kinds.join(", "),
        ledger.too_short,
        patterns.len(),
        total.bytes,
        total.files,
        started.elapsed().as_secs_f64(),
        report.hits.len()
    );
    for (stream, volume) in &report.streams {
        println!("  {stream:<12} {:>6} files {:>12} bytes", volume.files, volume.bytes);
    }
    println!("  audit records in the logs: {}", report.audit_records);

    let mut unproven = Vec::new();
    for stream in &args.require {
        if report.streams.get(stream).is_none_or(|v| v.bytes == 0) {
            unproven.push(stream.as_str());
        }
    }
    if args.require.iter().any(|s| s == "log") && report.audit_records == 0 {
        unproven.push("audit records in the logs");
    }

    for hit in report.hits.iter().take(args.show) {
        println!("LEAK {hit}");
    }
    if report.hits.len() > args.show {
        println!("… and {} more", report.hits.len() - args.show);
    }

    // The scan can fail: a recorded password planted in a log line is found.
    let planted = ledger.secrets.iter().find(|s| s.kind == "generated").unwrap_or(&ledger.secrets[0]);
    let mut line = b"planted: ".to_vec();
    line.extend_from_slice(planted.bytes());
    line.push(b'\n');
    let found = patterns.scan_bytes("self-check", &line);
    let self_check = found.iter().any(|h| h.offset == 9 && h.ledger_line == planted.line);
    println!(
        "self-check: a recorded {} secret planted in a log line was {}",
        planted.kind,
        if self_check { "found" } else { "NOT found" }
    );

    if !self_check {
        return Err("the self-check failed: the scanner cannot see a planted password".to_owned());
    }
    if !unproven.is_empty() {
        return Err(format!("nothing captured for: {} (is the capture broken?)", unproven.join(", ")));
    }
    Ok(if report.hits.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
