//! Unit tests of `bench_check`.

use super::*;

fn line(name: &str) -> String {
    let contig = if name.starts_with("vm.contig.") {
        ",\"frames_allocated_by_exchange\":0,\"contiguous\":true,\"pages_moved_per_misplaced\":1.5"
    } else {
        ""
    };
    format!(
        "BENCH {{\"name\":\"{name}\",\"value\":12.5,\"unit\":\"cycles\",\"ratio\":0.5{contig}}}"
    )
}

const CHURN_OK: &str = "# vm.huge.churn check: contig_promote lowest huge 97.0 % (at least 90 %), copied 1 bytes against copy_collapse's 2: ok";

fn all_lines(cpus: u32) -> String {
    let mut lines: Vec<String> = expected_names(cpus).iter().map(|n| line(n)).collect();
    lines.push(CHURN_OK.to_owned());
    lines.join("\n")
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

#[test]
fn values_that_cannot_be_right_are_reported() {
    let bad = [
        (
            "vm.exchange.4k",
            line("vm.exchange.4k").replace("12.5", "0"),
        ),
        (
            "vm.exchange.2m",
            line("vm.exchange.2m").replace("0.5", "-1"),
        ),
        (
            "vm.contig.4k",
            line("vm.contig.4k").replace(
                "\"frames_allocated_by_exchange\":0",
                "\"frames_allocated_by_exchange\":3",
            ),
        ),
        (
            "vm.contig.4k.tight",
            line("vm.contig.4k.tight").replace("\"contiguous\":true", "\"contiguous\":false"),
        ),
        (
            "vm.contig.2m.tight",
            line("vm.contig.2m.tight").replace("1.5}", "0.5}"),
        ),
    ];
    for (name, broken) in bad {
        let out = all_lines(8).replace(&line(name), &broken);
        let (results, problems) = check(&out, &expected_names(8));
        assert!(
            matches!(&problems[..], [Problem::Insane(n, _)] if n == name),
            "{name}: {problems:?}"
        );
        assert!(results.iter().all(|(_, ok)| *ok), "the line is there once");
    }
}

#[test]
fn a_churn_check_that_failed_or_is_missing_is_reported() {
    let failed = all_lines(8).replace(": ok", ": FAILED");
    let (_, problems) = check(&failed, &expected_names(8));
    assert!(
        matches!(problems.as_slice(), [Problem::Insane(n, why)] if n == "vm.huge.churn" && why.ends_with("FAILED")),
        "{problems:?}"
    );
    let missing = all_lines(8).replace(CHURN_OK, "");
    let (_, problems) = check(&missing, &expected_names(8));
    assert_eq!(
        problems,
        vec![Problem::Insane(
            "vm.huge.churn".to_owned(),
            "no # vm.huge.churn check line".to_owned()
        )]
    );
}

#[test]
fn the_exchange_and_contiguity_figures_are_expected() {
    let names = expected_names(8);
    for n in [
        "vm.exchange.1g",
        "vm.exchange.buffer.2m",
        "vm.contig.4k",
        "vm.contig.4k.tight",
        "vm.contig.2m.tight",
    ] {
        assert!(names.contains(&n.to_owned()), "{n}");
    }
}
