#!/usr/bin/env python3
"""Export Rosetta's golden fixtures: tiny random HF checkpoints of every supported decoder family plus the
reference activations HF transformers computes at every hook point.

Regenerate with:  ~/.cache/rosetta/venv/bin/python scripts/export_golden.py
(output: tests/fixtures/golden/<case>/; see docs/GOLDEN.md for the layout and conventions).

Every activation is captured with torch forward hooks / pre-hooks on HF's own modules (no re-implemented math);
the script then cross-checks the captures against each other, against `output_hidden_states=True`, between left
and right padding, against a reload of the written checkpoint, against the legacy-style configs, and checks that
a manual greedy loop reproduces `generate`. Any failed check aborts the export.

Deterministic: fixed seeds, one CPU thread, and a safetensors writer with a fixed header order
(`safetensors.torch.save_file` writes multi-key metadata in random hash-map order). Running it twice yields
byte-identical files; `--check` regenerates into a temporary directory and compares with the committed ones.
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "golden"

# Shared shapes. hidden 32 (not 64) keeps the whole golden directory well under 5 MB (see docs/GOLDEN.md).
VOCAB = 300
HIDDEN = 32
MAX_POS = 128
PAD_ID = 0
LENGTHS = (11, 6, 2)  # real tokens per row; T = max
BATCH = len(LENGTHS)
SEQ = max(LENGTHS)
NEW_TOKENS = 8
WEIGHT_STD = 0.2  # every linear weight, bias and embedding ~ N(0, 0.2^2)
NORM_STD = 0.2  # llama-style norm weights ~ 1 + N(0, 0.2^2); gemma-style (1 + w) weights ~ N(0, 0.2^2)

# Tolerances of the self-checks.
ADD_TOL = 1e-6  # resid_mid == resid_pre + attn_out, resid_post == resid_mid + mlp_out
LR_TOL = 1e-6  # left vs right padding at real positions, relative to max(1, max|activation|)
RELOAD_TOL = 0.0  # reloading the written checkpoint / legacy config must give bit-identical results


# --------------------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    seed: int
    config_cls: type
    model_cls: type
    config_kwargs: dict
    # "llama": RMSNorm `w * x_hat` (norm weights ~ 1); "gemma": `(1 + w) * x_hat` (norm weights ~ 0).
    norm_style: str
    # True for Gemma 2/3: attention / MLP outputs pass through post-norms before the residual add.
    post_norms: bool
    features: list[str]
    legacy: Callable[[dict], dict] | None = None


def _common(**kw) -> dict:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        max_position_embeddings=MAX_POS,
        pad_token_id=PAD_ID,
        dtype="float32",
    )
    base.update(kw)
    return base


def _drop_new_style(d: dict, *keys: str) -> dict:
    d = copy.deepcopy(d)
    for k in ("rope_parameters", "transformers_version", *keys):
        d.pop(k, None)
    # Pre-v5 configs spell the dtype `torch_dtype`.
    if "dtype" in d:
        d["torch_dtype"] = d.pop("dtype")
    return d


def legacy_llama(d: dict) -> dict:
    # As Llama 3.x configs on the Hub: `rope_theta` next to a `rope_scaling` dict.
    d = _drop_new_style(d)
    d["rope_theta"] = 10000.0
    d["rope_scaling"] = {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 32,
        "rope_type": "llama3",
    }
    return d


def legacy_qwen2(d: dict) -> dict:
    # As Qwen2/2.5 configs on the Hub: no `layer_types`; a `sliding_window` value is present but disabled by
    # `use_sliding_window: false` (here 4 < T, so honouring it by mistake changes the outputs).
    d = _drop_new_style(d, "layer_types")
    d["rope_theta"] = 1000000.0
    d["rope_scaling"] = None
    d["sliding_window"] = 4
    d["use_sliding_window"] = False
    d["max_window_layers"] = 1
    return d


def legacy_gemma2(d: dict) -> dict:
    # As Gemma 2 configs on the Hub: no `layer_types` and no pattern key; HF alternates sliding (even layers,
    # 0-based) and global (odd layers).
    d = _drop_new_style(d, "layer_types")
    d["rope_theta"] = 10000.0
    d["cache_implementation"] = "hybrid"
    return d


def legacy_gemma3_text(d: dict) -> dict:
    # As Gemma 3 (transformers 4.50-era) configs: `rope_theta` (global) + `rope_local_base_freq` (local),
    # `rope_scaling` applying to the global layers only, and `sliding_window_pattern` instead of `layer_types`
    # (layer i is global iff (i + 1) % pattern == 0).
    d = _drop_new_style(d, "layer_types", "_sliding_window_pattern")
    d["rope_theta"] = 1000000.0
    d["rope_local_base_freq"] = 10000.0
    d["rope_scaling"] = {"factor": 8.0, "rope_type": "linear"}
    d["sliding_window_pattern"] = 6
    d["cache_implementation"] = "hybrid"
    return d


CASES: list[Case] = [
    Case(
        name="llama",
        seed=1001,
        config_cls=LlamaConfig,
        model_cls=LlamaForCausalLM,
        config_kwargs=_common(
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        norm_style="llama",
        post_norms=False,
        features=[
            "tied embeddings (no lm_head.weight in the checkpoint)",
            "rope_type llama3 (factor 8, low/high freq factor 1/4, original_max_position_embeddings 32): with "
            "head_dim 16 and theta 1e4 the 8 frequencies fall in all three regimes (1 kept, 1 smoothed, 6 divided)",
            "head_dim derived = hidden / heads = 16",
            "GQA 2 q heads : 1 kv head",
            "3 layers, silu, no biases",
        ],
        legacy=legacy_llama,
    ),
    Case(
        name="llama_bias_untied",
        seed=1002,
        config_cls=LlamaConfig,
        model_cls=LlamaForCausalLM,
        config_kwargs=_common(
            intermediate_size=112,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            attention_bias=True,
            mlp_bias=True,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        norm_style="llama",
        post_norms=False,
        features=[
            "attention_bias (q/k/v/o biases) and mlp_bias (gate/up/down biases)",
            "explicit head_dim 12 != hidden / heads = 8 (q_proj 32 -> 48, o_proj 48 -> 32)",
            "untied lm_head",
            "default rope, rms_norm_eps 1e-5",
            "GQA 4 q heads : 2 kv heads",
        ],
    ),
    Case(
        name="qwen2",
        seed=1003,
        config_cls=Qwen2Config,
        model_cls=Qwen2ForCausalLM,
        config_kwargs=_common(
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            use_sliding_window=False,
            sliding_window=4,
            max_window_layers=1,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        norm_style="llama",
        post_norms=False,
        features=[
            "q/k/v biases, o_proj without bias (Qwen2 hard-codes this; no attention_bias key)",
            "untied lm_head",
            "rope_theta 1e6",
            "use_sliding_window false (HF then saves sliding_window null; config_legacy.json keeps 4 as released "
            "Qwen configs keep a window value)",
            "GQA 4 q heads : 1 kv head (n_rep 4), head_dim derived 8",
        ],
        legacy=legacy_qwen2,
    ),
    Case(
        name="qwen3",
        seed=1004,
        config_cls=Qwen3Config,
        model_cls=Qwen3ForCausalLM,
        config_kwargs=_common(
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        norm_style="llama",
        post_norms=False,
        features=[
            "q_norm / k_norm: Llama-style RMSNorm over head_dim, per head, after the head reshape, before RoPE",
            "explicit head_dim 16 != hidden / heads = 8",
            "tied embeddings (HF's Qwen3Config default is untied; the small released Qwen3 models are tied)",
            "no q/k/v biases (attention_bias false), rope_theta 1e6",
            "GQA 4 q heads : 2 kv heads",
        ],
    ),
    Case(
        name="gemma",
        seed=1005,
        config_cls=GemmaConfig,
        model_cls=GemmaForCausalLM,
        config_kwargs=_common(
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            hidden_act="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=2,
            eos_token_id=1,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        norm_style="gemma",
        post_norms=False,
        features=[
            "Gemma RMSNorm (1 + w) computed in f32 then cast",
            "embeddings scaled by sqrt(hidden) (embed hook includes the scale)",
            "explicit head_dim 16 != hidden / heads = 8",
            "multi-query attention 4 q heads : 1 kv head",
            "gelu_pytorch_tanh, tied embeddings",
        ],
    ),
    Case(
        name="gemma2",
        seed=1006,
        config_cls=Gemma2Config,
        model_cls=Gemma2ForCausalLM,
        config_kwargs=_common(
            intermediate_size=96,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            bos_token_id=2,
            eos_token_id=1,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        norm_style="gemma",
        post_norms=True,
        features=[
            "four norms per layer; attn_out / mlp_out hooks are the post-norm outputs",
            "attn_logit_softcapping 5.0 (real checkpoints: 50; 5 keeps tanh non-linear for the O(1-5) scores of "
            "this model and makes 'softcap before the mask' observable)",
            "final_logit_softcapping 3.0 (real checkpoints: 30; the O(1-5) logits of this model would barely feel 30, "
            "and scaling them up to ~30 would put the logits' own f32 rounding near the 1e-5 tolerance)",
            "query_pre_attn_scalar 24 != head_dim 16 (scale 24^-0.5)",
            "sliding window 4 (< T = 11) on layers 0 and 2 via layer_types; layers 1 and 3 global",
            "explicit head_dim 16, GQA 4:2, Gemma (1 + w) norms, sqrt(hidden) embedding scale, tied",
        ],
        legacy=legacy_gemma2,
    ),
    Case(
        name="gemma3_text",
        seed=1007,
        config_cls=Gemma3TextConfig,
        model_cls=Gemma3ForCausalLM,
        config_kwargs=_common(
            intermediate_size=96,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            sliding_window=4,
            layer_types=["sliding_attention"] * 5 + ["full_attention"],
            bos_token_id=2,
            eos_token_id=1,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            },
        ),
        norm_style="gemma",
        post_norms=True,
        features=[
            "q_norm / k_norm: Gemma-style (1 + w) RMSNorm over head_dim after the head reshape, before RoPE",
            "6 layers, 5 local : 1 global (layer_types), sliding window 4 (< T = 11)",
            "two RoPE tables: local theta 1e4 (default), global theta 1e6 with linear scaling factor 8",
            "query_pre_attn_scalar 24 != head_dim 16",
            "no softcaps (both null), four norms per layer, post-norm hook placement",
            "explicit head_dim 16, GQA 4:2, sqrt(hidden) embedding scale, tied",
        ],
        legacy=legacy_gemma3_text,
    ),
]

# Feature sensitivity: the same weights under a config without the feature must give clearly different logits
# (max |diff| at real positions > SENSITIVITY_MIN), i.e. the fixtures really exercise it.
SENSITIVITY_MIN = 1e-3
SENSITIVITY: dict[str, list[tuple[str, dict]]] = {
    "llama": [
        ("llama3 rope scaling", {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}),
    ],
    "llama_bias_untied": [
        ("rms_norm_eps 1e-5 (vs 1e-6)", {"rms_norm_eps": 1e-6}),
    ],
    "qwen2": [
        ("sliding window if use_sliding_window were honoured", {"use_sliding_window": True, "max_window_layers": 0}),
    ],
    "gemma2": [
        ("attention logit softcap", {"attn_logit_softcapping": None}),
        ("final logit softcap", {"final_logit_softcapping": None}),
        ("sliding window", {"sliding_window": 4096}),
        ("query_pre_attn_scalar (vs head_dim)", {"query_pre_attn_scalar": 16}),
    ],
    "gemma3_text": [
        ("sliding window", {"sliding_window": 4096}),
        (
            "linear scaling of the global rope",
            {
                "rope_parameters": {
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                }
            },
        ),
        (
            "separate local rope base",
            {
                "rope_parameters": {
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                }
            },
        ),
        ("query_pre_attn_scalar (vs head_dim)", {"query_pre_attn_scalar": 16}),
    ],
}


@torch.no_grad()
def sensitivity(case: Case, model: torch.nn.Module, inputs: dict, logits: torch.Tensor) -> dict[str, float]:
    out = {}
    pos = real_positions(inputs["attention_mask"])
    for label, overrides in SENSITIVITY.get(case.name, []):
        kwargs = copy.deepcopy(case.config_kwargs)
        kwargs.update(copy.deepcopy(overrides))
        variant = case.model_cls._from_config(case.config_cls(**kwargs), attn_implementation="eager")
        variant.load_state_dict(model.state_dict(), strict=True)
        variant.eval()
        other = variant(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            use_cache=False,
        ).logits
        d = max(max_diff(logits[r, pos[r]], other[r, pos[r]]) for r in range(BATCH))
        assert d > SENSITIVITY_MIN, (case.name, label, d)
        out[label] = d
    return out


MULTIMODAL_CASE = "gemma3_multimodal"
MULTIMODAL_SOURCE = "gemma3_text"
MULTIMODAL_FEATURES = [
    "the gemma3_text weights and inputs saved as a multimodal Gemma3ForConditionalGeneration checkpoint",
    "config.json: model_type gemma3 with the text model under text_config (plus a tiny placeholder "
    "vision_config)",
    "tensor names model.language_model.* (transformers 5 layout); lm_head tied to "
    "model.language_model.embed_tokens.weight and omitted; vision tower / projector weights omitted",
    "expected_*.safetensors: the gemma3_text tensors (verified equal to the multimodal model's own outputs)",
]
# Tiny placeholder vision tower: only needed so that HF can instantiate Gemma3ForConditionalGeneration.
MULTIMODAL_VISION = dict(
    model_type="siglip_vision_model",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    vision_use_head=False,
)


# --------------------------------------------------------------------------------------------------------------
# Deterministic safetensors writer
# --------------------------------------------------------------------------------------------------------------

_ST_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Standard safetensors layout with a deterministic header (metadata and tensors sorted by name)."""
    assert sys.byteorder == "little"
    header: dict = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    # Round trip through the reference reader.
    back = load_file(str(path))
    assert set(back) == set(tensors), path
    for k, v in tensors.items():
        assert torch.equal(back[k], v.detach().cpu()), (path, k)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata, path


