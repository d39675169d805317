//! GGUF control vectors (`rosetta_steering::gguf`): round trips, interoperability with the `gguf`
//! Python package (the writer repeng uses; llama.cpp's `gguf-py`), refusals, and fuzzing.
//!
//! The Python tests run `scripts/check_gguf.py` with `$ROSETTA_HOME/venv/bin/python` (default
//! `~/.cache/rosetta/venv/bin/python`); they are skipped, with a message, only when that python does
//! not exist. If it exists but the script fails (e.g. no `gguf` package), the tests fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rosetta_steering::gguf::{ControlVector, GgufError};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn tmp_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sample_vector() -> ControlVector {
    let mut directions = BTreeMap::new();
    directions.insert(1, vec![0.5, -0.0, 1.0e-40, 3.25, -7.0]);
    directions.insert(3, vec![f32::MAX, f32::MIN_POSITIVE, -1.5, 0.0, 2.0]);
    directions.insert(27, vec![0.1, 0.2, 0.3, 0.4, 0.5]);
    ControlVector {
        model_hint: "qwen2".into(),
        directions,
    }
}

fn python() -> Option<PathBuf> {
    let home = match std::env::var_os("ROSETTA_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/rosetta"),
    };
    let py = home.join("venv/bin/python");
    if py.exists() {
        Some(py)
    } else {
        eprintln!(
            "SKIP: {} does not exist; the gguf-package interoperability checks need Rosetta's venv",
            py.display()
        );
        None
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_gguf.py")
}

