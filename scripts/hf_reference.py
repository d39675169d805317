#!/usr/bin/env python3
"""HF transformers reference numbers for Rosetta's real-checkpoint parity tests.

For every prompt in a prompts file (default tests/fixtures/reference_prompts.json) this runs the model with
HF's eager attention in float32, batch size 1, no padding, and writes one safetensors file holding, per prompt i:

  prompt{i}.input_ids        int64 [T]         the prompt's token ids
  prompt{i}.embed            f32   [T, d]      the input of decoder block 0 (embeddings, scaled for Gemma)
  prompt{i}.resid_post.{l}   f32   [T, d]      the raw output of decoder block l (forward hook on
                                               model.model.layers[l]), l = 0 .. n_layers-1
  prompt{i}.final_norm       f32   [T, d]      the last hidden state after the final norm
  prompt{i}.logits           f32   [T, vocab]
  prompt{i}.greedy_ids       int64 [G]         G greedy tokens (no EOS stop: the length is always G)
  prompt{i}.greedy_top2_gap  f32   [G]         top-1 minus top-2 raw logit at each generation step (near-ties
                                               are where a correct implementation may pick another token)

The greedy tokens come from generate() (KV cache, no logits processors, EOS does not stop it); they are
cross-checked against one uncached forward over prompt + generated tokens, and the largest logit difference
between the two and the number of argmax disagreements are in the metadata
(prompt{i}.greedy_recompute_max_abs_diff / _argmax_mismatches).

Plain prompts are tokenized as `tokenizer(text)` does by default (with its special tokens, e.g. BOS for Gemma),
chat prompts with `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`. A chat
prompt for a tokenizer without a chat template (Gemma 3 270M is a base model) is skipped: no tensors, and
`prompt{i}.skipped` in the metadata says why.

The header metadata (all strings) records the model, the prompts (text / messages JSON, kind, id, rendered chat
text), the versions, and the sha256 of the prompts file, of this script and of the model's zoo.json /
config.json, so a caller can tell a stale reference. `--skip-if-current` does nothing when the output exists
and those hashes (and the generation length) match. The file is written atomically (temp + rename).

Usage:
    python scripts/hf_reference.py --model DIR_OR_ZOO_NAME [--out FILE] [--prompts FILE] [--gen-tokens 32]
Default output: $ROSETTA_HOME/reference/<model dir name>.safetensors.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REFERENCE_FORMAT = "1"
SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
DEFAULT_PROMPTS = REPO / "tests" / "fixtures" / "reference_prompts.json"

sys.path.insert(0, str(SCRIPT.parent))
import zoo  # noqa: E402  (same directory: ROSETTA_HOME/ROSETTA_MODELS conventions, hashing, fsync helpers)


class ReferenceError(Exception):
    pass


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def script_sha256() -> str:
    return _sha256_bytes(SCRIPT.read_bytes())


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of the model's zoo.json (which hashes every file), else of its config.json."""
    for name in (zoo.MANIFEST, "config.json"):
        p = model_dir / name
        if p.exists():
            return f"{name}:{_sha256_bytes(p.read_bytes())}"
    raise ReferenceError(f"{model_dir}: neither {zoo.MANIFEST} nor config.json found; is this a model directory?")


def load_prompts(path: Path) -> tuple[list[dict], str]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ReferenceError(f"{path}: invalid JSON: {e}") from None
    prompts = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(prompts, list) or not prompts:
        raise ReferenceError(f"{path}: expected {{\"prompts\": [...]}} with at least one prompt")
    for i, p in enumerate(prompts):
        kind = p.get("kind")
        if kind == "text":
            if not isinstance(p.get("text"), str) or not p["text"]:
                raise ReferenceError(f"{path}: prompt {i}: kind 'text' needs a non-empty 'text'")
        elif kind == "chat":
            msgs = p.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
            ):
                raise ReferenceError(f"{path}: prompt {i}: kind 'chat' needs 'messages': [{{role, content}}, ...]")
        else:
            raise ReferenceError(f"{path}: prompt {i}: kind must be 'text' or 'chat', got {kind!r}")
    return prompts, _sha256_bytes(raw)


def resolve_model(arg: str) -> Path:
    p = Path(arg).expanduser()
    if p.is_dir():
        return p.resolve()
    if arg in zoo.ZOO:
        d = zoo.model_dir(arg)
        if zoo.load_manifest(d) is None:
            raise ReferenceError(f"zoo model {arg} is not fetched (run `scripts/zoo.py fetch {arg}`)")
        return d.resolve()
    raise ReferenceError(f"{arg}: not a model directory nor a zoo name ({', '.join(zoo.ZOO)})")