# --------------------------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------------------------


def is_norm_weight(name: str) -> bool:
    # input_layernorm, post_attention_layernorm, pre/post_feedforward_layernorm, model.norm, q_norm, k_norm.
    return name.endswith("norm.weight")


@torch.no_grad()
def reinit_(model: torch.nn.Module, seed: int, norm_style: str) -> None:
    """Replace HF's (tiny) random init so activations are O(1) and every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    # named_parameters() de-duplicates tied parameters, so a tied lm_head is re-initialised once, with the embedding.
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if is_norm_weight(name):
            value = noise * NORM_STD + (1.0 if norm_style == "llama" else 0.0)
        else:
            value = noise * WEIGHT_STD
        p.copy_(value)


def make_config(case: Case):
    return case.config_cls(**case.config_kwargs)


def build_model(case: Case) -> torch.nn.Module:
    torch.manual_seed(case.seed)
    config = make_config(case)
    model = case.model_cls._from_config(config, attn_implementation="eager")
    model.to(torch.float32)
    reinit_(model, case.seed, case.norm_style)
    model.eval()
    tied = bool(config.tie_word_embeddings)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied, case.name
    return model


def text_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding embed_tokens / layers / norm."""
    if isinstance(model, Gemma3ForConditionalGeneration):
        return model.model.language_model
    return model.model


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def make_inputs(seed: int, vocab: int, side: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 500_000)
    real = torch.randint(1, vocab, (BATCH, SEQ), generator=gen, dtype=torch.int64)  # never the pad id 0
    ids = torch.full((BATCH, SEQ), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((BATCH, SEQ), dtype=torch.int64)
    for r, n in enumerate(LENGTHS):
        if side == "left":
            ids[r, SEQ - n :] = real[r, :n]
            mask[r, SEQ - n :] = 1
        else:
            ids[r, :n] = real[r, :n]
            mask[r, :n] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos}


