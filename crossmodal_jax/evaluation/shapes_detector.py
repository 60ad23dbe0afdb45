"""The judge of generated shapes-world images: a small CNN trained on the project's own renders
(never on generated images) that reads off a 32×32 scene what a caption states.

It is trained once per machine and cached beside the datasets (`<data dir>/shapes_detector/`),
on scenes drawn by `data.shapes.scene` with its own seed: one-object and two-object scenes of every
(colour, shape) pair, the held-out ones included, so that it judges `novel` prompts as well as
`test` ones. Its heads read the scene in the judge's canonical form (shapes_judge.canonical):

  count; for one object its colour, shape, size and position; for two, the colour and shape of
  the left (or upper) object, those of the other, and the axis of the relation
  (`left of` or `above`).

Inputs get a little Gaussian pixel noise in training, so that the near-miss pixels of a generator
do not flip its reading; `metrics.json` reports its accuracy on the real test and novel renders
(`<split>_real_attribute_accuracy/all`), the ceiling of the generated images' score.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from functools import lru_cache
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from crossmodal_jax.data import shapes, sources
from crossmodal_jax.evaluation import shapes_judge

log = logging.getLogger("crossmodal_jax")

# Bump when the network, its labels or its training data change: the cache is keyed by it.
VERSION = "1"
_COLORS = tuple(shapes.COLORS)
_POSITIONS = tuple(shapes.POSITIONS.values())
_AXES = ("left of", "above")  # canonical relations (shapes_judge.canonical)
HEADS = {
    "count": 2,
    "color": len(_COLORS),
    "shape": len(shapes.SHAPES),
    "color2": len(_COLORS),
    "shape2": len(shapes.SHAPES),
    "size": len(shapes.SIZES),
    "position": len(_POSITIONS),
    "axis": len(_AXES),
}
_SEED = 7_2026  # of the detector's own renders; part of its definition, like VERSION
_NOISE = 0.08  # largest std of the training pixel noise, in [-1, 1] units
_BATCH = 128


class DetectorNet(nn.Module):
    """Four 3×3 convs (two of stride 2) and a hidden layer; one linear head per attribute."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        for width, stride in ((16, 1), (32, 2), (32, 1), (64, 2)):
            x = nn.relu(nn.Conv(width, (3, 3), strides=stride)(x))
        hidden = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return hidden, {k: nn.Dense(n, name=k)(hidden) for k, n in HEADS.items()}


def caption_labels(caption: str) -> dict[str, int]:
    """Head targets of a scene's caption (canonical form); -1 for a head the scene has none of."""
    p = shapes_judge.canonical(shapes_judge.parse(caption))
    two = p["count"] == 2
    return {
        "count": p["count"] - 1,
        "color": _COLORS.index(p["color"][0]),
        "shape": shapes.SHAPES.index(p["shape"][0]),
        "color2": _COLORS.index(p["color"][1]) if two else -1,
        "shape2": shapes.SHAPES.index(p["shape"][1]) if two else -1,
        "size": -1 if two else tuple(shapes.SIZES).index(p["size"]),
        "position": -1 if two else _POSITIONS.index(p["position"]),
        "axis": _AXES.index(p["relation"]) if two else -1,
    }


def reading(heads: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Per image, the attributes the heads' arg-maxes state, as `shapes_judge.parse` gives them."""
    ids = {k: np.argmax(v, axis=-1) for k, v in heads.items()}
    out = []
    for i in range(len(ids["count"])):
        color, shape = _COLORS[ids["color"][i]], shapes.SHAPES[ids["shape"][i]]
        if ids["count"][i] == 0:
            size = tuple(shapes.SIZES)[ids["size"][i]]
            position = _POSITIONS[ids["position"][i]]
            out.append(
                {
                    "count": 1,
                    "color": (color,),
                    "shape": (shape,),
                    "size": size,
                    "position": position,
                }
            )
        else:
            color2, shape2 = _COLORS[ids["color2"][i]], shapes.SHAPES[ids["shape2"][i]]
            relation = _AXES[ids["axis"][i]]
            out.append(
                {
                    "count": 2,
                    "color": (color, color2),
                    "shape": (shape, shape2),
                    "relation": relation,
                }
            )
    return out


def render_training_set(count: int, seed: int = _SEED) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`count` scenes of every pair (half of them hold a held-out one): images in [-1, 1] and
    their head targets."""
    images, labels = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        found = shapes.scene(rng, novel=bool(i % 2))
        images.append(shapes.render(found["objects"]))
        labels.append(caption_labels(found["caption"]))
    x = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return x, {k: np.asarray([y[k] for y in labels], np.int32) for k in HEADS}


def _loss(params, model, x, y):
    _, heads = model.apply(params, x)
    total = 0.0
    for k, logits in heads.items():
        valid = y[k] >= 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y[k], 0))
        total += jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)
    return total


def train(examples: int, steps: int, seed: int = 0) -> dict:
    """Detector parameters trained with Adam on `examples` fresh renders for `steps` steps."""
    model = DetectorNet()
    x, y = render_training_set(examples)
    params = model.init(jax.random.key(seed), x[:1])
    schedule = optax.cosine_decay_schedule(2e-3, steps, alpha=0.05)
    opt = optax.adam(schedule)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, key, x, y):
        k_idx, k_noise, k_scale = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (_BATCH,), 0, len(x))
        sigma = jax.random.uniform(k_scale, (_BATCH, 1, 1, 1), maxval=_NOISE)
        xb = x[idx] + sigma * jax.random.normal(k_noise, (_BATCH, *x.shape[1:]))
        yb = {k: v[idx] for k, v in y.items()}
        loss, grads = jax.value_and_grad(_loss)(params, model, xb, yb)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(seed + 1)
    x, y = jnp.asarray(x), {k: jnp.asarray(v) for k, v in y.items()}
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), x, y)
    log.info("shapes detector: %d steps on %d renders, last loss %.4f", steps, examples, loss)
    return params


def _cache_path(data_dir: str | None, examples: int, steps: int) -> Path:
    root = Path(data_dir).expanduser() if data_dir else sources.default_data_dir()
    return root / "shapes_detector" / f"v{VERSION}-{examples}x{steps}" / "params.msgpack"


@lru_cache(maxsize=2)
def load_or_train(data_dir: str | None, examples: int, steps: int) -> dict:
    """The cached detector of these settings, trained (and cached) on first use. Concurrent
    builders each write their own file; the last rename wins, and all are the same weights."""
    path = _cache_path(data_dir, examples, steps)
    template = DetectorNet().init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    if path.is_file():
        return serialization.from_bytes(template, path.read_bytes())
    start = time.perf_counter()
    params = train(examples, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    tmp.write_bytes(serialization.to_bytes(params))
    os.replace(tmp, path)
    log.info("shapes detector trained in %.1f s, cached in %s", time.perf_counter() - start, path)
    return params


@jax.jit
def _apply(params, images):
    return DetectorNet().apply(params, images)


def read_images(params: dict, images: np.ndarray) -> tuple[np.ndarray, list[dict[str, object]]]:
    """(hidden features [N, 128], what each image [N, 32, 32, 3] in [-1, 1] shows)."""
    feats, readings = [], []
    for start in range(0, len(images), 256):
        chunk = np.asarray(images[start : start + 256], np.float32)
        hidden, heads = _apply(params, chunk)
        feats.append(np.asarray(hidden))
        readings += reading({k: np.asarray(v) for k, v in heads.items()})
    return np.concatenate(feats), readings
