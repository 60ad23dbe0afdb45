"""Where diffusers and taming-transformers store the parameters of the shared autoencoder
(autoencoder.py): one `Layout` of name patterns per library, and the recipe that reads an
`Encoder`'s or `Decoder`'s parameters from a checkpoint in either layout. Every recipe leaf is a
pure permutation, so the encoder and decoder read slice by slice on a mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from crossmodal_jax.pretrained.autoencoder import Decoder, Encoder
from crossmodal_jax.pretrained.reader import Checkpoint
from crossmodal_jax.pretrained.weights import Tensor, conv, norm


@dataclasses.dataclass(frozen=True)
class Layout:
    """Checkpoint names of the encoder/decoder parameters, as format strings.

    `{part}` is "encoder" or "decoder"; `{i}` our level index, `{r}` the same level counted from
    the other end (taming stores decoder levels by resolution, finest first); `{level}` a level's
    prefix; `attn` the names of (norm, q, k, v, out) inside an attention block.
    """

    down: str
    up: str
    res: str
    attn: str
    downsample: str
    upsample: str
    mid_res: tuple[str, str]
    mid_attn: str
    norm_out: str
    shortcut: str
    attn_names: tuple[str, ...]


DIFFUSERS = Layout(
    down="{part}.down_blocks.{i}",
    up="{part}.up_blocks.{i}",
    res="{level}.resnets.{j}",
    attn="{level}.attentions.{j}",
    downsample="{level}.downsamplers.0.conv",
    upsample="{level}.upsamplers.0.conv",
    mid_res=("{part}.mid_block.resnets.0", "{part}.mid_block.resnets.1"),
    mid_attn="{part}.mid_block.attentions.0",
    norm_out="{part}.conv_norm_out",
    shortcut="conv_shortcut",
    attn_names=("group_norm", "to_q", "to_k", "to_v", "to_out.0"),
)
# diffusers < 0.14 saved attention as query/key/value/proj_attn; many hub VAEs still are.
DIFFUSERS_OLD_ATTN = ("group_norm", "query", "key", "value", "proj_attn")

TAMING = Layout(
    down="{part}.down.{i}",
    up="{part}.up.{r}",
    res="{level}.block.{j}",
    attn="{level}.attn.{j}",
    downsample="{level}.downsample.conv",
    upsample="{level}.upsample.conv",
    mid_res=("{part}.mid.block_1", "{part}.mid.block_2"),
    mid_attn="{part}.mid.attn_1",
    norm_out="{part}.norm_out",
    shortcut="nin_shortcut",
    attn_names=("norm", "q", "k", "v", "proj_out"),
)


def conv_attention(ckpt: Checkpoint) -> bool:
    """Whether the checkpoint's attention projections are 1x1 convs ([C, C, 1, 1]) not Linear."""
    for name in ckpt.names():
        if name.rsplit(".", 2)[-2:] in (["q", "weight"], ["to_q", "weight"], ["query", "weight"]):
            return len(ckpt.shape(name)) == 4
    return False


def _resnet(prefix: str, layout: Layout, c_in: int, c_out: int) -> dict[str, Any]:
    out = {
        "norm1": norm(f"{prefix}.norm1"),
        "conv1": conv(f"{prefix}.conv1"),
        "norm2": norm(f"{prefix}.norm2"),
        "conv2": conv(f"{prefix}.conv2"),
    }
    if c_in != c_out:
        out["shortcut"] = conv(f"{prefix}.{layout.shortcut}")
    return out


def _attention(prefix: str, layout: Layout, ckpt: Checkpoint) -> dict[str, Any]:
    names = layout.attn_names
    if layout is DIFFUSERS and f"{prefix}.to_q.weight" not in ckpt:
        names = DIFFUSERS_OLD_ATTN
    out = {"norm": norm(f"{prefix}.{names[0]}")}
    for ours, theirs in zip(("q", "k", "v", "proj_out"), names[1:], strict=True):
        weight = f"{prefix}.{theirs}.weight"
        ndim = len(ckpt.shape(weight)) if weight in ckpt else 2
        out[ours] = {
            "kernel": Tensor(weight, (1, 0) if ndim == 2 else (2, 3, 1, 0)),
            "bias": Tensor(f"{prefix}.{theirs}.bias"),
        }
    return out


def _mid_recipe(part: str, layout: Layout, c: int, attention: bool, ckpt: Checkpoint) -> dict:
    out = {
        f"mid_res_{j}": _resnet(layout.mid_res[j].format(part=part), layout, c, c) for j in (0, 1)
    }
    if attention:
        out["mid_attn"] = _attention(layout.mid_attn.format(part=part), layout, ckpt)
    return out


def recipe(layout: Layout, module: Encoder | Decoder, ckpt: Checkpoint) -> dict[str, Any]:
    """The recipe of an `Encoder`'s or `Decoder`'s params from a checkpoint stored in `layout`."""
    encoder = isinstance(module, Encoder)
    part, tag = ("encoder", "down") if encoder else ("decoder", "up")
    widths = list(module.channels) if encoder else list(reversed(module.channels))
    out: dict[str, Any] = {"conv_in": conv(f"{part}.conv_in")}
    out |= _mid_recipe(part, layout, module.channels[-1], module.mid_attention, ckpt)
    c_in, n = widths[0], len(widths)
    for i, c in enumerate(widths):
        level = (layout.down if encoder else layout.up).format(part=part, i=i, r=n - 1 - i)
        for j in range(module.layers):
            res = layout.res.format(level=level, j=j)
            out[f"{tag}_{i}_res_{j}"] = _resnet(res, layout, c_in, c)
            c_in = c
            if module.attention[i]:
                attn = layout.attn.format(level=level, j=j)
                out[f"{tag}_{i}_attn_{j}"] = _attention(attn, layout, ckpt)
        if i < n - 1:
            resample = layout.downsample if encoder else layout.upsample
            out[f"{tag}_{i}_{'downsample' if encoder else 'upsample'}"] = conv(
                resample.format(level=level)
            )
    out["norm_out"] = norm(layout.norm_out.format(part=part))
    out["conv_out"] = conv(f"{part}.conv_out")
    return out


def halves(s: dict[str, Any], module: Any, ckpt: Checkpoint) -> dict[str, Any]:
    """The recipes of a VAE's or VQGAN's `encoder` and `decoder` in the layout its settings name."""
    layout = DIFFUSERS if s["layout"] == "diffusers" else TAMING
    return {
        "encoder": recipe(layout, module.encoder, ckpt),
        "decoder": recipe(layout, module.decoder, ckpt),
    }
