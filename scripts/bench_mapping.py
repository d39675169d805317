#!/usr/bin/env python3
"""Rosetta's map training step vs the same loop in PyTorch, side by side in one run (docs/PERFORMANCE.md).

Same machine, dims, batch, dtype (f32), thread count and data shapes. The PyTorch side runs in this process:

    model = Sequential(Linear(d_src, h), ReLU(), Linear(h, d_tgt))   # h = floor(sqrt(d_src * d_tgt))
    opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()

the Rosetta side as the release example `map_throughput` (the trainer's `loss_and_grads` + `AdamW::step`).
Both flush denormals. Each measurement: a warm-up, then 2 timed repeats of `--rows` rows, the best kept;
`--rounds` interleaved rounds (PyTorch, then Rosetta), the best of each side kept.

  $ROSETTA_HOME/venv/bin/python scripts/bench_mapping.py [--dims 896x1536,2048x3072]
      [--batches 64,256,1024,4096] [--mode train|infer|adamw] [--markdown out.md]
"""
import argparse
import math
import re
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "examples" / "map_throughput"
# Timed repeats inside one measurement, after the warm-up, best kept: the same protocol on both sides
# (the Rust side is a fresh process per measurement, the PyTorch side a fresh model and optimiser).
INNER = 2


def torch_rows_per_s(d_src, d_tgt, batch, mode, steps, warmup):
    torch.manual_seed(0)
    h = int(math.floor(math.sqrt(d_src * d_tgt)))
    model = torch.nn.Sequential(torch.nn.Linear(d_src, h), torch.nn.ReLU(), torch.nn.Linear(h, d_tgt))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    data = [(torch.randn(batch, d_src), torch.randn(batch, d_tgt)) for _ in range(4)]

    if mode == "adamw":
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3

    def step(i):
        x, y = data[i % len(data)]
        if mode == "adamw":
            opt.step()
        elif mode == "train":
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        else:
            with torch.no_grad():
                model(x)

    for i in range(warmup):
        step(i)
    best = 0.0
    for _ in range(INNER):
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        best = max(best, steps * batch / (time.perf_counter() - t))
    return best


def rosetta_rows_per_s(d_src, d_tgt, batch, mode, steps, warmup):
    out = subprocess.run([str(BIN), "--d-src", str(d_src), "--d-tgt", str(d_tgt), "--batch", str(batch),
                          "--mode", mode, "--steps", str(steps), "--warmup", str(warmup), "--rounds", str(INNER),
                          "--device", "cpu"], check=True, capture_output=True, text=True).stdout
    return float(re.search(r"rows/s: ([0-9.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="896x1536,2048x3072")
    ap.add_argument("--batches", default="64,256,1024,4096")
    ap.add_argument("--mode", default="train")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=16384, help="rows per timed measurement")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    subprocess.run(["cargo", "build", "--release", "--example", "map_throughput", "-p", "rosetta"],
                   cwd=ROOT, check=True, capture_output=True)
    lines = [f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, mode {a.mode}, f32, CPU", "",
             "| dims | batch | PyTorch rows/s | Rosetta rows/s | ratio |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for dims in a.dims.split(","):
        d_src, d_tgt = map(int, dims.split("x"))
        for batch in map(int, a.batches.split(",")):
            steps = max(4, a.rows // batch)
            warmup = max(2, steps // 8)
            best_t, best_r = 0.0, 0.0
            for _ in range(a.rounds):
                best_t = max(best_t, torch_rows_per_s(d_src, d_tgt, batch, a.mode, steps, warmup))
                best_r = max(best_r, rosetta_rows_per_s(d_src, d_tgt, batch, a.mode, steps, warmup))
            line = f"| {d_src}->{d_tgt} | {batch} | {best_t:.0f} | {best_r:.0f} | {best_r / best_t:.2f}x |"
            lines.append(line)
            print(line, flush=True)
    if a.markdown:
        Path(a.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
