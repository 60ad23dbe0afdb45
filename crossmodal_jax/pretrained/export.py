"""Our class-label DiT -> a diffusers `DiTTransformer2DModel` folder (the inverse of
`models/torch_convert.py`'s `from_diffusers`).

    from crossmodal_jax.pretrained.export import to_diffusers_dit
    to_diffusers_dit(params, dit_kwargs, "out/dit")  # config.json + diffusion_pytorch_model.safetensors
    diffusers.DiTTransformer2DModel.from_pretrained("out/dit")

The weights are written with `safetensors.numpy`, so exporting needs neither torch nor diffusers.
Only what diffusers' model can compute is exported; anything else is refused in one line before
a file is touched, since a folder that loads but computes something else is worse than none:
- class labels only (`num_classes > 0`): diffusers' DiT has no caption/condition-token path;
- `t_freq_shift=1.0` (`Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`),
  `pos_embed_col_first=True` (its 2-D sin-cos table puts the column first), `mlp_ratio=4`
  (`FeedForward`'s fixed mult), square inputs (`sample_size` is one int), plain adaLN-Zero
  blocks (`conditioning="in_context"`) and no joint-model parts;
- `mlp_norm_eps` is free: it is diffusers' `norm_eps` (the pre-MLP LayerNorm's eps).
diffusers gives every block its own copy of the timestep/label embedder (`norm1.emb`) and reads
the final layer's conditioning from block 0's; ours is shared, so every block gets the same
arrays. The folder is written under a temporary name and renamed into place: an interrupted or
refused export leaves no half-written folder behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from crossmodal_jax.errors import UserError, one_line
from crossmodal_jax.models.dit import DiT
from crossmodal_jax.training.sharding import strip_boxes

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# A diffusers release that has DiTTransformer2DModel; diffusers records it, acts on nothing.
DIFFUSERS_VERSION = "0.30.0"
# (diffusion process, target) of the workdirs whose generator is a latent DiT.
LATENT = (("gaussian", "image"), ("flow", "image"))
# DiT fields a class-label DiT's weights do not depend on: how it computes (dtype, remat,
# attention kernel) and the sizes of the caption embedder that class-label mode never builds.
_COMPUTE_ONLY = ("dtype", "remat", "attention", "cond_vocab_size", "cond_len", "cond_feature_dim")

Params = dict[str, Any]


def dit_settings(dit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """DiT's defaults updated with `dit_kwargs`; unknown keys are refused (a typo would
    otherwise export a default)."""
    fields = {f.name: f for f in dataclasses.fields(DiT) if f.name not in ("parent", "name")}
    unknown = sorted(set(dit_kwargs) - set(fields))
    if unknown:
        raise UserError(f"unknown DiT setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    settings = {n: f.default for n, f in fields.items() if f.default is not dataclasses.MISSING}
    settings.update(dit_kwargs)
    for required in ("input_size", "in_channels"):
        if required not in settings:
            raise UserError(f"DiT settings lack {required!r}")
    return settings


def check_exportable(dit_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The complete DiT settings, or a one-line UserError naming the first setting diffusers'
    DiTTransformer2DModel cannot represent and what it needs."""
    s = dit_settings(dit_kwargs)
    d, heads, p = s["hidden_size"], s["num_heads"], s["patch_size"]
    h, w = tuple(s["input_size"])
    need = "diffusers' DiTTransformer2DModel"
    refusals = [
        (
            s["num_classes"] <= 0,
            f"caption-conditioned DiT (num_classes={s['num_classes']}): {need} is conditioned "
            "on class labels only; export a class-label DiT (num_classes > 0)",
        ),
        (
            s["shared_blocks"] is not None or s["shared_t_embed"] is not None or s["task_vector"],
            f"a joint model's view (shared blocks or a task vector): {need} is one standalone "
            "model; export a DiT trained on its own",
        ),
        (
            s["conditioning"] != "in_context",
            f"DiT with conditioning={s['conditioning']!r}: {need} has plain adaLN-Zero blocks "
            "(conditioning='in_context')",
        ),
        (
            float(s["t_freq_shift"]) != 1.0,
            f"DiT with t_freq_shift={s['t_freq_shift']}: {need} computes timestep frequencies "
            "with downscale_freq_shift=1; train with t_freq_shift=1.0 to export",
        ),
        (
            not s["pos_embed_col_first"],
            f"DiT with pos_embed_col_first=False: {need}'s 2-D sin-cos position table puts the "
            "column first; train with pos_embed_col_first=True to export",
        ),
        (
            h != w,
            f"DiT with input_size={(h, w)}: {need} takes square inputs (one sample_size)",
        ),
        (
            h % p or d % heads or d % 4,
            f"DiT with input_size={h}, patch_size={p}, hidden_size={d}, num_heads={heads}: "
            "the input must be divisible by the patch, the hidden size by the heads and by 4",
        ),
        (
            int(d * s["mlp_ratio"]) != 4 * d,
            f"DiT with mlp_ratio={s['mlp_ratio']}: {need}'s feed-forward is 4x the hidden "
            "size; train with mlp_ratio=4.0 to export",
        ),
    ]
    for refused, message in refusals:
        if refused:
            raise UserError(message)
    return s