def real_positions(mask: torch.Tensor) -> list[torch.Tensor]:
    return [torch.nonzero(mask[r]).flatten() for r in range(mask.shape[0])]


# --------------------------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------------------------


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def capture(model: torch.nn.Module, post_norms: bool, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tm = text_model_of(model)
    got: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(key):
        def fn(_mod, _args, out):
            assert key not in got, key
            got[key] = _first(out).detach().clone()

        return fn

    def in_hook(key):
        def fn(_mod, args, kwargs):
            assert key not in got, key
            x = args[0] if args else kwargs["hidden_states"]
            got[key] = x.detach().clone()

        return fn

    handles.append(tm.embed_tokens.register_forward_hook(out_hook("embed")))
    for i, layer in enumerate(tm.layers):
        handles.append(layer.register_forward_pre_hook(in_hook(f"resid_pre.{i}"), with_kwargs=True))
        handles.append(layer.register_forward_hook(out_hook(f"resid_post.{i}")))
        if post_norms:
            # Gemma 2/3: residual + post_attention_layernorm(attn); residual + post_feedforward_layernorm(mlp).
            handles.append(layer.post_attention_layernorm.register_forward_hook(out_hook(f"attn_out.{i}")))
            handles.append(
                layer.pre_feedforward_layernorm.register_forward_pre_hook(
                    in_hook(f"resid_mid.{i}"), with_kwargs=True
                )
            )
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(out_hook(f"mlp_out.{i}")))
        else:
            # Llama / Qwen / Gemma 1: residual + self_attn(...)[0]; post_attention_layernorm is the pre-MLP norm.
            handles.append(layer.self_attn.register_forward_hook(out_hook(f"attn_out.{i}")))
            handles.append(
                layer.post_attention_layernorm.register_forward_pre_hook(
                    in_hook(f"resid_mid.{i}"), with_kwargs=True
                )
            )
            handles.append(layer.mlp.register_forward_hook(out_hook(f"mlp_out.{i}")))
    handles.append(tm.norm.register_forward_hook(out_hook("final_norm")))
    try:
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
    finally:
        for h in handles:
            h.remove()
    got["logits"] = out.logits.detach().clone()
    hidden_states = [h.detach().clone() for h in out.hidden_states]
    check_capture(got, hidden_states, len(tm.layers))
    return got


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check_capture(got: dict[str, torch.Tensor], hs: list[torch.Tensor], n_layers: int) -> None:
    expected_keys = {"embed", "final_norm", "logits"} | {
        f"{k}.{i}" for i in range(n_layers) for k in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
    }
    assert set(got) == expected_keys, sorted(set(got) ^ expected_keys)
    for k, v in got.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
        assert v.shape[:2] == (BATCH, SEQ), (k, v.shape)
    for i in range(n_layers):
        d1 = max_diff(got[f"resid_mid.{i}"], got[f"resid_pre.{i}"] + got[f"attn_out.{i}"])
        d2 = max_diff(got[f"resid_post.{i}"], got[f"resid_mid.{i}"] + got[f"mlp_out.{i}"])
        assert d1 <= ADD_TOL and d2 <= ADD_TOL, (i, d1, d2)
        if i > 0:
            assert torch.equal(got[f"resid_pre.{i}"], got[f"resid_post.{i - 1}"]), i
    assert torch.equal(got["resid_pre.0"], got["embed"])
    # HF output_hidden_states convention (transformers 5 capture_outputs): L + 1 entries; [0] = input of layer 0
    # (the scaled embedding), [i] = output of layer i - 1 for 1 <= i < L, [L] = last_hidden_state = final norm output
    # (the raw output of the last layer is NOT among them).
    assert len(hs) == n_layers + 1, len(hs)
    assert torch.equal(hs[0], got["embed"])
    for i in range(1, n_layers):
        assert torch.equal(hs[i], got[f"resid_post.{i - 1}"]), i
    assert torch.equal(hs[n_layers], got["final_norm"])


