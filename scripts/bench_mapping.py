#!/usr/bin/env python3
"""Rosetta's map training step vs the same loop in PyTorch, side by side in one run (docs/PERFORMANCE.md).

Same machine, dims, batch, dtype (f32), thread count and data shapes. The PyTorch side runs in this process:

    model = Sequential(Linear(d_src, h), ReLU(), Linear(h, d_tgt))   # h = floor(sqrt(d_src * d_tgt))
    opt = AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()

the Rosetta side as the release example `map_throughput --serve` (the trainer's `loss_and_grads` +
`AdamW::step`). Both flush denormals, both processes stay up for the whole cell (same data, model and
optimiser state throughout), and their measurements alternate: after a warm-up on each side, `--rounds`
pairs of (PyTorch chunk, Rosetta chunk) of `--rows` rows each. A pair's two chunks run seconds apart, so this
VM's drift (other tenants, ~10%) hits both alike; the figure reported is the median over pairs of the
per-pair ratio, with the median rows/s of each side.

  $ROSETTA_HOME/venv/bin/python scripts/bench_mapping.py [--dims 896x1536,2048x3072]
      [--batches 64,256,1024,4096] [--mode train|infer|adamw] [--rounds 9] [--markdown out.md]
"""
import argparse
import math
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "examples" / "map_throughput"


class TorchSide:
    """The same loop in PyTorch, kept warm between chunks."""

    def __init__(self, d_src, d_tgt, batch, mode):
        torch.manual_seed(0)
        h = int(math.floor(math.sqrt(d_src * d_tgt)))
        self.model = torch.nn.Sequential(torch.nn.Linear(d_src, h), torch.nn.ReLU(), torch.nn.Linear(h, d_tgt))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.data = [(torch.randn(batch, d_src), torch.randn(batch, d_tgt)) for _ in range(4)]
        self.batch, self.mode = batch, mode
        if mode == "adamw":
            for p in self.model.parameters():
                p.grad = torch.randn_like(p) * 1e-3

    def step(self, i):
        x, y = self.data[i % len(self.data)]
        if self.mode == "adamw":
            self.opt.step()
        elif self.mode == "train":
            self.opt.zero_grad()
            F.mse_loss(self.model(x), y).backward()
            self.opt.step()
        else:
            with torch.no_grad():
                self.model(x)

    def chunk(self, steps):
        t = time.perf_counter()
        for i in range(steps):
            self.step(i)
        return steps * self.batch / (time.perf_counter() - t)


class RosettaSide:
    """`map_throughput --serve`: one warm process answering one line per chunk."""

    def __init__(self, d_src, d_tgt, batch, mode, warmup):
        self.proc = subprocess.Popen(
            [str(BIN), "--d-src", str(d_src), "--d-tgt", str(d_tgt), "--batch", str(batch), "--mode", mode,
             "--warmup", str(warmup), "--device", "cpu", "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def chunk(self, steps):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("rows/s: "):
            raise RuntimeError(f"map_throughput answered {line!r}")
        return float(line.split()[1])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="896x1536,2048x3072")
    ap.add_argument("--batches", default="64,256,1024,4096")
    ap.add_argument("--mode", default="train")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved (PyTorch, Rosetta) pairs per cell")
    ap.add_argument("--rows", type=int, default=8192, help="rows per timed chunk")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    subprocess.run(["cargo", "build", "--release", "--example", "map_throughput", "-p", "rosetta"],
                   cwd=ROOT, check=True, capture_output=True)
    lines = [f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, mode {a.mode}, f32, CPU; "
             f"median of {a.rounds} interleaved pairs of {a.rows}-row chunks", "",
             "| dims | batch | PyTorch rows/s | Rosetta rows/s | ratio (median) | ratio (min-max) |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for dims in a.dims.split(","):
        d_src, d_tgt = map(int, dims.split("x"))
        for batch in map(int, a.batches.split(",")):
            steps = max(4, a.rows // batch)
            warmup = max(2, steps // 4)
            ours = RosettaSide(d_src, d_tgt, batch, a.mode, warmup)
            theirs = TorchSide(d_src, d_tgt, batch, a.mode)
            theirs.chunk(warmup)
            ours.chunk(1)  # waits for the Rust side's own warm-up to finish
            pairs = []
            for _ in range(a.rounds):
                pairs.append((theirs.chunk(steps), ours.chunk(steps)))
            ours.close()
            t_med = statistics.median(p[0] for p in pairs)
            r_med = statistics.median(p[1] for p in pairs)
            ratios = [r / t for t, r in pairs]
            line = (f"| {d_src}->{d_tgt} | {batch} | {t_med:.0f} | {r_med:.0f} | {statistics.median(ratios):.2f}x "
                    f"| {min(ratios):.2f}-{max(ratios):.2f}x |")
            lines.append(line)
            print(line, flush=True)
    if a.markdown:
        Path(a.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