/// Runs `check_gguf.py ARGS` and parses its JSON stdout.
fn run_script(py: &Path, args: &[&str]) -> Value {
    let out = Command::new(py).arg(script()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "check_gguf.py {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes a sample with the `gguf` package; returns the file and the directions it says it wrote.
fn python_sample(py: &Path, dir: &Path, name: &str, extra_args: &[&str]) -> (PathBuf, Value) {
    let path = dir.join(name);
    let mut args = vec!["--write-sample", path.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    let described = run_script(py, &args);
    (path, described)
}

fn directions_from_json(v: &Value) -> BTreeMap<usize, Vec<f32>> {
    v["directions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, vals)| {
            let vals = vals
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (k.parse().unwrap(), vals)
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A minimal GGUF builder for hand-made (valid and invalid) files.
struct Builder {
    version: u32,
    alignment: usize,
    kvs: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

impl Builder {
    fn new() -> Self {
        Builder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        }
    }

    /// A control vector header: architecture, model hint, `layer_count` as UINT32.
    fn control_vector() -> Self {
        let mut b = Self::new();
        b.kv_str("general.architecture", "controlvector");
        b.kv_str("controlvector.model_hint", "llama");
        b.kv("controlvector.layer_count", 4, &2u32.to_le_bytes());
        b
    }

    fn kv(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
        self.kvs.extend(gstr(key.as_bytes()));
        self.kvs.extend_from_slice(&ty.to_le_bytes());
        self.kvs.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.kv(key, 8, &gstr(value.as_bytes()))
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }

    fn f32_tensor(&mut self, name: &str, values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &[values.len() as u64], 0, data)
    }

    fn build(&self) -> Vec<u8> {
        let pad = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
        let mut offset = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            out.extend(gstr(name.as_bytes()));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += pad(data.len());
        }
        out.resize(pad(out.len()), 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(pad(out.len()), 0);
        }
        out
    }
}

/// A valid file with many kinds of unrelated metadata (arrays, nested arrays, strings, scalars).
fn rich_file() -> Vec<u8> {
    let mut b = Builder::new();
    b.kv_str("general.name", "rich");
    b.kv("x.u8", 0, &[7]);
    b.kv("x.i8", 1, &[0xff]);
    b.kv("x.u16", 2, &3u16.to_le_bytes());
    b.kv("x.i16", 3, &(-3i16).to_le_bytes());
    b.kv("x.f32", 6, &0.5f32.to_le_bytes());
    b.kv("x.bool", 7, &[1]);
    b.kv("x.u64", 10, &u64::MAX.to_le_bytes());
    b.kv("x.i64", 11, &i64::MIN.to_le_bytes());
    b.kv("x.f64", 12, &1.5f64.to_le_bytes());
    // ARRAY of UINT32 [1, 2, 3]
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&3u64.to_le_bytes());
    for v in [1u32, 2, 3] {
        arr.extend_from_slice(&v.to_le_bytes());
    }
    b.kv("x.arr_u32", 9, &arr);
    // ARRAY of STRING ["a", ""]
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&2u64.to_le_bytes());
    arr.extend(gstr(b"a"));
    arr.extend(gstr(b""));
    b.kv("x.arr_str", 9, &arr);
    // ARRAY of ARRAY of INT8: [[1, 2], []]
    let mut arr = 9u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&2u64.to_le_bytes());
    arr.extend_from_slice(&1u32.to_le_bytes());
    arr.extend_from_slice(&2u64.to_le_bytes());
    arr.extend_from_slice(&[1, 2]);
    arr.extend_from_slice(&1u32.to_le_bytes());
    arr.extend_from_slice(&0u64.to_le_bytes());
    b.kv("x.arr_arr", 9, &arr);
    // Non-UTF-8 string under an unrelated key: skipped, not decoded.
    b.kv("x.bytes", 8, &gstr(&[0xff, 0xfe]));
    b.kv_str("general.architecture", "controlvector");
    b.kv_str("controlvector.model_hint", "gemma2");
    b.kv("controlvector.layer_count", 5, &2i32.to_le_bytes());
    b.kv("general.alignment", 4, &64u32.to_le_bytes());
    b.alignment = 64;
    b.f32_tensor("direction.2", &[1.0, 2.0, 3.0]);
    b.f32_tensor("direction.9", &[-1.0, -2.0, -3.0]);
    b.build()
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_is_byte_identical() {
    let cv = sample_vector();
    let bytes = cv.to_bytes().unwrap();
    let back = ControlVector::from_bytes(&bytes, "memory").unwrap();
    assert_eq!(back.model_hint, cv.model_hint);
    assert_eq!(
        back.directions.keys().collect::<Vec<_>>(),
        vec![&1, &3, &27]
    );
    for (k, v) in &cv.directions {
        assert_eq!(bits(&back.directions[k]), bits(v), "block {k}");
    }
    assert_eq!(back.to_bytes().unwrap(), bytes);

    // Through files: write, read, write again.
    let dir = tmp_dir("roundtrip");
    let a = dir.join("a.gguf");
    let b = dir.join("b.gguf");
    cv.write(&a).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), bytes);
    let read = ControlVector::read(&a).unwrap();
    read.write(&b).unwrap();
    assert_eq!(std::fs::read(&b).unwrap(), bytes);
    // Overwriting an existing file works and leaves no temporary files behind.
    read.write(&a).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "unexpected files: {names:?}");

    // Layout: header, 32-byte aligned data section, every tensor padded (the last one too).
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 3);
    assert_eq!(bytes.len() % 32, 0);

    assert_eq!(cv.width(), Some(5));
    cv.check_width(5).unwrap();
    let err = cv.check_width(4).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::WidthMismatch {
                layer: 1,
                expected: 4,
                found: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        ControlVector {
            model_hint: String::new(),
            directions: BTreeMap::new()
        }
        .width(),
        None
    );
}

#[test]
fn reading_a_missing_file_names_it() {
    let path = tmp_dir("missing").join("nope.gguf");
    let err = ControlVector::read(&path).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().contains("nope.gguf"), "{err}");
}

#[test]
fn write_into_a_missing_directory_fails_cleanly() {
    let path = tmp_dir("nodir").join("no/such/dir/x.gguf");
    let err = sample_vector().write(&path).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Write refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn write_refuses_block_zero_and_explains() {
    let mut cv = sample_vector();
    cv.directions.insert(0, vec![0.0; 5]);
    let err = cv.to_bytes().unwrap_err();
    assert!(matches!(err, GgufError::Export { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("block 0") && msg.contains("direction.0") && msg.contains("llama.cpp"),
        "{msg}"
    );
    assert!(msg.contains("embeddings"), "{msg}");

    let path = tmp_dir("block0").join("x.gguf");
    let err = cv.write(&path).unwrap_err();
    assert!(err.to_string().contains("x.gguf"), "{err}");
    assert!(!path.exists());
}

#[test]
fn write_refuses_empty_unequal_and_non_finite() {
    let empty = ControlVector {
        model_hint: "qwen2".into(),
        directions: BTreeMap::new(),
    };
    assert!(matches!(empty.to_bytes(), Err(GgufError::Export { .. })));

    let mut zero_width = sample_vector();
    zero_width.directions = BTreeMap::from([(1, vec![]), (2, vec![])]);
    assert!(matches!(
        zero_width.to_bytes(),
        Err(GgufError::Export { .. })
    ));

    let mut ragged = sample_vector();
    ragged.directions.insert(5, vec![1.0; 4]);
    let err = ragged.to_bytes().unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::WidthMismatch {
                layer: 5,
                expected: 5,
                found: 4,
                ..
            }
        ),
        "{err}"
    );

    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut cv = sample_vector();
        cv.directions.get_mut(&3).unwrap()[2] = bad;
        let err = cv.to_bytes().unwrap_err();
        assert!(matches!(err, GgufError::Export { .. }), "{err}");
        assert!(err.to_string().contains("block 3"), "{err}");
    }

    let mut huge = sample_vector();
    huge.directions = BTreeMap::from([(i32::MAX as usize + 1, vec![1.0])]);
    assert!(matches!(huge.to_bytes(), Err(GgufError::Export { .. })));
}

