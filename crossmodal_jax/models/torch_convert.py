"""PyTorch DiT weights -> parameters of this project's Flax DiT (class-label mode).

Two source layouts:
- facebookresearch/DiT (`models.py`): `x_embedder.proj`, `t_embedder.mlp.{0,2}`,
  `y_embedder.embedding_table`, `pos_embed`, `blocks.N.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,
  adaLN_modulation.1}`, `final_layer.{linear,adaLN_modulation.1}`; `.pt` files are read with
  `torch.load(weights_only=True)` only, never a full unpickle.
- diffusers `DiTTransformer2DModel`: renamed to the layout above first. diffusers gives every
  block its own copy of the timestep/label embedder (`norm1.emb`); converted checkpoints hold
  identical copies, which is checked, since our DiT (like facebookresearch's) has one.

Every function returns `(params, dit_kwargs)`: `DiT(**dit_kwargs).apply({"params": params}, x, t,
labels)` with x f32[B, H, W, C] (channels last), t in 0..999 and labels i32[B] reproduces the
PyTorch output transposed to channels last. Exact-layout differences the kwargs carry:
- `pos_embed_col_first=True`: both PyTorch codes encode the column in the first half of the
  2-D sin-cos features (MAE meshgrid order), ours encodes the row;
- `t_freq_shift`: facebookresearch's timestep frequencies are 10000^(-i/128), diffusers'
  (`Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`) 10000^(-i/127);
- `mlp_norm_eps`: diffusers' pre-MLP LayerNorm uses config.norm_eps (1e-5 by default), every
  other norm of both codes uses 1e-6.
torch is optional (the `bench` extra) and imported only inside the loaders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from crossmodal_jax.errors import CheckpointError, one_line
from crossmodal_jax.models.layers import sincos_2d

# facebookresearch/DiT model sizes: hidden size -> heads (checkpoints do not store the count).
FACEBOOK_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}

Params = dict[str, Any]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """A torch tensor (any float dtype, bf16 included) or array -> float32 numpy."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().float().numpy()
    if not isinstance(value, np.ndarray | np.generic):
        raise CheckpointError(f"entry {name!r} is a {type(value).__name__}, not a tensor")
    return np.asarray(value, np.float32)


