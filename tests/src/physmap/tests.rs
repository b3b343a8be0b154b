//! Unit tests of `physmap`.

use super::*;

/// A `PHYSMAP` line of `phase` with these fields.
fn line(phase: &str, part: u64, parts: u64, total: u64, cells: &str) -> String {
    format!(
        "PHYSMAP {{\"phase\":\"{phase}\",\"frames_per_cell\":512,\"cells_total\":{total},\
         \"legend\":{{\"A\":\"1:0x40000000-0x40200000\"}},\"counts\":{{\"free\":3,\"A\":512}},\
         \"runs\":{{\"A\":1}},\"part\":{part},\"parts\":{parts},\"cells\":\"{cells}\"}}"
    )
}

#[test]
fn phases_in_order_with_parts_joined() {
    let output = [
        "[INFO  cpu0] booting".to_owned(),
        line("before", 1, 2, 7, "!a "),
        "physmap before: one character per 4 MiB".to_owned(),
        line("before", 0, 2, 7, "#.:A"),
        format!("  {}", line("after", 0, 1, 7, "#.:. A ")),
    ]
    .join("\n");
    let phases = phases(&output).expect("the sample parses");
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0].name, "before");
    assert_eq!(phases[0].cells, "#.:A!a ");
    assert_eq!(phases[0].frames_per_cell, 512);
    assert_eq!(
        phases[0].legend.get(&'A').map(String::as_str),
        Some("1:0x40000000-0x40200000")
    );
    assert_eq!(phases[1].name, "after");
    assert_eq!(phases[1].cells, "#.:. A ");
}

#[test]
fn no_lines_no_phases() {
    assert_eq!(
        phases("migration demo: ...\nPHYSMAPS are elsewhere\n"),
        Ok(Vec::new())
    );
}

#[test]
fn bad_lines_are_typed_errors() {
    let bad_json = phases("PHYSMAP {\"phase\":");
    assert!(
        matches!(bad_json, Err(PhysmapError::BadJson { line: 1, .. })),
        "{bad_json:?}"
    );
    let no_cells = phases("x\nPHYSMAP {\"phase\":\"a\",\"frames_per_cell\":4,\"cells_total\":1,\"part\":0,\"parts\":1,\"legend\":{}}");
    assert_eq!(
        no_cells,
        Err(PhysmapError::BadField {
            line: 2,
            field: "cells"
        })
    );
    let odd_cell = phases("PHYSMAP {\"phase\":\"a\",\"frames_per_cell\":3,\"cells_total\":1,\"part\":0,\"parts\":1,\"legend\":{},\"cells\":\".\"}");
    assert!(matches!(
        odd_cell,
        Err(PhysmapError::BadField {
            field: "frames_per_cell",
            ..
        })
    ));
    let legend = phases("PHYSMAP {\"phase\":\"a\",\"frames_per_cell\":1,\"cells_total\":1,\"part\":0,\"parts\":1,\"legend\":{\"ab\":\"1:0-1\"},\"cells\":\".\"}");
    assert!(
        matches!(legend, Err(PhysmapError::BadLegend { .. })),
        "{legend:?}"
    );
}

#[test]
fn parts_must_be_all_there_once_and_agree() {
    let missing = phases(&line("p", 1, 3, 3, "."));
    assert_eq!(
        missing,
        Err(PhysmapError::MissingPart {
            phase: "p".into(),
            part: 0
        })
    );
    let twice = [line("p", 0, 2, 2, "."), line("p", 0, 2, 2, ".")].join("\n");
    assert!(matches!(
        phases(&twice),
        Err(PhysmapError::BadPart { part: 0, .. })
    ));
    let beyond = phases(&line("p", 2, 2, 1, "."));
    assert!(matches!(beyond, Err(PhysmapError::BadPart { part: 2, .. })));
    let disagree = [line("p", 0, 2, 2, "."), line("p", 1, 2, 3, ".")].join("\n");
    assert_eq!(
        phases(&disagree),
        Err(PhysmapError::Inconsistent {
            phase: "p".into(),
            field: "cells_total"
        })
    );
    // A huge part count with few lines is reported, not allocated.
    let huge = phases(&line("p", 0, u64::MAX, 1, "."));
    assert!(matches!(
        huge,
        Err(PhysmapError::MissingPart { part: 1, .. })
    ));
}

#[test]
fn cells_must_add_up_and_be_known() {
    assert_eq!(
        phases(&line("p", 0, 1, 5, "..")),
        Err(PhysmapError::WrongLength {
            phase: "p".into(),
            expected: 5,
            got: 2
        })
    );
    assert_eq!(
        phases(&line("p", 0, 1, 2, ".?")),
        Err(PhysmapError::BadCell {
            phase: "p".into(),
            cell: '?'
        })
    );
}