// ---------------------------------------------------------------------------------------------
// Interoperability with the `gguf` Python package
// ---------------------------------------------------------------------------------------------

#[test]
fn python_gguf_reads_rosetta_file() {
    let Some(py) = python() else { return };
    let cv = sample_vector();
    let path = tmp_dir("py-read").join("rosetta.gguf");
    cv.write(&path).unwrap();
    let s = run_script(&py, &[path.to_str().unwrap()]);

    assert_eq!(s["version"], 3);
    assert_eq!(s["alignment"], 32);
    assert_eq!(s["file_size"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(s["data_offset"].as_u64().unwrap() % 32, 0);
    let kv = s["kv"].as_object().unwrap();
    assert_eq!(kv.len(), 3, "unexpected keys: {kv:?}");
    assert_eq!(kv["general.architecture"]["type"], "STRING");
    assert_eq!(kv["general.architecture"]["value"], "controlvector");
    assert_eq!(kv["controlvector.model_hint"]["type"], "STRING");
    assert_eq!(kv["controlvector.model_hint"]["value"], "qwen2");
    assert_eq!(kv["controlvector.layer_count"]["type"], "UINT32");
    assert_eq!(kv["controlvector.layer_count"]["value"], 3);

    let tensors = s["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 3);
    for (t, (block, dir)) in tensors.iter().zip(&cv.directions) {
        assert_eq!(t["name"], format!("direction.{block}"));
        assert_eq!(t["type"], "F32");
        assert_eq!(t["shape"], serde_json::json!([5]));
        assert_eq!(t["data_offset"].as_u64().unwrap() % 32, 0);
        let values: Vec<f32> = t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(bits(&values), bits(dir), "{}", t["name"]);
    }
}

#[test]
fn reads_repeng_style_file_and_matches_its_bytes() {
    let Some(py) = python() else { return };
    let dir = tmp_dir("py-repeng");
    let (path, described) = python_sample(&py, &dir, "repeng.gguf", &["--count-type", "u32"]);
    let cv = ControlVector::read(&path).unwrap();
    assert_eq!(cv.model_hint, described["model_hint"].as_str().unwrap());
    let expected = directions_from_json(&described);
    assert_eq!(
        cv.directions.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, v) in &expected {
        assert_eq!(bits(&cv.directions[k]), bits(v), "block {k}");
    }
    // Same content, same bytes: Rosetta writes exactly what repeng's exporter writes.
    assert_eq!(cv.to_bytes().unwrap(), std::fs::read(&path).unwrap());

    // With unrelated metadata of every type (arrays of strings and numbers too).
    let (path, described) = python_sample(
        &py,
        &dir,
        "repeng-extra.gguf",
        &["--count-type", "u32", "--extra"],
    );
    let cv = ControlVector::read(&path).unwrap();
    assert_eq!(cv.directions, directions_from_json(&described));
}

#[test]
fn reads_llama_cpp_style_file() {
    let Some(py) = python() else { return };
    let dir = tmp_dir("py-llama");
    for extra in [
        &["--count-type", "i32"][..],
        &["--count-type", "i32", "--extra"],
        &["--count-type", "i32", "--alignment", "64"],
    ] {
        let (path, described) = python_sample(&py, &dir, "llama.gguf", extra);
        let s = run_script(&py, &[path.to_str().unwrap()]);
        assert_eq!(s["kv"]["controlvector.layer_count"]["type"], "INT32");
        let cv = ControlVector::read(&path).unwrap();
        assert_eq!(cv.model_hint, "qwen2");
        assert_eq!(cv.directions, directions_from_json(&described), "{extra:?}");
        assert_eq!(cv.width(), Some(6));
    }
}

#[test]
fn refuses_python_written_bad_files() {
    let Some(py) = python() else { return };
    let dir = tmp_dir("py-bad");
    let check = |kind: &str, pred: &dyn Fn(&GgufError) -> bool, needle: &str| {
        let (path, _) = python_sample(
            &py,
            &dir,
            &format!("{kind}.gguf"),
            &["--kind", kind, "--extra"],
        );
        let err = ControlVector::read(&path).unwrap_err();
        assert!(pred(&err), "{kind}: unexpected error {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{kind}: {msg}");
        assert!(
            msg.contains(&format!("{kind}.gguf")),
            "{kind}: error does not name the file: {msg}"
        );
    };
    check(
        "direction0",
        &|e| matches!(e, GgufError::BadTensor { tensor, .. } if tensor == "direction.0"),
        "direction.0",
    );
    check(
        "f16",
        &|e| matches!(e, GgufError::BadTensor { tensor, .. } if tensor == "direction.2"),
        "F16",
    );
    check(
        "2d",
        &|e| matches!(e, GgufError::BadTensor { tensor, .. } if tensor == "direction.2"),
        "1-D",
    );
    check(
        "wrong-arch",
        &|e| matches!(e, GgufError::NotControlVector { .. }),
        "not-a-controlvector",
    );
    check(
        "ragged",
        &|e| {
            matches!(
                e,
                GgufError::WidthMismatch {
                    layer: 2,
                    expected: 6,
                    found: 8,
                    ..
                }
            )
        },
        "block 2",
    );
}

// ---------------------------------------------------------------------------------------------
// Read rules on hand-made files
// ---------------------------------------------------------------------------------------------

#[test]
fn reads_rich_metadata_and_custom_alignment() {
    let cv = ControlVector::from_bytes(&rich_file(), "rich").unwrap();
    assert_eq!(cv.model_hint, "gemma2");
    assert_eq!(
        cv.directions,
        BTreeMap::from([(2, vec![1.0, 2.0, 3.0]), (9, vec![-1.0, -2.0, -3.0])])
    );
}

#[test]
fn reads_version_2() {
    let mut b = Builder::control_vector();
    b.version = 2;
    b.f32_tensor("direction.1", &[1.0, 2.0]);
    let cv = ControlVector::from_bytes(&b.build(), "v2").unwrap();
    assert_eq!(cv.directions[&1], vec![1.0, 2.0]);
}

#[test]
fn sums_repeated_blocks_like_llama_cpp() {
    let mut b = Builder::control_vector();
    b.f32_tensor("direction.1", &[1.0, 2.0]);
    b.f32_tensor("direction.01", &[10.0, 20.0]);
    b.f32_tensor("direction.3", &[5.0, 6.0]);
    let cv = ControlVector::from_bytes(&b.build(), "dup").unwrap();
    assert_eq!(
        cv.directions,
        BTreeMap::from([(1, vec![11.0, 22.0]), (3, vec![5.0, 6.0])])
    );

    // An exactly repeated name is malformed GGUF (ggml refuses it too).
    let mut b = Builder::control_vector();
    b.f32_tensor("direction.1", &[1.0, 2.0]);
    b.f32_tensor("direction.1", &[1.0, 2.0]);
    assert!(matches!(
        ControlVector::from_bytes(&b.build(), "dup"),
        Err(GgufError::Malformed { .. })
    ));
}

#[test]
fn layer_count_u32_i32_absent_ok_negative_or_other_refused() {
    let file = |ty: Option<(u32, Vec<u8>)>| {
        let mut b = Builder::new();
        b.kv_str("general.architecture", "controlvector");
        b.kv_str("controlvector.model_hint", "llama");
        if let Some((ty, v)) = ty {
            b.kv("controlvector.layer_count", ty, &v);
        }
        b.f32_tensor("direction.4", &[1.0]);
        ControlVector::from_bytes(&b.build(), "lc")
    };
    assert!(file(Some((4, 7u32.to_le_bytes().to_vec()))).is_ok());
    assert!(file(Some((5, 7i32.to_le_bytes().to_vec()))).is_ok());
    assert!(file(None).is_ok());
    let err = file(Some((5, (-1i32).to_le_bytes().to_vec()))).unwrap_err();
    assert!(
        matches!(err, GgufError::NotControlVector { .. }) && err.to_string().contains("negative"),
        "{err}"
    );
    let err = file(Some((10, 7u64.to_le_bytes().to_vec()))).unwrap_err();
    assert!(
        matches!(err, GgufError::NotControlVector { .. }) && err.to_string().contains("UINT64"),
        "{err}"
    );
}

#[test]
fn refuses_hand_made_bad_files() {
    let expect = |b: &Builder, pred: fn(&GgufError) -> bool, needle: &str| {
        let err = ControlVector::from_bytes(&b.build(), "hand.gguf").unwrap_err();
        assert!(pred(&err), "unexpected error {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains("hand.gguf"), "{msg}");
    };

    let mut b = Builder::control_vector();
    b.f32_tensor("direction.0", &[1.0, 2.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadTensor { .. }),
        "direction.0",
    );

    let mut b = Builder::control_vector();
    b.f32_tensor("direction.1", &[1.0, 2.0]);
    b.f32_tensor("direction.2", &[1.0, 2.0, 3.0]);
    expect(
        &b,
        |e| {
            matches!(
                e,
                GgufError::WidthMismatch {
                    layer: 2,
                    expected: 2,
                    found: 3,
                    ..
                }
            )
        },
        "block 2",
    );

    let mut b = Builder::control_vector();
    b.tensor("direction.1", &[2], 1, vec![0; 4]);
    expect(&b, |e| matches!(e, GgufError::BadTensor { .. }), "F16");

    let mut b = Builder::control_vector();
    b.tensor("direction.1", &[2, 2], 0, vec![0; 16]);
    expect(&b, |e| matches!(e, GgufError::BadTensor { .. }), "1-D");

    let mut b = Builder::control_vector();
    b.tensor("direction.1", &[1, 2], 0, vec![0; 8]);
    expect(&b, |e| matches!(e, GgufError::BadTensor { .. }), "1-D");

    for name in [
        "layer.1",
        "direction.",
        "direction.-1",
        "direction.1abc",
        "direction.+1",
        "Direction.1",
        "direction.99999999999999999999999",
    ] {
        let mut b = Builder::control_vector();
        b.f32_tensor(name, &[1.0]);
        expect(&b, |e| matches!(e, GgufError::BadTensor { .. }), name);
    }
    let mut b = Builder::control_vector();
    b.f32_tensor("direction.2147483648", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadTensor { .. }),
        "2147483648",
    );

    let mut b = Builder::new();
    b.kv_str("general.architecture", "llama");
    b.kv_str("controlvector.model_hint", "llama");
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::NotControlVector { .. }),
        "\"llama\"",
    );

    let mut b = Builder::new();
    b.kv_str("controlvector.model_hint", "llama");
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::NotControlVector { .. }),
        "general.architecture",
    );

    let mut b = Builder::new();
    b.kv_str("general.architecture", "controlvector");
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::NotControlVector { .. }),
        "model_hint",
    );

    let b = Builder::control_vector();
    expect(
        &b,
        |e| matches!(e, GgufError::NotControlVector { .. }),
        "no direction tensors",
    );

    let mut b = Builder::control_vector();
    b.f32_tensor("direction.1", &[1.0, f32::NAN]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadTensor { .. }),
        "non-finite",
    );

    let mut b = Builder::control_vector();
    b.tensor("direction.1", &[0], 0, vec![]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadTensor { .. }),
        "no elements",
    );

    let mut b = Builder::control_vector();
    b.kv_str("general.architecture", "controlvector");
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::Malformed { .. }),
        "duplicate metadata key",
    );

    let mut b = Builder::control_vector();
    b.kv("general.alignment", 4, &48u32.to_le_bytes());
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::Malformed { .. }),
        "power of two",
    );

    let mut b = Builder::control_vector();
    b.kv("general.alignment", 10, &64u64.to_le_bytes());
    b.f32_tensor("direction.1", &[1.0]);
    expect(&b, |e| matches!(e, GgufError::Malformed { .. }), "UINT32");

    let mut b = Builder::control_vector();
    b.kv("x.unknown", 13, &[0; 8]);
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::Malformed { .. }),
        "value type",
    );

    let mut b = Builder::control_vector();
    b.version = 1;
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadVersion { version: 1, .. }),
        "version 1",
    );

    let mut b = Builder::control_vector();
    b.version = 3u32.swap_bytes();
    b.f32_tensor("direction.1", &[1.0]);
    expect(
        &b,
        |e| matches!(e, GgufError::BadVersion { .. }),
        "big-endian",
    );

    let err = ControlVector::from_bytes(b"GGML\x03\0\0\0", "magic.gguf").unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
    let err = ControlVector::from_bytes(b"GG", "short.gguf").unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
}