def left_right_diff(left: dict, right: dict, lmask: torch.Tensor, rmask: torch.Tensor) -> tuple[float, str]:
    """Max |left - right| over the real (non-pad) positions of every activation. Asserts it is within LR_TOL
    relative to the activation's magnitude (max(1, max|x|)): both sides are the same math in a different
    reduction layout, so only f32 rounding may differ."""
    worst, worst_key = 0.0, ""
    lpos, rpos = real_positions(lmask), real_positions(rmask)
    for k in left:
        for r in range(BATCH):
            a, b = left[k][r, lpos[r]], right[k][r, rpos[r]]
            d = max_diff(a, b)
            assert d <= LR_TOL * max(1.0, a.abs().max().item()), (k, r, d)
            if d > worst:
                worst, worst_key = d, f"{k}[row {r}]"
    return worst, worst_key


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------


def eos_ids(config) -> list[int]:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    e = cfg.eos_token_id
    return [] if e is None else ([e] if isinstance(e, int) else list(e))


@torch.no_grad()
def greedy(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    out = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
    )
    new = out[:, SEQ:].clone()
    assert new.shape == (BATCH, NEW_TOKENS), new.shape

    # Cross-check with a cache-free loop: full forward each step, explicit position ids, the eos ids masked out as
    # min_new_tokens does. Also record how close the greedy decisions are.
    ids, mask = inputs["input_ids"].clone(), inputs["attention_mask"].clone()
    eos = eos_ids(model.config)
    manual, min_margin, eos_would_win = [], float("inf"), 0
    for _ in range(NEW_TOKENS):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        eos_would_win += int(sum((logits.argmax(-1) == e).sum().item() for e in eos))
        if eos:
            logits[:, eos] = float("-inf")
        top2 = logits.topk(2, dim=-1).values
        min_margin = min(min_margin, (top2[:, 0] - top2[:, 1]).min().item())
        nxt = logits.argmax(-1)
        manual.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    manual = torch.stack(manual, dim=1)
    assert torch.equal(manual, new), (manual, new)
    return new, {"min_top2_margin": min_margin, "eos_suppressed_steps": eos_would_win, "eos_ids": eos}


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------


