//! Unit tests of `bench_check`.

use super::*;

fn line(name: &str) -> String {
    format!("BENCH {{\"name\":\"{name}\",\"value\":12.5,\"unit\":\"cycles\",\"ratio\":0.5}}")
}

fn all_lines(cpus: u32) -> String {
    expected_names(cpus)
        .iter()
        .map(|n| line(n))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_complete_run_passes() {
    let out = format!("[INFO  cpu0] booting\n{}\n# a comment\n", all_lines(8));
    let (results, problems) = check(&out, &expected_names(8));
    assert_eq!(problems, vec![]);
    assert!(results.iter().all(|(_, ok)| *ok));
    assert_eq!(results.len(), expected_names(8).len());
}

#[test]
fn fewer_cpus_expect_fewer_shootdown_lines() {
    let four = expected_names(4);
    assert!(four.contains(&"tlb.shootdown.kernel.full.r3".to_owned()));
    assert!(!four.iter().any(|n| n.ends_with(".r7")));
    assert_eq!(expected_names(8).len(), four.len() + 8);
    assert!(!expected_names(1)
        .iter()
        .any(|n| n.starts_with("tlb.shootdown")));
}

#[test]
fn a_missing_line_is_named() {
    let out = all_lines(8).replace(&line("tlb.policy.n64"), "");
    let (results, problems) = check(&out, &expected_names(8));
    assert_eq!(problems, vec![Problem::Missing("tlb.policy.n64".into())]);
    assert!(results.contains(&("tlb.policy.n64".into(), false)));
}

#[test]
fn a_broken_or_incomplete_line_is_reported() {
    let out = format!(
        "{}\nBENCH {{\"name\":\"vm.migrate.4k\",\"value\":1.0\nBENCH {{\"name\":\"x\",\"unit\":\"s\"}}",
        all_lines(8)
    );
    let (_, problems) = check(&out, &expected_names(8));
    assert_eq!(problems.len(), 2);
    assert!(problems.iter().all(|p| matches!(p, Problem::Unparsed(_))));
}

#[test]
fn a_repeated_line_is_reported() {
    let out = format!("{}\n{}", all_lines(8), line("vm.migrate.1g"));
    let (_, problems) = check(&out, &expected_names(8));
    assert_eq!(problems, vec![Problem::Repeated("vm.migrate.1g".into(), 2)]);
}