#[test]
fn refuses_absurd_counts_and_lengths_without_allocating() {
    let good = Builder::control_vector()
        .f32_tensor("direction.1", &[1.0, 2.0])
        .build();
    let patch = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        ControlVector::from_bytes(&b, "absurd.gguf")
    };
    // tensor_count, kv_count, first key length.
    for at in [8, 16, 24] {
        for v in [u64::MAX, u64::MAX / 2, 1 << 40, good.len() as u64] {
            let err = patch(at, v).unwrap_err();
            assert!(
                matches!(
                    err,
                    GgufError::Malformed { .. } | GgufError::Truncated { .. }
                ),
                "{err}"
            );
        }
    }

    // Huge array length and huge tensor dimension.
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut b = Builder::control_vector();
    b.kv("x.arr", 9, &arr);
    b.f32_tensor("direction.1", &[1.0]);
    assert!(matches!(
        ControlVector::from_bytes(&b.build(), "a"),
        Err(GgufError::Malformed { .. })
    ));

    for dim in [u64::MAX, i64::MAX as u64, 1 << 62, 1 << 40] {
        let mut b = Builder::control_vector();
        b.tensor("direction.1", &[dim], 0, vec![0; 8]);
        assert!(
            ControlVector::from_bytes(&b.build(), "d").is_err(),
            "dim {dim}"
        );
    }

    // Offsets past the end or misaligned.
    let mut b = good.clone();
    let name_at = b.windows(11).position(|w| w == b"direction.1").unwrap();
    let offset_at = name_at + 11 + 4 + 8 + 4;
    b[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        ControlVector::from_bytes(&b, "o"),
        Err(GgufError::Truncated { .. })
    ));
    b[offset_at..offset_at + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(
        ControlVector::from_bytes(&b, "o"),
        Err(GgufError::BadTensor { .. })
    ));
    b[offset_at..offset_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(ControlVector::from_bytes(&b, "o").is_err());
}