class _Weights:
    """A state dict that records which keys were read, so leftovers can be reported."""

    def __init__(self, state_dict: Mapping[str, Any], source: str):
        self.arrays = {str(k): v for k, v in state_dict.items()}
        self.source = source
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def get(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            raise CheckpointError(f"{self.source}: missing weight {key!r}")
        self.used.add(key)
        return _to_numpy(self.arrays[key], key)

    def check_all_used(self) -> None:
        extra = sorted(set(self.arrays) - self.used)
        if extra:
            raise CheckpointError(
                f"{self.source}: unexpected weights {extra[:3]}{' ...' if len(extra) > 3 else ''}"
            )


def _dense(w: _Weights, prefix: str) -> Params:
    """torch Linear (weight [out, in]) -> flax Dense (kernel [in, out])."""
    return {"kernel": w.get(f"{prefix}.weight").T, "bias": w.get(f"{prefix}.bias")}


def _attention(w: _Weights, prefix: str, d: int, num_heads: int) -> Params:
    """timm Attention (fused qkv [3D, D], rows ordered (3, heads, head_dim)) -> query/key/value/out."""
    head_dim = d // num_heads
    qkv_w, qkv_b = w.get(f"{prefix}.qkv.weight"), w.get(f"{prefix}.qkv.bias")
    out = {}
    for i, name in enumerate(("query", "key", "value")):
        rows = slice(i * d, (i + 1) * d)
        out[name] = {
            "kernel": qkv_w[rows].T.reshape(d, num_heads, head_dim),
            "bias": qkv_b[rows].reshape(num_heads, head_dim),
        }
    proj = _dense(w, f"{prefix}.proj")
    out["out"] = {"kernel": proj["kernel"].reshape(num_heads, head_dim, d), "bias": proj["bias"]}
    return out


def convert_facebook_state_dict(
    state_dict: Mapping[str, Any],
    *,
    num_heads: int | None = None,
    input_size: int | None = None,
    source: str = "state dict",
    t_freq_shift: float = 0.0,
    mlp_norm_eps: float = 1e-6,
) -> tuple[Params, dict[str, Any]]:
    """A facebookresearch/DiT state dict -> (flax params, DiT kwargs).

    `num_heads` defaults to the DiT-S/B/L/XL value for the hidden size; `input_size` (latent
    side) defaults to the one implied by the `pos_embed` buffer. The two keyword-only numerics
    are for diffusers-derived weights (see the module docstring).
    """
    w = _Weights(state_dict, source)
    patch_w = w.get("x_embedder.proj.weight")  # [D, C, p, p]
    d, in_c, p, _ = patch_w.shape
    depth = len({m.group(1) for k in w.arrays if (m := re.match(r"blocks\.(\d+)\.", k))})
    if num_heads is None:
        if d not in FACEBOOK_HEADS:
            raise CheckpointError(f"{source}: hidden size {d} is not a DiT preset; pass num_heads")
        num_heads = FACEBOOK_HEADS[d]
    if d % num_heads:
        raise CheckpointError(f"{source}: hidden size {d} is not divisible by {num_heads} heads")

    pos = w.get("pos_embed").reshape(-1, d) if "pos_embed" in w else None
    if input_size is None:
        if pos is None:
            raise CheckpointError(
                f"{source}: no pos_embed; pass input_size (diffusers: sample_size)"
            )
        input_size = int(round(np.sqrt(pos.shape[0]))) * p
    grid = input_size // p
    if pos is not None:
        # The buffer is fixed, not learned: it must be the sin-cos table we recompute.
        want = sincos_2d(d, grid, grid, col_first=True)
        if pos.shape != want.shape or not np.allclose(pos, want, atol=1e-4):
            raise CheckpointError(f"{source}: pos_embed is not DiT's 2-D sin-cos table")

    params: Params = {
        "patch_embed": {
            "proj": {
                # Dense over patchify's (p1, p2, c) feature order == the stride-p conv.
                "kernel": patch_w.transpose(2, 3, 1, 0).reshape(p * p * in_c, d),
                "bias": w.get("x_embedder.proj.bias"),
            }
        },
        "t_embed": {"fc1": _dense(w, "t_embedder.mlp.0"), "fc2": _dense(w, "t_embedder.mlp.2")},
        "label_embed": {"table": {"embedding": w.get("y_embedder.embedding_table.weight")}},
        "final_layer": {
            "adaLN": _dense(w, "final_layer.adaLN_modulation.1"),
            "linear": _dense(w, "final_layer.linear"),
        },
    }
    for i in range(depth):
        b = f"blocks.{i}"
        params[f"blocks_{i}"] = {
            "adaLN": _dense(w, f"{b}.adaLN_modulation.1"),
            "attn": _attention(w, f"{b}.attn", d, num_heads),
            "mlp": {"fc1": _dense(w, f"{b}.mlp.fc1"), "fc2": _dense(w, f"{b}.mlp.fc2")},
        }
    w.check_all_used()

    out_features = params["final_layer"]["linear"]["bias"].shape[0]
    mlp_hidden = params["blocks_0"]["mlp"]["fc1"]["bias"].shape[0] if depth else 4 * d
    dit_kwargs = dict(
        input_size=(input_size, input_size),
        in_channels=int(in_c),
        out_channels=int(out_features // (p * p)),
        patch_size=int(p),
        hidden_size=int(d),
        depth=depth,
        num_heads=int(num_heads),
        mlp_ratio=mlp_hidden / d,
        # The last table row is the classifier-free-guidance null label.
        num_classes=int(params["label_embed"]["table"]["embedding"].shape[0] - 1),
        t_freq_shift=t_freq_shift,
        pos_embed_col_first=True,
        mlp_norm_eps=mlp_norm_eps,
    )
    return params, dit_kwargs


_DIFFUSERS_RENAMES = (
    (r"pos_embed\.proj\.", "x_embedder.proj."),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.", r"blocks.\1.adaLN_modulation.1."),
    (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.attn.proj."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"blocks.\1.mlp.fc1."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.", r"blocks.\1.mlp.fc2."),
    (r"proj_out_1\.", "final_layer.adaLN_modulation.1."),
    (r"proj_out_2\.", "final_layer.linear."),
)
_EMBEDDER_RENAMES = {
    "timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "class_embedder.embedding_table.": "y_embedder.embedding_table.",
}


def _embedder_name(suffix: str) -> str | None:
    """`timestep_embedder.linear_1.weight` (after `norm1.emb.`) -> `t_embedder.mlp.0.weight`."""
    for theirs, ours in _EMBEDDER_RENAMES.items():
        if suffix.startswith(theirs):
            return ours + suffix[len(theirs) :]
    return None


def diffusers_to_facebook(state_dict: Mapping[str, Any], source: str = "diffusers") -> Params:
    """Rename a `DiTTransformer2DModel` state dict to the facebookresearch layout.

    q/k/v are fused into `qkv` (zero biases when the model has attention_bias=False); the
    per-block embedders must be identical copies of block 0's.
    """
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str, str], np.ndarray] = {}
    shared: dict[str, tuple[np.ndarray, str]] = {}
    for key, value in state_dict.items():
        arr = _to_numpy(value, key)
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.+)", key):
            name = _embedder_name(m.group(2))
            if name is None:
                raise CheckpointError(f"{source}: unexpected weight {key!r}")
            if name not in shared:
                shared[name] = (arr, key)
            elif not np.array_equal(shared[name][0], arr):
                raise CheckpointError(
                    f"{source}: {key!r} differs from {shared[name][1]!r}; our DiT shares one "
                    "timestep/label embedder across blocks, so every block's copy must be equal"
                )
            continue
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.attn1\.to_([qkv])\.(weight|bias)", key):
            qkv[m.groups()] = arr
            continue
        if re.fullmatch(r"transformer_blocks\.(\d+)\.norm3\.(weight|bias)", key):
            raise CheckpointError(f"{source}: norm_elementwise_affine=True is not supported")
        if key == "pos_embed.pos_embed":  # a buffer, recomputed from the config
            continue
        for pattern, repl in _DIFFUSERS_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key, count=1)] = arr
                break
        else:
            out[key] = arr  # reported as unexpected by convert_facebook_state_dict
    out.update({name: arr for name, (arr, _) in shared.items()})
    for block in sorted({blk for blk, _, _ in qkv}, key=int):
        weights = [qkv.get((block, c, "weight")) for c in "qkv"]
        if any(x is None for x in weights):
            raise CheckpointError(f"{source}: block {block} lacks one of to_q/to_k/to_v")
        zeros = np.zeros(weights[0].shape[0], np.float32)
        biases = [qkv.get((block, c, "bias"), zeros) for c in "qkv"]
        out[f"blocks.{block}.attn.qkv.weight"] = np.concatenate(weights, axis=0)
        out[f"blocks.{block}.attn.qkv.bias"] = np.concatenate(biases, axis=0)
    return out


