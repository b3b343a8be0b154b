//! Unit tests of `qemu-run`.

use super::*;

fn parse(args: &[&str]) -> Result<Command, CliError> {
    parse_args(args.iter().map(|s| s.to_string()))
}

fn config(args: &[&str]) -> QemuConfig {
    match parse(args) {
        Ok(Command::Run { config, .. }) => config,
        Ok(Command::Help) => panic!("help"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn defaults() {
    let c = config(&[]);
    assert_eq!(c.label(), "bios/4cpu/4G");
    assert!(c.stream && !c.gdb);
    assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    assert_eq!(c.test_timeout, None);
}

#[test]
fn all_flags() {
    let c = config(&[
        "--uefi",
        "--smp",
        "1",
        "--mem=8G",
        "--opts",
        "mode=test seed=3",
        "--timeout",
        "30",
        "--test-timeout",
        "12",
        "--images",
        "/x",
        "--gdb",
        "--quiet",
    ]);
    assert_eq!(c.label(), "uefi/1cpu/8G");
    assert_eq!(c.options, "mode=test seed=3");
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.test_timeout, Some(Duration::from_secs(12)));
    assert_eq!(c.images, PathBuf::from("/x"));
    assert!(c.gdb && !c.stream);
    assert!(matches!(
        parse(&["--tests"]),
        Ok(Command::Run { tests: true, .. })
    ));
    assert!(matches!(parse(&[]), Ok(Command::Run { tests: false, .. })));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for args in [
        &["--smp", "0"][..],
        &["--smp", "lots"],
        &["--mem", "4X"],
        &["--timeout", "-3"],
        &["--timeout"],
        &["--test-timeout", "0"],
        &["--test-timeout"],
        &["--frobnicate"],
        &["positional"],
    ] {
        assert!(parse(args).is_err(), "{args:?} accepted");
    }
    assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
}

#[test]
fn picture_path() {
    match parse(&["--picture", "/tmp/p.png"]) {
        Ok(Command::Run { picture, .. }) => assert_eq!(picture, PathBuf::from("/tmp/p.png")),
        _ => panic!("--picture refused"),
    }
    match parse(&[]) {
        Ok(Command::Run { picture, .. }) => {
            assert!(picture.ends_with("target/demo/physmap.png"), "{picture:?}")
        }
        _ => panic!("no arguments refused"),
    }
    assert!(parse(&["--picture"]).is_err());
}
