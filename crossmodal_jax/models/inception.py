"""InceptionV3 features for FID and Inception Score: pytorch-fid's network in Flax linen.

The network is pytorch-fid's `fid_inception_v3()` (mseitzer/pytorch-fid, `src/pytorch_fid/
inception.py`): torchvision's Inception3 with num_classes=1008, no aux classifier, and the
TF-FID patches `FIDInceptionA` (Mixed_5b-d), `FIDInceptionC` (Mixed_6b-e), `FIDInceptionE_1`
(Mixed_7b) and `FIDInceptionE_2` (Mixed_7c): their pool branches average with
count_include_pad=False (TensorFlow's pooling), except Mixed_7c's, which max-pools.

Weights: the file pytorch-fid downloads, `pt_inception-2015-12-05-6726825d.pth` (its GitHub
release `fid_weights`, a port of TensorFlow's inception-2015-12-05 graph used by the original
FID code), or its `.npz` conversion; nothing is downloaded here.
`models/inception_weights.load_inception_params(path)` reads it. Flax module names equal the PyTorch
attribute names (`Mixed_5b.branch1x1.conv.weight` -> params["Mixed_5b"]["branch1x1"]["conv"]).

Outputs: the 2048-d "pool3" features (global average of Mixed_7c, used by FID) and the 1008
logits of `fc` (used by the Inception Score). By default the logits leave out fc's bias, as
the original TF Inception Score code (`softmax/logits/MatMul`) and torch-fidelity's / torchmetrics'
default `logits_unbiased` do; `fc_bias=True` adds it (torchvision's `fc(x)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax.errors import UserError

MIN_SIZE = 75  # the smallest input the stride-2 stages leave at least 1x1
NUM_LOGITS = 1008
POOL_DIM = 2048
_HIGHEST = jax.lax.Precision.HIGHEST  # FID is a reference number: no TF32/bf16 passes on GPU


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) + BatchNorm(eps=1e-3, running stats) + ReLU."""

    features: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0  # symmetric, per (H, W), as torch's Conv2d padding

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel),
            strides=self.stride,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=_HIGHEST,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False): TF's SAME average."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b/c/d)."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision InceptionB (Mixed_6a): stride-2 reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b/c/d/e): factorised 1x7 / 7x1 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision InceptionD (Mixed_7a): stride-2 reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (Mixed_7b, pool="avg") / FIDInceptionE_2 (Mixed_7c, pool="max")."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "max":  # pytorch-fid: "likely an error" of the TF graph, kept for FID
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FC(nn.Module):
    """torch Linear(2048, 1008); returns x @ W^T, plus the bias only when `with_bias`."""

    features: int = NUM_LOGITS
    with_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.dot(x, kernel, precision=_HIGHEST)
        return y + bias if self.with_bias else y


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3. x: f32[N, H, W, 3] in [-1, 1], H, W >= 75 (299 for FID).

    Returns (pool3 f32[N, 2048], logits f32[N, 1008]).
    """

    fc_bias: bool = False

    @nn.compact
    def __call__(self, x):
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d(1); dropout is off at inference
        return pool, FC(with_bias=self.fc_bias, name="fc")(pool)


def resize_images(images: jax.Array, size: int) -> jax.Array:
    """[N, H, W, C] -> [N, size, size, C]: F.interpolate(bilinear, align_corners=False), no antialias."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (n, size, size, c), "bilinear", antialias=False)


def features(
    variables: Mapping[str, Any], images: jax.Array, *, resize_to: int = 299, fc_bias: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Images f32[N, H, W, 3 or 1] in [-1, 1] -> (pool3 [N, 2048], logits [N, 1008]).

    Resized to resize_to x resize_to as pytorch-fid does (299; tests use less, >= 75); a single
    channel is repeated to RGB. Traceable: `inception_outputs` jits and batches it.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = resize_images(x, resize_to)
    return InceptionV3(fc_bias=fc_bias).apply(variables, x)


_jit_features = jax.jit(features, static_argnames=("resize_to", "fc_bias"))


def inception_outputs(
    variables: Mapping[str, Any],
    images_m1p1: Any,
    *,
    batch_size: int = 50,
    resize_to: int = 299,
    fc_bias: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W, 3 or 1] in [-1, 1] (numpy or jax) -> (pool3 f64[N, 2048], logits f64[N, 1008]).

    Runs in batches of min(batch_size, N) with the last one zero-padded, so one compile per
    (image shape, batch size); only one batch is converted to float32 and sent at a time.
    """
    shape = tuple(np.shape(images_m1p1))
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise UserError(f"Inception expects images [N, H, W, 3 or 1], got shape {shape}")
    if resize_to < MIN_SIZE:
        raise UserError(f"Inception resize_to={resize_to} is below the minimum {MIN_SIZE}")
    n = shape[0]
    if n == 0:
        return np.zeros((0, POOL_DIM)), np.zeros((0, NUM_LOGITS))
    bs = max(1, min(int(batch_size), n))
    variables = jax.tree.map(jnp.asarray, variables)
    pools, logits = [], []
    for start in range(0, n, bs):
        batch = np.asarray(images_m1p1[start : start + bs], np.float32)
        real = batch.shape[0]
        if real < bs:
            batch = np.concatenate([batch, np.zeros((bs - real, *shape[1:]), np.float32)])
        p, lg = jax.device_get(
            _jit_features(variables, batch, resize_to=resize_to, fc_bias=fc_bias)
        )
        pools.append(np.asarray(p[:real], np.float64))
        logits.append(np.asarray(lg[:real], np.float64))
    return np.concatenate(pools), np.concatenate(logits)
