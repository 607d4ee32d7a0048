//! The `percid` command: how percid runs on this machine (`status`) and side-by-side
//! benchmarks against its peers (`bench`).

mod bench;
mod demo;
mod json;
mod machine;
mod numa_view;
mod status;

use std::io::Write;
use std::process::ExitCode;

use bench::{BENCHES, Config};

/// Largest `--threads` for the demonstration; beyond it thread creation, not rseq, is
/// what would be shown.
const MAX_DEMO_THREADS: usize = 4096;

fn usage() -> String {
    let mut benches = String::new();
    for b in BENCHES {
        benches.push_str(&format!("      {:<10}{}\n", b.name, b.about));
    }
    format!(
        "percid {version}: per-CPU data structures on Linux rseq, keyed by mm_cid

Usage:
  percid [status] [--json] [--threads N]
      Show the rseq registration, the machine, percid's storage, and a live
      demonstration: N threads (default 4 per allowed CPU) recording the cids and
      CPU ids they run on. --json prints one JSON object instead.
  percid bench NAME [--quick] [--json]
      Measure percid against its peers, alternating in one run. --quick takes
      seconds; --json prints one JSON object (progress goes to stderr).
      Benchmarks:
{benches}  percid help | --help | -h
      Show this text.
  percid version | --version | -V
      Show the version.
",
        version = env!("CARGO_PKG_VERSION")
    )
}

/// A mistake on the command line: reported on stderr with exit status 2.
struct UsageError(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(output) => emit(&output),
        Err(UsageError(msg)) => {
            eprintln!("percid: error: {msg}\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

/// Runs the command and returns what it prints on stdout.
fn dispatch(args: &[String]) -> Result<String, UsageError> {
    let (command, rest) = match args.split_first() {
        None => ("status", args),
        // Options alone mean `status` with those options.
        Some((first, _)) if first.starts_with("--") && !is_help(first) && first != "--version" => {
            ("status", args)
        }
        Some((first, rest)) => (first.as_str(), rest),
    };
    match command {
        "status" => run_status(rest),
        "bench" => run_bench(rest),
        c if is_help(c) => Ok(usage()),
        "version" | "--version" | "-V" => Ok(format!("percid {}\n", env!("CARGO_PKG_VERSION"))),
        other => Err(UsageError(format!("unknown command `{other}`"))),
    }
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "help" | "--help" | "-h")
}

fn run_status(args: &[String]) -> Result<String, UsageError> {
    let mut json = false;
    let mut threads = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--threads" => {
                let value = args
                    .next()
                    .ok_or_else(|| UsageError("--threads needs a value".into()))?;
                threads = Some(parse_threads(value)?);
            }
            a if a.starts_with("--threads=") => {
                threads = Some(parse_threads(&a["--threads=".len()..])?);
            }
            a if is_help(a) => return Ok(usage()),
            a => return Err(UsageError(format!("unknown option `{a}` for status"))),
        }
    }
    let report = status::Report::gather(threads);
    Ok(if json {
        format!("{}\n", report.json())
    } else {
        report.text()
    })
}

fn parse_threads(value: &str) -> Result<usize, UsageError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_DEMO_THREADS).contains(&n) => Ok(n),
        _ => Err(UsageError(format!(
            "--threads takes a number from 1 to {MAX_DEMO_THREADS}, not `{value}`"
        ))),
    }
}

fn run_bench(args: &[String]) -> Result<String, UsageError> {
    // Internal: the child processes `bench memory` starts, each with the allocator
    // under test as its global allocator.
    if let [cmd, rest @ ..] = args
        && cmd == "memory-child"
    {
        return bench::memory_child(rest).map_err(UsageError);
    }
    // Internal: the child process `bench pool` starts to measure one allocator's
    // peak memory on the larson workload.
    if let [cmd, alloc, threads, ops] = args
        && cmd == "larson-rss"
    {
        let parse = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| UsageError(format!("`{v}`: {e}")))
        };
        return bench::larson_rss_child(alloc, parse(threads)? as usize, parse(ops)?)
            .map_err(UsageError);
    }
    let mut name = None;
    let (mut quick, mut json) = (false, false);
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = true,
            a if is_help(a) => return Ok(usage()),
            a if a.starts_with('-') => {
                return Err(UsageError(format!("unknown option `{a}` for bench")));
            }
            a if name.is_none() => name = Some(a),
            a => return Err(UsageError(format!("unexpected argument `{a}`"))),
        }
    }
    let names: Vec<&str> = BENCHES.iter().map(|b| b.name).collect();
    let Some(name) = name else {
        return Err(UsageError(format!(
            "bench needs a benchmark name: {}",
            names.join(", ")
        )));
    };
    let bench = BENCHES.iter().find(|b| b.name == name).ok_or_else(|| {
        UsageError(format!(
            "unknown benchmark `{name}` (known: {})",
            names.join(", ")
        ))
    })?;
    let report = bench.report(&Config::new(quick));
    Ok(if json {
        format!("{}\n", report.json())
    } else {
        report.table()
    })
}

/// Writes the output in one go; a closed pipe (`percid status | head`) is not an error.
fn emit(output: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("percid: error: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn help_lists_commands_and_benches() {
        for h in ["help", "--help", "-h"] {
            let text = dispatch(&args(&[h])).ok().expect("help works");
            assert!(text.contains("percid bench NAME") && text.contains("getcpu"));
            assert!(text.contains("ring") && text.contains("MPSC"));
        }
    }

    #[test]
    fn rejects_unknown_input() {
        assert!(dispatch(&args(&["frobnicate"])).is_err());
        assert!(dispatch(&args(&["status", "--bogus"])).is_err());
        assert!(dispatch(&args(&["status", "--threads", "0"])).is_err());
        assert!(dispatch(&args(&["bench"])).is_err());
        assert!(dispatch(&args(&["bench", "nope"])).is_err());
        assert!(dispatch(&args(&["bench", "getcpu", "--slow"])).is_err());
    }

    #[test]
    fn status_json_is_one_object() {
        let out = dispatch(&args(&["--json", "--threads=2"]))
            .ok()
            .expect("status");
        assert!(out.starts_with("{\"rseq\":{\"owner\":") && out.ends_with("}\n"));
        assert_eq!(out.lines().count(), 1);
    }
}
