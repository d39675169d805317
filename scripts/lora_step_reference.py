#!/usr/bin/env python3
"""PyTorch references for one LoRA and one full fine-tuning step (the parity tests in
`crates/tasks/tests/lora_parity.rs`).

On the tiny golden Llama checkpoint (tests/fixtures/golden/llama, f32, HF transformers, eager attention) this
adds LoRA adapters to every projection of every block (q/k/v/o, gate/up/down; rank 4, alpha 8) as PEFT
computes them, `y = x W^T + (alpha / r) (x A^T) B^T`, with A and B drawn from a seeded generator (B is
non-zero so that A's gradient is too), runs a right-padded batch of four examples, takes the cross-entropy
of the completion tokens only (summed, divided by the number of completion tokens), backpropagates, and
takes one `torch.optim.AdamW` step (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01).

It writes tests/fixtures/lora_step_llama.safetensors:
  init.<peft name>      the adapters before the step (PEFT names: base_model.model.model.layers.L.<module>.lora_A.weight)
  after.<peft name>     the adapters after the step
  loss                  f64 [1]
  ex{i}.ids, ex{i}.completion_start   the examples
and tests/fixtures/full_step_llama.safetensors, one step of full fine-tuning on the same batch (every
parameter of the model, as `model.parameters()` lists them: the tied LM head is the embedding), with the
gradient's global norm clipped to MAX_NORM by `torch.nn.utils.clip_grad_norm_` before the AdamW step (eps
EPS_FULL, see there):
  after.<HF name>       every weight after the step
  loss, grad_norm       f64 [1] (grad_norm before clipping; the test checks that clipping engaged)
Deterministic (fixed seeds, one thread); rerun it after changing the golden fixture:
    ~/.cache/rosetta/venv/bin/python scripts/lora_step_reference.py
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/golden/llama"
OUT = ROOT / "tests/fixtures/lora_step_llama.safetensors"
OUT_FULL = ROOT / "tests/fixtures/full_step_llama.safetensors"
MAX_NORM = 1.0
# Adam's first step is lr * g / (|g| + eps): with eps 1e-8 that is lr * sign(g), which float noise flips for
# the near-zero gradient components a full model has. eps 1e-3 keeps the step linear in small gradients, so
# the comparison tests the gradients (and the clipping) to float accuracy.
EPS_FULL = 1e-3
RANK, ALPHA = 4, 8.0
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.01
TARGETS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
EXAMPLES = [  # (ids, completion_start)
    ([5, 17, 42, 99, 7, 3, 250, 12], 5),
    ([33, 21, 8, 64, 64], 3),
    ([101, 102, 103, 104, 105, 106, 107], 4),
    ([9, 10, 11, 200], 2),
]


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = max(len(ids) for ids, _ in EXAMPLES)
    input_ids = torch.zeros(len(EXAMPLES), t, dtype=torch.long)
    mask = torch.zeros(len(EXAMPLES), t, dtype=torch.long)
    targets = torch.full((len(EXAMPLES), t), -100, dtype=torch.long)
    for r, (ids, start) in enumerate(EXAMPLES):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        for pos in range(start, len(ids)):
            targets[r, pos - 1] = ids[pos]
    return input_ids, mask, targets


def completion_loss(model, input_ids, mask, targets) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    count = (targets != -100).sum()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum") / count


def full_step() -> None:
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    named = dict(model.named_parameters())  # tied weights appear once
    params = list(named.values())
    loss = completion_loss(model, *batch())
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS_FULL, weight_decay=WD)
    opt.step()
    out = {f"after.{n}": p.detach().clone() for n, p in named.items()}
    out["loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    out["grad_norm"] = torch.tensor([norm.item()], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, str(OUT_FULL))
    print(f"wrote {OUT_FULL}: loss {loss.item():.6f}, grad norm {norm.item():.4f} (clipped to {MAX_NORM}), "
          f"{len(named)} tensors")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1234)
    adapters: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}
    scale = ALPHA / RANK
    for l, layer in enumerate(model.model.layers):
        for t in TARGETS:
            module = layer.get_submodule(t)
            a = torch.nn.Parameter((torch.rand(RANK, module.in_features, generator=gen) * 2 - 1) / module.in_features ** 0.5)
            b = torch.nn.Parameter(torch.randn(module.out_features, RANK, generator=gen) * 0.02)
            name = f"base_model.model.model.layers.{l}.{t}"
            adapters[name] = (a, b)

            def hook(mod, inputs, output, a=a, b=b):
                x = inputs[0]
                return output + scale * (x @ a.t()) @ b.t()

            module.register_forward_hook(hook)
    init = {}
    params = []
    for name, (a, b) in adapters.items():
        init[f"init.{name}.lora_A.weight"] = a.detach().clone()
        init[f"init.{name}.lora_B.weight"] = b.detach().clone()
        params += [a, b]
    loss = completion_loss(model, *batch())
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    loss.backward()
    opt.step()
    out = dict(init)
    for name, (a, b) in adapters.items():
        out[f"after.{name}.lora_A.weight"] = a.detach().clone()
        out[f"after.{name}.lora_B.weight"] = b.detach().clone()
    out["loss"] = torch.tensor([loss.item()], dtype=torch.float64)
    for i, (ids, start) in enumerate(EXAMPLES):
        out[f"ex{i}.ids"] = torch.tensor(ids, dtype=torch.long)
        out[f"ex{i}.completion_start"] = torch.tensor([start], dtype=torch.long)
    save_file({k: v.contiguous() for k, v in sorted(out.items())}, str(OUT))
    print(f"wrote {OUT}: loss {loss.item():.6f}, {len(adapters)} adapted projections")
    full_step()


if __name__ == "__main__":
    main()
