//! `bench-check LOG [CPUS]`: check the console of `./run-qemu.sh bench --quick` (see
//! `boot_tests::bench_check`). Prints one line per expected figure and the summary
//! `N passed, N failed`; exits 0 only when every expected line is there once and every
//! `BENCH` line parses.

use boot_tests::bench_check::{check, expected_names};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (log, cpus) = match args.as_slice() {
        [log] => (log, 8),
        [log, cpus] => match cpus.parse::<u32>() {
            Ok(n) if n > 0 => (log, n),
            _ => {
                eprintln!("bench-check: CPUS must be a positive number, not {cpus:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: bench-check LOG [CPUS]");
            return ExitCode::from(2);
        }
    };
    let output = match std::fs::read_to_string(log) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-check: reading {log}: {e}");
            return ExitCode::from(2);
        }
    };
    let (results, problems) = check(&output, &expected_names(cpus));
    for (name, ok) in &results {
        println!("bench {name} ... {}", if *ok { "ok" } else { "FAILED" });
    }
    for p in &problems {
        println!("bench-check: {p}");
    }
    let passed = results.iter().filter(|(_, ok)| *ok).count();
    let failed = results.len() - passed
        + problems
            .iter()
            .filter(|p| {
                matches!(
                    p,
                    boot_tests::bench_check::Problem::Unparsed(_)
                        | boot_tests::bench_check::Problem::Insane(..)
                )
            })
            .count();
    println!("{passed} passed, {failed} failed");
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
