#!/usr/bin/env python3
"""Collect once + train from the store (Rosetta) vs the paper's pipeline (both LLMs run every epoch), on the
same corpus, models, layers and epochs, in one run (docs/PERFORMANCE.md).

Paper's way (its notebooks, HF transformers in this process): for each of `--epochs` epochs, for each batch
of 16 documents, run the source and the target model over the batch (full forward, `output_hidden_states`),
take `resid_post` of the chosen layers at non-padding positions, and take an AdamW step of the autoencoder
on the MSE (gradient accumulation 4, lr 1e-4), as in the paper.
Rosetta: `collect` (both models once, each stopping after its layer, f16 store) then `train_mapping`
(`--epochs` epochs from the store). Wall time of each side, model loading included on both.

  $ROSETTA_HOME/venv/bin/python scripts/bench_end_to_end.py [--corpus tests/fixtures/corpus_small.jsonl]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("ROSETTA_HOME", Path.home() / ".cache" / "rosetta"))
MODELS = Path(os.environ.get("ROSETTA_MODELS", HOME / "models"))


def paper_way(src, tgt, ls, lt, texts, epochs, batch_docs=16, accum=4):
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(src)
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(tgt, dtype=torch.float32).eval()
    d_src, d_tgt = a.config.hidden_size, b.config.hidden_size
    h = int(math.floor(math.sqrt(d_src * d_tgt)))
    torch.manual_seed(0)
    ae = torch.nn.Sequential(torch.nn.Linear(d_src, h), torch.nn.ReLU(), torch.nn.Linear(h, d_tgt))
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    tok.padding_side = "right"
    losses = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(texts), generator=g).tolist()
        opt.zero_grad()
        for k, i in enumerate(range(0, len(order), batch_docs)):
            enc = tok([texts[j] for j in order[i:i + batch_docs]], return_tensors="pt", padding=True,
                      truncation=True, max_length=720)
            with torch.no_grad():
                xa = a(**enc, output_hidden_states=True).hidden_states[ls + 1]
                yb = b(**enc, output_hidden_states=True).hidden_states[lt + 1]
            m = enc["attention_mask"].bool()
            loss = F.mse_loss(ae(xa[m]), yb[m]) / accum
            loss.backward()
            losses.append(loss.item() * accum)
            if (k + 1) % accum == 0:
                opt.step()
                opt.zero_grad()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - t0


def rosetta_way(src, tgt, ls, lt, corpus, epochs):
    build = ["cargo", "build", "--release", "-p", "rosetta", "--example", "collect", "--example", "train_mapping"]
    subprocess.run(build, cwd=ROOT, check=True, capture_output=True)
    ex = ROOT / "target" / "release" / "examples"
    tmp = Path(tempfile.mkdtemp(prefix="rosetta-e2e-"))
    try:
        t0 = time.perf_counter()
        subprocess.run([str(ex / "collect"), "--source", str(src), "--source-layer", str(ls), "--target", str(tgt),
                        "--target-layer", str(lt), "--input", str(corpus), "--out", str(tmp / "store"),
                        "--dtype", "f16"], check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run([str(ex / "train_mapping"), "--store", str(tmp / "store"), "--kind", "autoencoder",
                        "--out", str(tmp / "map"), "--epochs", str(epochs), "--lr", "1e-4", "--device", "cpu"],
                       check=True, capture_output=True)
        t2 = time.perf_counter()
        return t2 - t0, t1 - t0, t2 - t1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT / "tests" / "fixtures" / "corpus_small.jsonl"))
    ap.add_argument("--source", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--target", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--source-layer", type=int, default=13)
    ap.add_argument("--target-layer", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    texts = [json.loads(l)["text"] for l in Path(a.corpus).read_text().splitlines() if l.strip()]
    src, tgt = MODELS / a.source, MODELS / a.target
    r_total, r_collect, r_train = rosetta_way(src, tgt, a.source_layer, a.target_layer, a.corpus, a.epochs)
    p_total = paper_way(src, tgt, a.source_layer, a.target_layer, texts, a.epochs)
    print(f"corpus {a.corpus}: {len(texts)} documents; {a.source} L{a.source_layer} -> {a.target} "
          f"L{a.target_layer}; {a.epochs} epochs; torch {torch.get_num_threads()} threads")
    print(f"paper's way (both LLMs every epoch, HF full forward): {p_total:.1f} s")
    print(f"Rosetta (collect {r_collect:.1f} s + train {r_train:.1f} s): {r_total:.1f} s")
    print(f"speed-up: {p_total / r_total:.2f}x")


if __name__ == "__main__":
    main()
