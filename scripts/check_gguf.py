#!/usr/bin/env python3
"""Cross-check Rosetta's GGUF control vectors against the reference `gguf` Python package.

Two modes, both used by `crates/steering/tests/gguf.rs`:

    check_gguf.py FILE
        Read FILE with `gguf.GGUFReader` and print a JSON summary on stdout: the GGUF version, the
        alignment and data offset the reader computed, every metadata key with its value type and
        value, and every tensor with its type, shape (GGUF / ggml dimension order) and values.

    check_gguf.py --write-sample OUT --count-type u32|i32 [--kind KIND] [--extra] [--alignment N]
        Write a control vector with `gguf.GGUFWriter`, the way repeng's `ControlVector.export_gguf`
        does (repeng/extract.py: `add_uint32("controlvector.layer_count", ...)`), or, with
        `--count-type i32`, the way llama.cpp's generator does (tools/cvector-generator/
        cvector-generator.cpp: `gguf_set_val_i32(..., "controlvector.layer_count", ...)`). Prints a
        JSON description of what it wrote: `{"model_hint": ..., "directions": {"N": [...]}}`.
        `--kind` writes a deliberately broken file for the refusal tests instead: `direction0`,
        `f16`, `2d`, `wrong-arch`, `ragged` (unequal widths). `--extra` adds unrelated metadata of
        many value types (arrays included) that a reader must skip. `--alignment N` writes a
        `general.alignment` key and aligns the data to N bytes.

Only the `gguf` package (and numpy, which it depends on) is needed: run it with Rosetta's venv
python (`$ROSETTA_HOME/venv/bin/python`, by default `~/.cache/rosetta/venv/bin/python`).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import gguf

HINT = "qwen2"
BLOCKS = (1, 2, 5)
WIDTH = 6


def sample_direction(block: int, width: int = WIDTH) -> np.ndarray:
    # Values exactly representable in f32 (and in the shortest JSON repr), distinct per block.
    return ((np.arange(width, dtype=np.float32) - width / 2) * np.float32(0.5) + np.float32(block)).astype(
        np.float32
    )


def summarize(path: str) -> dict:
    reader = gguf.GGUFReader(path)
    kv = {}
    version = None
    for name, field in reader.fields.items():
        if name == "GGUF.version":
            version = int(field.contents())
            continue
        if name.startswith("GGUF."):
            continue
        main = field.types[0]
        entry = {"type": main.name}
        if main == gguf.GGUFValueType.ARRAY:
            entry["element_type"] = field.types[-1].name
        entry["value"] = field.contents()
        kv[name] = entry
    tensors = []
    for t in reader.tensors:
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "shape": [int(d) for d in t.shape],
                "n_elements": int(t.n_elements),
                "n_bytes": int(t.n_bytes),
                "data_offset": int(t.data_offset),
                "values": [float(v) for v in np.asarray(t.data).reshape(-1).tolist()],
            }
        )
    return {
        "version": version,
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "file_size": int(len(reader.data)),
        "kv": kv,
        "tensors": tensors,
    }


def write_sample(out: str, count_type: str, kind: str, extra: bool, alignment: int | None) -> dict:
    arch = "not-a-controlvector" if kind == "wrong-arch" else "controlvector"
    writer = gguf.GGUFWriter(out, arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    # Key names are spelled out (not f"{arch}...") so that `wrong-arch` differs in one key only.
    writer.add_string("controlvector.model_hint", HINT)

    directions: dict[int, np.ndarray] = {}
    if kind == "direction0":
        directions = {0: sample_direction(0), 1: sample_direction(1)}
    elif kind == "ragged":
        directions = {1: sample_direction(1), 2: sample_direction(2, WIDTH + 2)}
    else:
        directions = {b: sample_direction(b) for b in BLOCKS}

    if count_type == "u32":
        writer.add_uint32("controlvector.layer_count", len(directions))
    elif count_type == "i32":
        writer.add_int32("controlvector.layer_count", len(directions))
    else:
        raise SystemExit(f"--count-type must be u32 or i32, not {count_type!r}")

    if extra:
        writer.add_string("general.name", "sample control vector")
        writer.add_uint8("rosetta.test.u8", 7)
        writer.add_int16("rosetta.test.i16", -3)
        writer.add_uint64("rosetta.test.u64", 2**40 + 1)
        writer.add_int64("rosetta.test.i64", -(2**40))
        writer.add_float32("rosetta.test.f32", 0.25)
        writer.add_float64("rosetta.test.f64", -1.5)
        writer.add_bool("rosetta.test.bool", True)
        writer.add_array("rosetta.test.strings", ["alpha", "", "gamma with spaces"])
        writer.add_array("rosetta.test.ints", [1, -2, 3, 4])
        writer.add_array("rosetta.test.floats", [0.5, 1.5])

    for block, d in directions.items():
        tensor = d
        if kind == "f16" and block == BLOCKS[1]:
            tensor = d.astype(np.float16)
        if kind == "2d" and block == BLOCKS[1]:
            tensor = np.stack([d, d, d])  # numpy (3, WIDTH): GGUF dims [WIDTH, 3]
        writer.add_tensor(f"direction.{block}", tensor)

    # The same call sequence as repeng's export_gguf.
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "model_hint": HINT,
        "directions": {str(b): [float(v) for v in d.tolist()] for b, d in directions.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="GGUF file to summarize as JSON")
    ap.add_argument("--write-sample", metavar="OUT", help="write a sample control vector to OUT")
    ap.add_argument("--count-type", choices=("u32", "i32"), default="u32")
    ap.add_argument("--kind", choices=("ok", "direction0", "f16", "2d", "wrong-arch", "ragged"), default="ok")
    ap.add_argument("--extra", action="store_true", help="add unrelated metadata of many types")
    ap.add_argument("--alignment", type=int, default=None, help="write general.alignment = N")
    args = ap.parse_args()

    if args.write_sample:
        result = write_sample(args.write_sample, args.count_type, args.kind, args.extra, args.alignment)
    elif args.file:
        result = summarize(args.file)
    else:
        ap.error("give FILE or --write-sample OUT")
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