def default_out(model_dir: Path) -> Path:
    return zoo.rosetta_home() / "reference" / f"{model_dir.name}.safetensors"


def is_current(out: Path, want: dict[str, str]) -> tuple[bool, str]:
    if not out.exists():
        return False, "missing"
    from safetensors import safe_open

    try:
        with safe_open(str(out), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # a truncated/foreign file is simply not current
        return False, f"unreadable ({e})"
    for k, v in want.items():
        if meta.get(k) != v:
            return False, f"{k} changed"
    return True, "current"


def _ids_list(enc) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list, or a BatchEncoding/dict in newer transformers."""
    if hasattr(enc, "keys") and "input_ids" in enc:
        enc = enc["input_ids"]
    if hasattr(enc, "tolist"):
        enc = enc.tolist()
    if enc and isinstance(enc[0], list):
        if len(enc) != 1:
            raise ReferenceError(f"expected one sequence, got {len(enc)}")
        enc = enc[0]
    return [int(t) for t in enc]


def tokenize(tokenizer, prompt: dict) -> tuple[list[int], str | None]:
    if prompt["kind"] == "text":
        return _ids_list(tokenizer(prompt["text"])["input_ids"]), None
    rendered = tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=False)
    ids = _ids_list(tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=True))
    return ids, rendered


def run_prompt(model, ids: list[int], gen_tokens: int) -> dict:
    import torch

    layers = model.model.layers
    captured: dict[int, torch.Tensor] = {}

    def hook(idx):
        def fn(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            captured[idx] = out.detach()[0].clone()

        return fn

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    input_ids = torch.tensor([ids], dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(input_ids, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(layers):
        raise ReferenceError(f"captured {len(captured)} of {len(layers)} decoder block outputs")
    hs = out.hidden_states
    if len(hs) != len(layers) + 1:
        raise ReferenceError(f"hidden_states has {len(hs)} entries, expected {len(layers) + 1}")
    tensors = {
        "input_ids": input_ids[0].clone(),
        "embed": hs[0][0].float().clone(),
        "final_norm": hs[-1][0].float().clone(),
        "logits": out.logits[0].float().clone(),
    }
    for l in range(len(layers)):
        tensors[f"resid_post.{l}"] = captured[l].float()
    # Consistency: hidden_states[l+1] is block l's output for l < L-1; the last entry is the normed one.
    for l in range(len(layers) - 1):
        if not torch.equal(hs[l + 1][0], captured[l]):
            raise ReferenceError(f"hidden_states[{l + 1}] differs from the hook output of block {l}")
    normed = model.model.norm(captured[len(layers) - 1][None])[0]
    if (normed - tensors["final_norm"]).abs().max().item() > 1e-4:
        raise ReferenceError("final_norm is not norm(resid_post[last])")

    # Greedy decoding with a fixed length: no EOS stop, no logits processors (so argmax of the raw logits is
    # exactly the chosen token, which a Rust greedy loop reproduces).
    # generate() fills every unset (None) field of the config it is given from model.generation_config, so
    # an EOS id there would still stop generation: swap in a minimal config without one for the call.
    from transformers import GenerationConfig

    pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else 0
    gen_cfg = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=gen_tokens, pad_token_id=pad)
    saved = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=pad)
    try:
        with torch.no_grad():
            g = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=gen_cfg,
                return_dict_in_generate=True,
                output_logits=True,
            )
    finally:
        model.generation_config = saved
    new = g.sequences[0, input_ids.shape[1]:]
    if new.numel() != gen_tokens or len(g.logits) != gen_tokens:
        raise ReferenceError(f"generation produced {new.numel()} tokens, expected {gen_tokens}")
    step_logits = torch.stack([s[0].float() for s in g.logits])  # [G, vocab], raw (unprocessed)
    top2 = step_logits.topk(2, dim=-1).values
    if not torch.equal(step_logits.argmax(-1), new):
        raise ReferenceError("generate() picked a token that is not the argmax of the raw logits")
    if not torch.equal(step_logits[0].argmax(), out.logits[0, -1].argmax()):
        raise ReferenceError("the first generated token disagrees with the prompt forward pass")
    # Cross-check the KV-cached decoding against one full (uncached) forward over prompt + generated tokens:
    # a Rust implementation may decode either way.
    with torch.no_grad():
        full = model(g.sequences[:, :-1], use_cache=False).logits[0, input_ids.shape[1] - 1 :].float()
    recompute_diff = (full - step_logits).abs().max().item()
    recompute_mismatch = int((full.argmax(-1) != new).sum().item())
    tensors["greedy_ids"] = new.to(torch.long).clone()
    tensors["greedy_top2_gap"] = (top2[:, 0] - top2[:, 1]).contiguous()
    return tensors, {"greedy_recompute_max_abs_diff": f"{recompute_diff:.3e}",
                     "greedy_recompute_argmax_mismatches": str(recompute_mismatch)}


def build(model_dir: Path, out: Path, prompts_path: Path, gen_tokens: int, skip_if_current: bool) -> int:
    prompts, prompts_sha = load_prompts(prompts_path)
    stamp = {
        "rosetta.reference_format": REFERENCE_FORMAT,
        "script_sha256": script_sha256(),
        "prompts_sha256": prompts_sha,
        "model_fingerprint": model_fingerprint(model_dir),
        "gen_tokens": str(gen_tokens),
    }
    if skip_if_current:
        ok, why = is_current(out, stamp)
        if ok:
            print(f"[reference] up to date: {out}", flush=True)
            return 0
        print(f"[reference] {out}: {why}; regenerating", flush=True)

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    print(
        f"[reference] {model_dir.name}: {cfg.model_type}, {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; loaded in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    meta = dict(stamp)
    meta.update({
        "format": "pt",
        "model_dir": str(model_dir),
        "model_name": model_dir.name,
        "model_type": cfg.model_type,
        "num_layers": str(cfg.num_hidden_layers),
        "hidden_size": str(cfg.hidden_size),
        "vocab_size": str(cfg.vocab_size),
        "n_prompts": str(len(prompts)),
        "prompts_file": str(prompts_path),
        "attn_implementation": "eager",
        "dtype": "float32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    tensors: dict[str, torch.Tensor] = {}
    for i, p in enumerate(prompts):
        key = f"prompt{i}"
        meta[f"{key}.kind"] = p["kind"]
        meta[f"{key}.id"] = str(p.get("id", i))
        if p["kind"] == "text":
            meta[f"{key}.text"] = p["text"]
        else:
            meta[f"{key}.messages"] = json.dumps(p["messages"], ensure_ascii=False)
            if not getattr(tok, "chat_template", None):
                meta[f"{key}.skipped"] = "tokenizer has no chat template"
                print(f"[reference]   {key} ({meta[f'{key}.id']}): skipped, the tokenizer has no chat template", flush=True)
                continue
        t = time.monotonic()
        ids, rendered = tokenize(tok, p)
        if rendered is not None:
            meta[f"{key}.rendered"] = rendered
        res, extra = run_prompt(model, ids, gen_tokens)
        for k, v in extra.items():
            meta[f"{key}.{k}"] = v
        for k, v in res.items():
            tensors[f"{key}.{k}"] = v.contiguous()
        text = tok.decode(res["greedy_ids"].tolist(), skip_special_tokens=False)
        meta[f"{key}.greedy_text"] = text
        gap = res["greedy_top2_gap"]
        print(
            f"[reference]   {key} ({meta[f'{key}.id']}): {len(ids)} tokens, min top-2 gap {gap.min().item():.3f}, "
            f"cached vs full max|d| {extra['greedy_recompute_max_abs_diff']}, greedy {text[:60]!r} "
            f"({time.monotonic() - t:.1f} s)",
            flush=True,
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a run that was killed hard
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        zoo.fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    print(
        f"[reference] wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(tensors)} tensors) "
        f"in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write HF reference activations/logits/greedy tokens for parity tests.")
    ap.add_argument("--model", required=True, help="HF model directory, or a zoo name (resolved under $ROSETTA_MODELS)")
    ap.add_argument("--out", type=Path, help="output .safetensors (default: $ROSETTA_HOME/reference/<model>.safetensors)")
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help=f"prompts JSON (default: {DEFAULT_PROMPTS})")
    ap.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens to generate per prompt (default 32)")
    ap.add_argument("--skip-if-current", action="store_true",
                    help="do nothing if the output exists and was made by this script from these prompts and model")
    args = ap.parse_args(argv)
    if args.gen_tokens < 1:
        ap.error("--gen-tokens must be >= 1")
    try:
        model_dir = resolve_model(args.model)
        out = (args.out or default_out(model_dir)).expanduser()
        return build(model_dir, out, args.prompts.expanduser().resolve(), args.gen_tokens, args.skip_if_current)
    except (ReferenceError, zoo.ZooError) as e:
        print(f"[reference] error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[reference] interrupted; no output written", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
