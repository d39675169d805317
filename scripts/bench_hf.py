#!/usr/bin/env python3
"""Rosetta vs HF transformers, side by side in one run (the figures in docs/PERFORMANCE.md).

Same machine, same model, same token ids, same batch, same dtype, same thread count. For each case the HF
side runs in this process and the Rosetta side as the release example binary (`capture`, `generate`) kept
up with `--serve`: both sides load once, warm up, and then their measurements alternate.

  $ROSETTA_HOME/venv/bin/python scripts/bench_hf.py [--models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct]
      [--cases capture,generate] [--repeat 3] [--markdown out.md]

Each measurement is `--repeat` timed passes; `--rounds` interleaved rounds (HF, then Rosetta, seconds
apart) are run. Reported: the median tok/s of each side and the median over rounds of the per-round
ratio, which cancels most of this VM's drift (other tenants, ~10%) since both sides of a round see the
same machine state.

Capture: a batch of 8 x 128 tokens, activations of one middle layer's output, in f32 and bf16 (both dtypes
in every round, so the bf16/f32 ratio of each side is paired too).
  HF full   : model(ids) with a forward hook on layers[L] that copies the output (the usual HF way)
  HF early  : the same hook raises an exception to stop the forward (the fastest HF trick)
  Rosetta   : `capture --points resid_post.L --repeat N --serve` (the pass stops after block L by design)
Generation: greedy, 64 new tokens (EOS ignored), a vector added to layer L's output at every position.
  HF        : model.generate(...) with a forward hook on layers[L] adding the vector
  Rosetta   : `generate --steer-layer L --ignore-eos --repeat N --serve`
"""
import argparse
import json
import os
import re
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("ROSETTA_HOME", Path.home() / ".cache" / "rosetta"))
MODELS = Path(os.environ.get("ROSETTA_MODELS", HOME / "models"))
LAYERS = {"smollm2-135m-instruct": 15, "qwen2.5-coder-0.5b-instruct": 12, "gemma3-270m": 9,
          "qwen2.5-coder-1.5b-instruct": 8}
TEXT = (ROOT / "README.md").read_text() + (ROOT / "docs" / "ARCHITECTURE.md").read_text()


class Stop(Exception):
    pass


def batch_ids(tok, batch, length):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    rows = [ids[i * length:(i + 1) * length] for i in range(batch)]
    assert all(len(r) == length for r in rows), "text too short for the benchmark batch"
    return torch.tensor(rows)


def timed(fn, repeat):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