def diffusers_config(s: dict[str, Any]) -> dict[str, Any]:
    """config.json of the DiTTransformer2DModel that computes DiT(**s) (checked settings)."""
    d, heads = s["hidden_size"], s["num_heads"]
    return {
        "_class_name": "DiTTransformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_attention_heads": int(heads),
        "attention_head_dim": int(d // heads),
        "in_channels": int(s["in_channels"]),
        "out_channels": int(s["out_channels"] or s["in_channels"]),
        "num_layers": int(s["depth"]),
        "dropout": 0.0,
        "norm_num_groups": 32,  # unused by DiT's blocks, but a config key of the model
        "attention_bias": True,  # ours has q/k/v biases
        "sample_size": int(s["input_size"][0]),
        "patch_size": int(s["patch_size"]),
        "activation_fn": "gelu-approximate",  # ours: tanh GELU
        "num_embeds_ada_norm": int(s["num_classes"]),
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": float(s["mlp_norm_eps"]),
    }


def _checked_params(params: Params, s: dict[str, Any]) -> Params:
    """Host float32 arrays of `params`, whose names and shapes must be DiT(**s)'s exactly."""
    params = strip_boxes(params)
    if set(params) == {"params"}:  # a whole variables dict
        params = params["params"]
    h, w = s["input_size"]
    init_args = (
        jax.ShapeDtypeStruct((1, h, w, s["in_channels"]), np.float32),
        jax.ShapeDtypeStruct((1,), np.int32),
        jax.ShapeDtypeStruct((1,), np.int32),
    )
    abstract = jax.eval_shape(lambda *a: DiT(**s).init(jax.random.key(0), *a), *init_args)
    want = strip_boxes(abstract["params"])
    want_shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(want)}
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree.leaves_with_path(params)}
    for key in sorted(set(want_shapes) | set(got)):
        if key not in got or key not in want_shapes:
            what = "lack" if key not in got else "have an unexpected"
            raise UserError(f"params {what} {key} for DiT(**dit_kwargs)")
        if tuple(got[key].shape) != tuple(want_shapes[key]):
            raise UserError(
                f"params{key} has shape {tuple(got[key].shape)}, DiT(**dit_kwargs) needs "
                f"{tuple(want_shapes[key])}"
            )
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


