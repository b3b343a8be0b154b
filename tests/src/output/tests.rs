//! Unit tests of `output`.

use super::*;

/// A passed test, compared by name and result (not lines).
fn ok(name: &str) -> (String, TestResult) {
    (name.into(), TestResult::Ok)
}

fn outcome(test: &TestOutcome) -> (String, TestResult) {
    (test.name.clone(), test.result.clone())
}

#[test]
fn filter_strips_carriage_returns_and_escapes() {
    let raw = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b(BBdsDxe: loading\r\n[INFO  cpu0] hi\r\n";
    assert_eq!(clean(raw), "BdsDxe: loading\n[INFO  cpu0] hi\n");
}

#[test]
fn filter_handles_sequences_split_across_chunks() {
    let mut filter = SerialFilter::new();
    let mut out = Vec::new();
    for chunk in [&b"a\x1b"[..], b"[1", b";2", b"Hb\r", b"\nc"] {
        filter.push(chunk, &mut out);
    }
    assert_eq!(out, b"ab\nc");
}

#[test]
fn test_lines_ok_and_failed() {
    let report = parse(
        "[INFO  cpu0] kernel options: mode=test\n\
         test buddy::alloc_free ... ok\n\
         test paging::map_twice ... FAILED: expected AlreadyMapped, got Ok\n\
         test paging::bare ... FAILED\n\
         2 passed, 1 failed\n",
    );
    assert_eq!(outcome(&report.tests[0]), ok("buddy::alloc_free"));
    assert_eq!(
        report.test("paging::map_twice"),
        Some(&TestResult::Failed("expected AlreadyMapped, got Ok".into()))
    );
    assert_eq!(
        report.test("paging::bare"),
        Some(&TestResult::Failed(String::new()))
    );
    assert_eq!((report.passed(), report.failed()), (1, 2));
    assert_eq!(report.running, None);
    assert_eq!(
        report.summary,
        Some(Summary {
            passed: 2,
            failed: 1,
            skipped: 0
        })
    );
    assert_eq!(
        report.failures().map(|(n, _)| n).collect::<Vec<_>>(),
        ["paging::map_twice", "paging::bare"]
    );
}

#[test]
fn result_after_interleaved_log_lines() {
    let report = parse(
        "test smp::shootdown ... [INFO  cpu1] ap online\n\
         [INFO  cpu2] ap online\n\
         ok\n\
         test smp::ipi ... [WARN  cpu0] slow\n\
         FAILED: timeout waiting for cpu3\n",
    );
    assert_eq!(outcome(&report.tests[0]), ok("smp::shootdown"));
    assert_eq!(report.tests[0].lines, 0..3);
    assert_eq!(report.tests[1].lines, 3..5);
    assert_eq!(
        report.test("smp::ipi"),
        Some(&TestResult::Failed("timeout waiting for cpu3".into()))
    );
    assert_eq!(report.running, None);
}

#[test]
fn partial_line_is_the_running_test() {
    let report = parse("test buddy::alloc_free ... ok\ntest buddy::huge ... ");
    assert_eq!(report.running.as_deref(), Some("buddy::huge"));
    assert_eq!(report.tests.len(), 1);
    assert_eq!(outcome(&report.tests[0]), ok("buddy::alloc_free"));
    assert_eq!(report.running_since_line, 1);
    assert_eq!(report.summary, None);

    let report = parse("test buddy::huge ... [INFO  cpu0] allocating 1 GiB\n");
    assert_eq!(report.running.as_deref(), Some("buddy::huge"));
}

#[test]
fn words_that_only_look_like_results_do_not_count() {
    let report = parse("test a::b ... \nokay then\nFAILEDX\nbook\n[INFO  cpu1] ok\n");
    assert_eq!(report.running.as_deref(), Some("a::b"));
    assert!(report.tests.is_empty());
    let report = parse("test a::b ... [WARN  cpu0] retry FAILED: once\n");
    assert_eq!(report.running.as_deref(), Some("a::b"));
}

#[test]
fn details_before_the_result() {
    let report = parse(
        "test mem::every_frame ... (1033714 frames) ok\n\
         test mem::huge ... (order 18) FAILED: no block\n\
         test mem::after ... ok\n",
    );
    assert_eq!(outcome(&report.tests[0]), ok("mem::every_frame"));
    assert_eq!(
        report.test("mem::huge"),
        Some(&TestResult::Failed("no block".into()))
    );
    assert_eq!(outcome(&report.tests[2]), ok("mem::after"));
    assert_eq!(report.running, None);
}

#[test]
fn not_test_lines() {
    let report = parse("testing the console\ntest has no dots\ntest  ... ok\n");
    assert_eq!(report, Report::default());
}

#[test]
fn summary_forms() {
    assert_eq!(
        summary_line("0 passed, 0 failed"),
        Some(Summary {
            passed: 0,
            failed: 0,
            skipped: 0
        })
    );
    assert_eq!(
        summary_line("[INFO  cpu0] 12 passed, 3 failed (4 filtered out)"),
        Some(Summary {
            passed: 12,
            failed: 3,
            skipped: 0
        })
    );
    assert_eq!(
        summary_line("17 passed, 0 failed."),
        Some(Summary {
            passed: 17,
            failed: 0,
            skipped: 0
        })
    );
    // cargo's own result line is not the kernel's summary
    assert_eq!(
        summary_line("test result: ok. 5 passed; 0 failed; 0 ignored"),
        None
    );
    assert_eq!(summary_line("x passed, 1 failed"), None);
}

#[test]
fn last_summary_wins() {
    let report = parse("1 passed, 1 failed\n3 passed, 0 failed\n");
    assert_eq!(
        report.summary,
        Some(Summary {
            passed: 3,
            failed: 0,
            skipped: 0
        })
    );
}

#[test]
fn skipped_tests_and_the_three_part_summary() {
    let report = parse(
        "tests: 4 selected, 9 not selected (filter=mem:: skip=-)\n\
         test mem::a ... ok\n\
         test mem::huge ... skipped: no free 1 GiB block\n\
         test mem::frames ... (12 frames) skipped: needs 2 CPUs, ok?\n\
         test mem::later ... [INFO  cpu0] working\n\
         skipped\n\
         1 passed, 0 failed, 3 skipped\n",
    );
    assert_eq!(
        report.test("mem::huge"),
        Some(&TestResult::Skipped("no free 1 GiB block".into()))
    );
    assert_eq!(
        report.test("mem::frames"),
        Some(&TestResult::Skipped("needs 2 CPUs, ok?".into()))
    );
    assert_eq!(
        report.test("mem::later"),
        Some(&TestResult::Skipped(String::new()))
    );
    assert_eq!(
        (report.passed(), report.failed(), report.skipped()),
        (1, 0, 3)
    );
    assert_eq!(report.failures().count(), 0);
    let three = Summary {
        passed: 1,
        failed: 0,
        skipped: 3,
    };
    assert_eq!(report.summary, Some(three));
    assert_eq!(report.counted(), three);
    assert_eq!(three.to_string(), "1 passed, 0 failed, 3 skipped");
    assert_eq!(three.total(), 4);
}

#[test]
fn a_summary_is_not_the_running_tests_result() {
    let report = parse("test a::b ... \n0 passed, 0 failed, 1 skipped\n");
    assert_eq!(report.running.as_deref(), Some("a::b"));
    assert!(report.tests.is_empty());
    let report = parse("test a::b ... [INFO  cpu0] skipped: not a result\n");
    assert_eq!(report.running.as_deref(), Some("a::b"));
    assert_eq!(
        summary_line("7 passed, 1 failed, 2 skipped."),
        Some(Summary {
            passed: 7,
            failed: 1,
            skipped: 2
        })
    );
}

#[test]
fn bench_lines() {
    let report = parse(
        "BENCH {\"name\":\"buddy_alloc_free_order0\",\"value\":123.5,\"unit\":\"ns\",\"cpus\":4}\n\
         [INFO  cpu0] not a bench\n\
         BENCH {broken\n",
    );
    assert_eq!(report.benches.len(), 2);
    let first = &report.benches[0];
    assert_eq!(first.name(), Some("buddy_alloc_free_order0"));
    assert_eq!(first.value(), Some(123.5));
    assert_eq!(first.unit(), Some("ns"));
    assert_eq!(report.benches[1].json, None);
    assert_eq!(report.benches[1].raw, "{broken");
}