class Rosetta:
    """A release example kept up with `--serve`: one warm process, one stdin line per measurement."""

    def __init__(self, example, args):
        exe = ROOT / "target" / "release" / "examples" / example
        if not exe.exists():
            sys.exit(f"{exe} missing: run `cargo build --release --examples` first")
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([str(exe), *args, "--repeat", "1", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)
        self._rate()  # the load, the warm-up and one timed run

    def _rate(self):
        for line in self.proc.stdout:
            if line.startswith("tokens/s: "):
                return float(line.split()[1])
        self.err.seek(0)
        sys.exit(f"{self.proc.args[0]} failed:\n{self.err.read()}")

    def chunk(self, runs):
        self.proc.stdin.write(f"{runs}\n")
        self.proc.stdin.flush()
        return self._rate()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def summary(values):
    return statistics.median(values)


def bench_capture(name, repeat, rows, rounds, dtype_rows):
    d = MODELS / name
    layer = LAYERS[name]
    tok = AutoTokenizer.from_pretrained(d)
    ids = batch_ids(tok, 8, 128)
    ntok = ids.numel()
    dtypes = [(torch.float32, "f32"), (torch.bfloat16, "bf16")]
    models = {dn: AutoModelForCausalLM.from_pretrained(d, dtype=dt).eval() for dt, dn in dtypes}
    captured = {}

    def keep(_m, _i, out):
        captured["x"] = (out[0] if isinstance(out, tuple) else out).detach()

    def stop(_m, _i, out):
        keep(_m, _i, out)
        raise Stop

    with tempfile.TemporaryDirectory() as tmp:
        jl = Path(tmp) / "ids.jsonl"
        jl.write_text("".join(json.dumps({"ids": r}) + "\n" for r in ids.tolist()))
        ours = {dn: Rosetta("capture", ["--model", str(d), "--input", str(jl), "--points", f"resid_post.{layer}",
                                        "--out", str(Path(tmp) / f"a-{dn}.safetensors"), "--batch-size", "8",
                                        "--dtype", dn])
                for _, dn in dtypes}
        full = {dn: [] for _, dn in dtypes}
        early_t = {dn: [] for _, dn in dtypes}
        mine = {dn: [] for _, dn in dtypes}
        with torch.no_grad():
            # Interleaved rounds; in each, both dtypes and for each HF full, HF early stop, Rosetta. The
            # bf16/f32 ratios are then paired within a round too.
            for _ in range(rounds):
                for _, dn in dtypes:
                    model = models[dn]

                    def early():
                        try:
                            model(ids)
                        except Stop:
                            pass

                    h = model.model.layers[layer].register_forward_hook(keep)
                    full[dn].append(ntok / timed(lambda: model(ids), repeat))
                    h.remove()
                    h = model.model.layers[layer].register_forward_hook(stop)
                    early_t[dn].append(ntok / timed(early, repeat))
                    h.remove()
                    mine[dn].append(ours[dn].chunk(repeat))
        for p in ours.values():
            p.close()
    del models
    for _, dn in dtypes:
        rows.append(("capture", name, f"resid_post.{layer}", dn, "8x128", full[dn], early_t[dn], mine[dn]))
        print(f"capture {name} L{layer} {dn}: HF full {summary(full[dn]):.1f} tok/s, HF early-stop "
              f"{summary(early_t[dn]):.1f}, Rosetta {summary(mine[dn]):.1f}", flush=True)
    dtype_rows.append((name, f"resid_post.{layer}", early_t["bf16"], early_t["f32"], mine["bf16"], mine["f32"]))


def bench_generate(name, repeat, rows, rounds, new_tokens=64):
    d = MODELS / name
    layer = LAYERS[name]
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompt = "The capital of France is"
    g = torch.Generator().manual_seed(0)
    v = torch.randn(model.config.hidden_size, generator=g)
    v = 4.0 * v / v.norm()

    def add(_m, _i, out):
        if isinstance(out, tuple):
            return (out[0] + v,) + tuple(out[1:])
        return out + v

    h = model.model.layers[layer].register_forward_hook(add)
    from transformers import GenerationConfig
    gc = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=tok.pad_token_id or 0)
    for batch in [1, 8]:
        tok.padding_side = "left"
        enc = tok([prompt] * batch, return_tensors="pt", padding=True)
        ours = Rosetta("generate", ["--model", str(d), "--prompt", prompt, "--batch", str(batch),
                                    "--max-new-tokens", str(new_tokens), "--steer-layer", str(layer),
                                    "--ignore-eos"])
        hf, mine = [], []
        for _ in range(rounds):
            with torch.no_grad():
                secs = timed(lambda: model.generate(**enc, generation_config=gc), repeat)
            hf.append(batch * new_tokens / secs)
            mine.append(ours.chunk(repeat))
        ours.close()
        rows.append(("generate", name, f"resid_post.{layer}", "f32", f"{batch}x{new_tokens} new", hf, None, mine))
        print(f"generate {name} batch {batch}: HF {summary(hf):.1f} tok/s, Rosetta {summary(mine):.1f}", flush=True)
    h.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--cases", default="capture,generate")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("ROSETTA_BENCH_THREADS", torch.get_num_threads())))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows, dtype_rows = [], []
    for name in args.models.split(","):
        if "capture" in args.cases:
            bench_capture(name, args.repeat, rows, args.rounds, dtype_rows)
        if "generate" in args.cases:
            bench_generate(name, args.repeat, rows, args.rounds)
    lines = ["| case | model | point | dtype | shape | HF tok/s | HF early-stop tok/s | Rosetta tok/s | vs HF | "
             "vs HF early |", "|---|---|---|---|---|---:|---:|---:|---:|---:|"]

    def ratio(ours, theirs):  # median over rounds of the per-round ratio, with its range
        r = [o / t for o, t in zip(ours, theirs)]
        return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"

    for case, name, point, dt, shape, hf, early, ours in rows:
        lines.append(f"| {case} | {name} | {point} | {dt} | {shape} | {summary(hf):.1f} | "
                     f"{'' if early is None else f'{summary(early):.1f}'} | {summary(ours):.1f} | "
                     f"{ratio(ours, hf)} | {'' if early is None else ratio(ours, early)} |")
    if dtype_rows:
        lines += ["", "| capture bf16 vs f32 | point | HF early-stop bf16/f32 | Rosetta bf16/f32 |", "|---|---|---:|---:|"]
        for name, point, hf16, hf32, our16, our32 in dtype_rows:
            lines.append(f"| {name} | {point} | {ratio(hf16, hf32)} | {ratio(our16, our32)} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