def diffusers_state_dict(params: Params, s: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our (checked, numpy) params -> a DiTTransformer2DModel state dict (torch layouts)."""

    def linear(p: Params, name: str) -> dict[str, np.ndarray]:
        """flax Dense (kernel [in, out]) -> torch Linear (weight [out, in])."""
        return {f"{name}.weight": p["kernel"].T, f"{name}.bias": p["bias"]}

    d, p = s["hidden_size"], s["patch_size"]
    c = s["in_channels"]
    kernel = params["patch_embed"]["proj"]["kernel"]  # [(p1, p2, c), D], patchify's order
    out = {
        "pos_embed.proj.weight": kernel.reshape(p, p, c, d).transpose(3, 2, 0, 1),
        "pos_embed.proj.bias": params["patch_embed"]["proj"]["bias"],
        **linear(params["final_layer"]["adaLN"], "proj_out_1"),
        **linear(params["final_layer"]["linear"], "proj_out_2"),
    }
    emb = {
        **linear(params["t_embed"]["fc1"], "timestep_embedder.linear_1"),
        **linear(params["t_embed"]["fc2"], "timestep_embedder.linear_2"),
        "class_embedder.embedding_table.weight": params["label_embed"]["table"]["embedding"],
    }
    for i in range(s["depth"]):
        blk, pre = params[f"blocks_{i}"], f"transformer_blocks.{i}"
        out.update({f"{pre}.norm1.emb.{k}": v for k, v in emb.items()})  # every block a copy
        out.update(linear(blk["adaLN"], f"{pre}.norm1.linear"))
        attn = blk["attn"]
        for ours, theirs in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
            # [D, heads, head_dim] -> [D, D]: torch's rows are (heads, head_dim) in that order.
            out[f"{pre}.attn1.{theirs}.weight"] = attn[ours]["kernel"].reshape(d, d).T
            out[f"{pre}.attn1.{theirs}.bias"] = attn[ours]["bias"].reshape(d)
        out[f"{pre}.attn1.to_out.0.weight"] = attn["out"]["kernel"].reshape(d, d).T
        out[f"{pre}.attn1.to_out.0.bias"] = attn["out"]["bias"]
        out.update(linear(blk["mlp"]["fc1"], f"{pre}.ff.net.0.proj"))
        out.update(linear(blk["mlp"]["fc2"], f"{pre}.ff.net.2"))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _check_target(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder}: already exists and is not empty; export into a new folder")


def to_diffusers_dit(params: Params, dit_kwargs: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write `DiT(**dit_kwargs)` with `params` as a diffusers DiTTransformer2DModel folder.

    `from_pretrained(folder)` then computes our `apply` (channels first instead of last). The
    settings, params and target are all checked before anything is written; `folder` must not
    exist or be empty. Returns the folder's path.
    """
    from safetensors.numpy import save_file

    s = check_exportable(dit_kwargs)
    state_dict = diffusers_state_dict(_checked_params(params, s), s)
    folder = Path(folder)
    _check_target(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.export-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: the folder keeps the umask's mode, not 0700
    try:
        with open(tmp / "config.json", "w") as f:
            json.dump(diffusers_config(s), f, indent=2)
            f.write("\n")
        save_file(state_dict, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        os.replace(tmp, folder)  # atomic; replaces an empty folder (POSIX)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def export_workdir(workdir: str, folder: str | os.PathLike) -> Path:
    """The generator of a trained workdir (its EMA weights, which sampling uses) as a diffusers
    folder, if it is a class-label DiT; otherwise one line saying why not, before anything is
    restored. Restores as crossmodal_jax.pipeline does a single-task workdir."""
    import flax.linen as nn

    from crossmodal_jax import tasks
    from crossmodal_jax.config.workdir import load_resolved_config
    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages import builders
    from crossmodal_jax.stages.generators import generator_stage
    from crossmodal_jax.stages.tokenizer_source import attach_tokenizer
    from crossmodal_jax.training.stage import restore_stage_state

    config = load_resolved_config(workdir)
    if config.task == tasks.JOINT:
        raise UserError(
            f"{workdir}: a joint workdir's generator is shared by its tasks; diffusers' "
            "DiTTransformer2DModel is one standalone class-label DiT"
        )
    if (config.generator.diffusion.process, tasks.get_task(config.task).target) not in LATENT:
        raise UserError(
            f"{workdir}: its generator is a TokenDiT over token ids (masked diffusion) or text; "
            "diffusers' DiTTransformer2DModel is a class-label DiT over image latents"
        )
    _check_target(Path(folder))
    exp = local_experiment(config, workdir)
    model = builders.build_dit(exp)
    skip = ("parent", "name", *_COMPUTE_ONLY)
    kwargs = {f.name: getattr(model, f.name) for f in dataclasses.fields(DiT) if f.name not in skip}
    check_exportable(kwargs)  # before the (large) restore
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        attach_tokenizer(exp)
        try:
            state = restore_stage_state(generator_stage(exp), exp.ctx)
        except FileNotFoundError as e:
            raise UserError(one_line(e)) from e
        return to_diffusers_dit(state.ema_params, kwargs, folder)