def convert_diffusers_state_dict(
    state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None
) -> tuple[Params, dict[str, Any]]:
    """A `DiTTransformer2DModel` state dict (+ its config, as in config.json) -> (params, kwargs).

    Without a config the diffusers defaults apply (norm_eps 1e-5), the head count comes from
    the DiT presets and the input size from `sample_size` only if given.
    """
    settings = dict(config or {})  # diffusers' config.json, not ours
    for key, want in (
        ("norm_type", "ada_norm_zero"),
        ("activation_fn", "gelu-approximate"),
        ("norm_elementwise_affine", False),
    ):
        if settings.get(key, want) != want:
            raise CheckpointError(f"diffusers DiT with {key}={settings[key]!r} is not supported")
    params, kwargs = convert_facebook_state_dict(
        diffusers_to_facebook(state_dict),
        num_heads=settings.get("num_attention_heads"),
        input_size=settings.get("sample_size"),
        source="diffusers state dict",
        t_freq_shift=1.0,
        mlp_norm_eps=float(settings.get("norm_eps", 1e-5)),
    )
    n = settings.get("num_embeds_ada_norm")
    if n is not None and n != kwargs["num_classes"]:
        raise CheckpointError(
            f"diffusers DiT: num_embeds_ada_norm={n} but the label table has "
            f"{kwargs['num_classes'] + 1} rows (expected num_classes + 1, the null label)"
        )
    return params, kwargs


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f'PyTorch is needed to read PyTorch checkpoints ({e}); pip install -e ".[bench]"'
        ) from None
    return torch


def from_diffusers(
    model_or_state_dict: Any, config: Mapping[str, Any] | None = None
) -> tuple[Params, dict[str, Any]]:
    """A diffusers `DiTTransformer2DModel` (its config is read) or its state dict -> (params, kwargs)."""
    if hasattr(model_or_state_dict, "state_dict"):
        _import_torch()
        if config is None:
            config = dict(model_or_state_dict.config)
        model_or_state_dict = model_or_state_dict.state_dict()
    return convert_diffusers_state_dict(model_or_state_dict, config)


def load_state_dict(path: str) -> Mapping[str, Any]:
    """A PyTorch checkpoint file's state dict, read with `torch.load(weights_only=True)`: only
    tensors and plain containers are unpickled, never code. Memory-mapped where the file allows
    (torch's zip format). Wrappers are unwrapped: Lightning's {"state_dict"} (taming), DiT
    training files' {"ema"} (preferred) or {"model"}. One-line CheckpointErrors otherwise."""
    torch = _import_torch()
    try:
        try:  # memory-mapped: tensors are paged in as they are read
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files saved before torch 1.6's zip format cannot be mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - pickle/zip/torch errors alike: a bad user file
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path}: refused to unpickle {refused.group(1)} (only tensors are loaded, "
                "torch.load weights_only=True); re-save just the model's state dict"
            ) from None
        reason = f"{type(e).__name__}: {one_line(e)}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "ema", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def load_facebook_checkpoint(
    path: str, *, num_heads: int | None = None, input_size: int | None = None
) -> tuple[Params, dict[str, Any]]:
    """A facebookresearch/DiT `.pt` file -> (params, kwargs). Only tensors are unpickled.

    Training checkpoints ({"model", "ema", "opt", "args"}) hold an argparse Namespace, which
    weights_only refuses: re-save their "ema" state dict alone. A dict with an "ema" (preferred)
    or "model" state dict is unwrapped.
    """
    return convert_facebook_state_dict(
        load_state_dict(path), num_heads=num_heads, input_size=input_size, source=str(path)
    )