def base_meta(case_name: str, model_type: str, side: str, seed: int) -> dict[str, str]:
    return {
        "format": "pt",
        "case": case_name,
        "model_type": model_type,
        "padding_side": side,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seed": str(seed),
        "real_lengths": ",".join(str(n) for n in LENGTHS),
        "pad_token_id": str(PAD_ID),
        "position_ids": "(cumsum(attention_mask, -1) - 1).clamp(min=0), passed explicitly to forward",
        "hidden_states": "HF output_hidden_states: [0]=embed, [i]=resid_post.{i-1} (0<i<L), [L]=final_norm",
    }


def greedy_meta(info: dict) -> dict[str, str]:
    return {
        "greedy": f"model.generate(input_ids, attention_mask, do_sample=False, max_new_tokens={NEW_TOKENS}, "
        f"min_new_tokens={NEW_TOKENS}); left padding; generate derives position ids from the mask itself "
        "((cumsum - 1), pads -> 0); min_new_tokens sets the eos logits to -inf at every step",
        "greedy_eos_ids": ",".join(str(e) for e in info["eos_ids"]),
        "greedy_min_top2_margin": f"{info['min_top2_margin']:.6g}",
        "greedy_eos_suppressed_steps": str(info["eos_suppressed_steps"]),
    }


