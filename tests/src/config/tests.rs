//! Unit tests of `config`.

use super::*;

#[test]
fn mem_sizes_parse_like_qemu() {
    assert_eq!("256M".parse::<MemSize>().unwrap().as_mib(), 256);
    assert_eq!("256".parse::<MemSize>().unwrap().as_mib(), 256);
    assert_eq!("4G".parse::<MemSize>().unwrap().as_mib(), 4096);
    assert_eq!("8gib".parse::<MemSize>().unwrap().as_mib(), 8192);
    assert_eq!("1T".parse::<MemSize>().unwrap().as_mib(), 1 << 20);
}

#[test]
fn bad_mem_sizes_are_errors() {
    for bad in [
        "",
        "G",
        "4X",
        "0",
        "16M",
        "2T",
        "99999999999999999999G",
        "-1G",
    ] {
        assert!(
            matches!(bad.parse::<MemSize>(), Err(Error::InvalidMemSize { .. })),
            "{bad:?} was accepted"
        );
    }
}

#[test]
fn mem_sizes_print_shortest() {
    assert_eq!(MemSize::mib(256).unwrap().to_string(), "256M");
    assert_eq!(MemSize::gib(8).unwrap().to_string(), "8G");
    assert_eq!(MemSize::mib(1536).unwrap().to_string(), "1536M");
}

#[test]
fn label_names_the_configuration() {
    let config = QemuConfig::new()
        .firmware(Firmware::Uefi)
        .smp(1)
        .mem(MemSize::gib(8).unwrap());
    assert_eq!(config.label(), "uefi/1cpu/8G");
    assert!(config.image_path().ends_with("uefi.img"));
}