// ---------------------------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------------------------

/// splitmix64: a small deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzz_truncations_flips_and_garbage_never_panic() {
    let inputs = [sample_vector().to_bytes().unwrap(), rich_file()];
    let mut rng = Rng(0x5EED_6609);
    let mut outcomes = [0usize; 2];
    for valid in &inputs {
        let original = ControlVector::from_bytes(valid, "valid").unwrap();
        // The end of the last tensor's data: only the trailing padding may be cut.
        let last_data_end = valid.len() - valid.iter().rev().take_while(|&&b| b == 0).count();
        for n in 0..valid.len() {
            match ControlVector::from_bytes(&valid[..n], "truncated") {
                Ok(cv) => {
                    assert!(
                        n >= last_data_end,
                        "a {n}-byte prefix of {} parsed",
                        valid.len()
                    );
                    assert_eq!(cv, original);
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
        for _ in 0..3000 {
            let mut b = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] = match rng.below(4) {
                    0 => b[i] ^ (1 << rng.below(8)),
                    1 => 0xff,
                    2 => 0,
                    _ => rng.next() as u8,
                };
            }
            let r = ControlVector::from_bytes(&b, "flipped");
            outcomes[r.is_ok() as usize] += 1;
            if let Err(e) = r {
                let _ = e.to_string();
            }
        }
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "flips: {outcomes:?} (err, ok)"
    );

    for i in 0..3000 {
        let len = rng.below(600);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && len >= 24 {
            // A plausible header, so the fuzz reaches the metadata and tensor parsers.
            b[..4].copy_from_slice(b"GGUF");
            b[4..8].copy_from_slice(&3u32.to_le_bytes());
            b[8..16].copy_from_slice(&(rng.below(4) as u64).to_le_bytes());
            b[16..24].copy_from_slice(&(rng.below(6) as u64).to_le_bytes());
        }
        if let Err(e) = ControlVector::from_bytes(&b, "garbage") {
            let _ = e.to_string();
        }
    }
}