def save_checkpoint(model: torch.nn.Module, out_dir: Path) -> list[str]:
    # `architectures` is what model.save_pretrained would add; released checkpoints carry it.
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out_dir)
    sd = model.state_dict()
    tied = bool(model.config.tie_word_embeddings)
    tensors = {}
    for k, v in sd.items():
        if tied and k == "lm_head.weight":
            continue
        tensors[k] = v.detach().clone().contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return sorted(tensors)


def load_pretrained(cls, path: Path, **kw):
    return cls.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32, **kw).eval()


def compare_all(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(max_diff(a[k], b[k]) for k in a)


def export_case(case: Case, out: Path, report: dict) -> dict:
    print(f"[{case.name}]", flush=True)
    case_dir = out / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(case)
    model_type = model.config.model_type
    names = save_checkpoint(model, case_dir)

    results = {}
    for side in ("left", "right"):
        inputs = make_inputs(case.seed, VOCAB, side)
        results[side] = (inputs, capture(model, case.post_norms, inputs))
    (linp, left), (rinp, right) = results["left"], results["right"]
    lr, lr_key = left_right_diff(left, right, linp["attention_mask"], rinp["attention_mask"])

    new_ids, ginfo = greedy(model, linp)
    sens = sensitivity(case, model, linp, left["logits"])

    # The written checkpoint reloads into the same model.
    reloaded = load_pretrained(AutoModelForCausalLM, case_dir)
    assert type(reloaded) is type(model), type(reloaded)
    d_reload = compare_all(capture(reloaded, case.post_norms, linp), left)
    assert d_reload <= RELOAD_TOL, (case.name, d_reload)

    # Legacy-style config: same model, same outputs.
    legacy_info = None
    if case.legacy is not None:
        new_dict = json.loads((case_dir / "config.json").read_text())
        legacy_dict = case.legacy(new_dict)
        (case_dir / "config_legacy.json").write_text(json.dumps(legacy_dict, indent=2, sort_keys=True) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            shutil.copy(case_dir / "config_legacy.json", tmp / "config.json")
            shutil.copy(case_dir / "model.safetensors", tmp / "model.safetensors")
            legacy_model = load_pretrained(AutoModelForCausalLM, tmp)
        lc, nc = legacy_model.config, model.config
        for attr in ("rope_parameters", "layer_types", "sliding_window", "head_dim", "tie_word_embeddings"):
            assert getattr(lc, attr, None) == getattr(nc, attr, None), (case.name, attr, getattr(lc, attr, None))
        d_legacy = compare_all(capture(legacy_model, case.post_norms, linp), left)
        assert d_legacy <= RELOAD_TOL, (case.name, d_legacy)
        legacy_info = {"accepted": True, "max_abs_diff": d_legacy}

    for side, (inputs, acts) in results.items():
        tensors = dict(inputs)
        tensors.update(acts)
        meta = base_meta(case.name, model_type, side, case.seed)
        if side == "left":
            tensors["greedy_ids"] = new_ids
            meta.update(greedy_meta(ginfo))
        write_safetensors(case_dir / f"expected_{side}.safetensors", tensors, meta)

    report[case.name] = {
        "model_type": model_type,
        "features": case.features,
        "left_right_max_abs_diff": lr,
        "left_right_worst": lr_key,
        "greedy": ginfo,
        "greedy_ids": new_ids.tolist(),
        "legacy_config": legacy_info,
        "sensitivity": sens,
        "tensors": len(names),
        "max_abs_activation": max(v.abs().max().item() for v in left.values()),
    }
    print(
        f"  left/right max|diff| {lr:.3g} ({lr_key}); greedy min margin {ginfo['min_top2_margin']:.3g}; "
        f"legacy {legacy_info}; without feature: "
        + ", ".join(f"{k}: {v:.3g}" for k, v in sens.items()),
        flush=True,
    )
    return {"model": model, "left": results["left"], "right": results["right"], "greedy": (new_ids, ginfo)}


def export_multimodal(src_case: Case, src: dict, out: Path, report: dict) -> None:
    print(f"[{MULTIMODAL_CASE}]", flush=True)
    case_dir = out / MULTIMODAL_CASE
    case_dir.mkdir(parents=True, exist_ok=True)
    text_model: torch.nn.Module = src["model"]
    text_cfg = text_model.config
    assert text_cfg.tie_word_embeddings
    mm_cfg = Gemma3Config(
        text_config=text_cfg.to_dict(),
        vision_config=dict(MULTIMODAL_VISION),
        mm_tokens_per_image=4,
        tie_word_embeddings=True,
        dtype="float32",
        architectures=["Gemma3ForConditionalGeneration"],
    )
    mm_cfg.save_pretrained(case_dir)
    tensors = {}
    for k, v in text_model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied
        assert k.startswith("model."), k
        tensors["model.language_model." + k[len("model.") :]] = v.detach().clone().contiguous()
    save_file(tensors, str(case_dir / "model.safetensors"), metadata={"format": "pt"})

    # HF loads it as Gemma3ForConditionalGeneration: only vision weights missing, nothing unexpected, and the
    # text path reproduces gemma3_text exactly.
    torch.manual_seed(src_case.seed)
    mm, info = Gemma3ForConditionalGeneration.from_pretrained(
        str(case_dir), attn_implementation="eager", dtype=torch.float32, output_loading_info=True
    )
    mm.eval()
    missing = sorted(info["missing_keys"])
    assert all(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in missing), missing
    assert not info["unexpected_keys"], info["unexpected_keys"]
    assert not info.get("mismatched_keys"), info.get("mismatched_keys")
    assert mm.lm_head.weight.data_ptr() == mm.model.language_model.embed_tokens.weight.data_ptr()

    diffs = {}
    for side in ("left", "right"):
        inputs, acts = src[side]
        diffs[side] = compare_all(capture(mm, src_case.post_norms, inputs), acts)
        assert diffs[side] <= RELOAD_TOL, (side, diffs[side])
    src_ids, ginfo = src["greedy"]
    mm_ids, _ = greedy(mm, src["left"][0])
    assert torch.equal(mm_ids, src_ids), (mm_ids, src_ids)

    for side in ("left", "right"):
        inputs, acts = src[side]
        tensors = dict(inputs)
        tensors.update(acts)
        meta = base_meta(MULTIMODAL_CASE, "gemma3", side, src_case.seed)
        meta["tensors_from"] = MULTIMODAL_SOURCE
        if side == "left":
            tensors["greedy_ids"] = src_ids
            meta.update(greedy_meta(ginfo))
        write_safetensors(case_dir / f"expected_{side}.safetensors", tensors, meta)

    report[MULTIMODAL_CASE] = {
        "model_type": "gemma3",
        "features": MULTIMODAL_FEATURES,
        "left_right_max_abs_diff": report[MULTIMODAL_SOURCE]["left_right_max_abs_diff"],
        "multimodal_vs_text_max_abs_diff": diffs,
        "greedy": report[MULTIMODAL_SOURCE]["greedy"],
        "missing_on_load": len(missing),
        "tensor_names": sorted(load_file(str(case_dir / "model.safetensors"))),
    }
    print(f"  multimodal vs text max|diff| {diffs}; {len(missing)} vision tensors missing on load", flush=True)


def export_all(out: Path) -> dict:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    report: dict = {}
    produced = {}
    for case in CASES:
        produced[case.name] = export_case(case, out, report)
    src_case = next(c for c in CASES if c.name == MULTIMODAL_SOURCE)
    export_multimodal(src_case, produced[MULTIMODAL_SOURCE], out, report)
    write_manifest(out, report)
    return report


def write_manifest(out: Path, report: dict) -> None:
    """manifest.json: the case list and per-case facts, for data-driven tests."""
    cases = {}
    for name, r in report.items():
        src = report[MULTIMODAL_SOURCE] if name == MULTIMODAL_CASE else r
        cfg = json.loads((out / name / "config.json").read_text())
        text_cfg = cfg.get("text_config", cfg)
        case = next((c for c in CASES if c.name == name), None)
        cases[name] = {
            "model_type": cfg["model_type"],
            "architecture": cfg["architectures"][0],
            "num_hidden_layers": text_cfg["num_hidden_layers"],
            "hook_placement": "post_norm" if (case or src_case_of(name)).post_norms else "pre_norm",
            "config_legacy": (out / name / "config_legacy.json").exists(),
            "tensors_from": MULTIMODAL_SOURCE if name == MULTIMODAL_CASE else name,
            "features": r["features"],
            "left_right_max_abs_diff": src["left_right_max_abs_diff"],
            "greedy_min_top2_margin": src["greedy"]["min_top2_margin"],
        }
    manifest = {
        "generator": "scripts/export_golden.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "batch": BATCH,
        "seq_len": SEQ,
        "real_lengths": list(LENGTHS),
        "pad_token_id": PAD_ID,
        "greedy_new_tokens": NEW_TOKENS,
        "files": ["config.json", "model.safetensors", "expected_left.safetensors", "expected_right.safetensors"],
        "per_layer_hooks": ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"],
        "global_hooks": ["embed", "final_norm", "logits"],
        "cases": cases,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def src_case_of(name: str) -> Case:
    assert name == MULTIMODAL_CASE, name
    return next(c for c in CASES if c.name == MULTIMODAL_SOURCE)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def same_tree(a: Path, b: Path) -> list[str]:
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return [f"file lists differ: {sorted(set(fa) ^ set(fb))}"]
    return [f for f in fa if not filecmp.cmp(a / f, b / f, shallow=False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and compare byte-for-byte with --out (nothing is written)",
    )
    ap.add_argument("--report", type=Path, help="also write the JSON report of the self-checks here")
    args = ap.parse_args()

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            report = export_all(Path(tmp) / "golden")
            bad = same_tree(Path(tmp) / "golden", args.out)
        if bad:
            print("golden fixtures differ from a fresh export:", *bad, sep="\n  ")
            return 1
        print(f"golden fixtures in {args.out} are byte-identical to a fresh export")
    else:
        report = export_all(args.out)
        print(f"wrote {args.out} ({dir_size(args.out) / 1e6:.2f} MB)")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
