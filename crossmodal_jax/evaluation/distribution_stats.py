"""FID and Inception Score of N samples evaluated across devices and processes, with no host ever
holding all images or all features.

Every process streams its share of the samples through the generator and the feature network
(data-parallel over the mesh) and keeps only host-side float64 sums: the moments of the pool
features (`Moments`) and per-split Inception Score sums (`ScoreSums`). One all-gather at the end
(`merge_across_processes`) sums them in process order, so every process holds the same merged
statistics, equal to the single-pass ones up to float64 summation order.

Dealing (`deal`): global batch b holds samples b·B .. b·B + B − 1 in order, whatever the process
count; a process provides the contiguous rows of it that its devices hold (as
`jax.make_array_from_process_local_data` lays them out), and the last batch is padded with rows
that are dropped before accumulation. Sample i's condition is a function of i alone (class
i % num_classes, caption i mod the captions), so the generator sees the same global batches on 1
or 64 processes; a generator keyed per sample (fold_in(key, i)) also gives the same set at any
batch size.

Reference statistics are an .npz with `mu` [D] and `sigma` [D, D], the layout of ADM's
(openai/guided-diffusion) `VIRTUAL_imagenet256_labeled.npz`; `write_reference` writes that layout.

Precision/recall (Kynkäänniemi et al. 2019) is not computed: its k-nearest-neighbour radii need
every feature vector of both sets at once, which is not a streaming statistic.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy.special import logsumexp, xlogy

from crossmodal_jax.errors import UserError, one_line
from crossmodal_jax.evaluation.image_metrics import frechet_distance
from crossmodal_jax.training import sharding

# ADM's evaluator (and the Inception Score papers) score splits of 5,000: 10 splits at 50K.
SCORE_SPLIT_SIZE = 5000


@dataclasses.dataclass
class Moments:
    """Streaming count, sum and sum of outer products of features [n, D], in float64, about a
    `shift`. cov = (Σyyᵀ − ΣyΣyᵀ/n)/(n − 1) with y = x − shift cancels catastrophically when
    |mean| ≫ std: raw sums lose (mean/std)² × 1e-16 of relative precision, 1e-4 at a ratio of
    10⁶. The shift is the first batch's mean, so y is centred to about std/√batch; merging
    re-centres the other side's sums exactly, so no shift needs to be agreed between processes."""

    count: int
    shift: np.ndarray  # [D]
    sum: np.ndarray  # Σ y [D]
    outer: np.ndarray  # Σ y yᵀ [D, D]

    @classmethod
    def empty(cls, dim: int) -> Moments:
        return cls(0, np.zeros(dim), np.zeros(dim), np.zeros((dim, dim)))

    @property
    def dim(self) -> int:
        return len(self.shift)

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64).reshape(-1, self.dim)
        if not len(x):
            return
        if self.count == 0:
            self.shift = x.mean(axis=0)
        y = x - self.shift
        self.count += len(x)
        self.sum += y.sum(axis=0)
        self.outer += y.T @ y

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets, about this one's shift (the other's when this is empty)."""
        if self.count == 0 or other.count == 0:
            return dataclasses.replace(self if other.count == 0 else other)
        d = other.shift - self.shift  # x − s₁ = y₂ + d
        s2, n2 = other.sum, other.count
        outer2 = other.outer + np.outer(d, s2) + np.outer(s2, d) + n2 * np.outer(d, d)
        return Moments(self.count + n2, self.shift, self.sum + s2 + n2 * d, self.outer + outer2)

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """np.mean(x, 0) and the unbiased np.cov(x, rowvar=False) of every feature added."""
        if self.count < 2:
            raise UserError(f"a covariance needs at least 2 samples, got {self.count}")
        mean_y = self.sum / self.count
        cov = (self.outer - np.outer(self.sum, mean_y)) / (self.count - 1)
        return self.shift + mean_y, (cov + cov.T) / 2.0


@dataclasses.dataclass
class ScoreSums:
    """Inception Score in one pass. E_x KL(p(y|x) ‖ p̄) = mean_x Σ_y p log p − Σ_y p̄ log p̄ with
    p̄ = mean_x p(y|x), so each split needs only Σ_x Σ_y p log p, Σ_x p(y|x) and its count; split
    s holds the global indices np.array_split(range(N), splits)[s], as image_metrics'."""

    starts: np.ndarray  # [S] first global index of each split
    plogp: np.ndarray  # [S]
    p_sum: np.ndarray  # [S, K]
    count: np.ndarray  # [S] (float64: gathered with the rest)

    @classmethod
    def empty(cls, num_samples: int, splits: int, num_classes: int) -> ScoreSums:
        if not 1 <= splits <= num_samples:
            raise UserError(f"{splits} Inception Score splits for {num_samples} samples")
        starts = [c[0] for c in np.array_split(np.arange(num_samples), splits)]
        return cls(
            np.asarray(starts), np.zeros(splits), np.zeros((splits, num_classes)), np.zeros(splits)
        )

    def add(self, logits: np.ndarray, indices: np.ndarray) -> None:
        logits = np.asarray(logits, np.float64)
        log_p = logits - logsumexp(logits, axis=1, keepdims=True)
        p = np.exp(log_p)
        split = np.searchsorted(self.starts, np.asarray(indices), side="right") - 1
        np.add.at(self.plogp, split, np.sum(p * log_p, axis=1))
        np.add.at(self.p_sum, split, p)
        np.add.at(self.count, split, 1.0)

    def merge(self, other: ScoreSums) -> ScoreSums:
        sums = (self.plogp + other.plogp, self.p_sum + other.p_sum, self.count + other.count)
        return ScoreSums(self.starts, *sums)

    def score(self) -> tuple[float, float]:
        """(mean, std) over the splits of exp(E_x KL), as image_metrics.inception_score."""
        n = self.count
        p_bar = self.p_sum / n[:, None]
        kl = self.plogp / n - np.sum(xlogy(p_bar, p_bar), axis=1)  # 0 log 0 = 0
        scores = np.exp(kl)
        return float(np.mean(scores)), float(np.std(scores))


@dataclasses.dataclass
class Statistics:
    moments: Moments
    scores: ScoreSums | None  # None: moments only (metrics_of gives no Inception Score)

    def merge(self, other: Statistics) -> Statistics:
        scores = None if self.scores is None else self.scores.merge(other.scores)
        return Statistics(self.moments.merge(other.moments), scores)

    def _arrays(self) -> list[np.ndarray]:  # what merge_across_processes gathers
        m, s = self.moments, self.scores
        return [np.float64([m.count]), m.shift, m.sum, m.outer, s.plogp, s.p_sum, s.count]

    def _from_arrays(self, a: list[np.ndarray]) -> Statistics:
        moments = Moments(int(round(a[0][0])), a[1], a[2], a[3])
        return Statistics(moments, ScoreSums(self.scores.starts, a[4], a[5], a[6]))


def allgather_float64(x: np.ndarray) -> np.ndarray:
    """[P, *x.shape]: every process's x, exactly. Without x64, jax would cast float64 to float32,
    so the bytes travel as uint32 and are viewed back on the host; one process: x[None]."""
    x = np.ascontiguousarray(x, np.float64)
    if jax.process_count() == 1:
        return x[None]
    words = multihost_utils.process_allgather(x.reshape(-1).view(np.uint32))
    return np.ascontiguousarray(words).view(np.float64).reshape(-1, *x.shape)


def merge_across_processes(stats: Statistics) -> Statistics:
    """Every process's statistics merged in process order, the same on every process. One
    all-gather of P × (D² + …) float64: 32 MiB a process for D = 2048."""
    arrays = stats._arrays()
    flat = np.concatenate([a.reshape(-1) for a in arrays])
    gathered = allgather_float64(flat)
    cuts = np.cumsum([a.size for a in arrays])[:-1]
    per_process = [
        stats._from_arrays(
            [c.reshape(a.shape) for c, a in zip(np.split(row, cuts), arrays, strict=True)]
        )
        for row in gathered
    ]
    merged = per_process[0]
    for other in per_process[1:]:
        merged = merged.merge(other)
    return merged


def replicate(tree, mesh: Mesh):
    """Host arrays (parameters) as global arrays that every device of `mesh` holds whole: what a
    multi-process jit needs beside batch-sharded inputs."""
    where = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(x.shape, where, lambda index: x[index])

    return jax.tree.map(put, tree)


def process_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch that this process's devices hold (the data axes)."""
    where = sharding.batch_sharding(mesh, 1)
    spans = {
        s[0].indices(batch_size)[:2]
        for s in where.addressable_devices_indices_map((batch_size,)).values()
    }
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(f"this process's rows of the batch are not contiguous: {sorted(spans)}")
    return lo, hi


def global_batch_size(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's data-parallel size."""
    dp = sharding.data_parallel_size(mesh)
    return -(-max(1, batch_size) // dp) * dp


def deal(num_samples: int, batch_size: int, mesh: Mesh) -> Iterator[np.ndarray]:
    """This process's global sample indices of each global batch (values ≥ num_samples: padding)."""
    batch = global_batch_size(batch_size, mesh)
    lo, hi = process_rows(mesh, batch)
    for b in range(math.ceil(num_samples / batch)):
        yield b * batch + np.arange(lo, hi)


def local_rows(x, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a global array, read from this process's shards (whatever the sharding)."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)[lo:hi]
    out = np.empty((hi - lo, *x.shape[1:]), x.dtype)
    filled = np.zeros(out.shape, bool)
    for shard in x.addressable_shards:
        start, stop, _ = shard.index[0].indices(x.shape[0])
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            where = (slice(a - lo, b - lo), *shard.index[1:])
            out[where] = np.asarray(shard.data)[a - start : b - start]
            filled[where] = True
    if not filled.all():
        raise ValueError(f"rows {lo}:{hi} are not all on this process's devices")
    return out


def accumulate(
    step: Callable[[dict[str, jax.Array]], tuple[jax.Array, jax.Array]],
    inputs: Callable[[np.ndarray], dict[str, np.ndarray]],
    num_samples: int,
    *,
    batch_size: int,
    mesh: Mesh,
    splits: int = 0,
) -> Statistics:
    """Statistics of `step`'s (pool features, logits) of samples 0 .. num_samples − 1, merged
    across processes. `inputs(indices)` gives this process's rows of a batch (host arrays; the
    driver adds "index"); `step(global batch)` runs on the mesh. `splits` of the Inception
    Score: 0 = one per SCORE_SPLIT_SIZE samples. Batch b + 1 is dispatched before batch b is
    read back, so the host's float64 sums overlap the devices' work."""
    if num_samples < 2:
        raise UserError(f"FID needs at least 2 samples, got num_samples={num_samples}")
    splits = splits or math.ceil(num_samples / SCORE_SPLIT_SIZE)
    batch = global_batch_size(batch_size, mesh)
    lo, hi = process_rows(mesh, batch)
    stats: Statistics | None = None

    def absorb(indices, pool, logits):
        nonlocal stats
        keep = indices < num_samples
        pool, logits = local_rows(pool, lo, hi)[keep], local_rows(logits, lo, hi)[keep]
        if stats is None:
            stats = Statistics(
                Moments.empty(pool.shape[-1]),
                ScoreSums.empty(num_samples, splits, logits.shape[-1]),
            )
        stats.moments.add(pool)
        stats.scores.add(logits, indices[keep])

    pending = None
    for indices in deal(num_samples, batch_size, mesh):
        rows = {"index": indices.astype(np.int32), **inputs(indices)}
        outputs = step(sharding.global_batch(rows, mesh))
        if pending is not None:
            absorb(*pending)
        pending = (indices, *outputs)
    absorb(*pending)
    return merge_across_processes(stats)


def evaluate_generated(
    generate: Callable[[dict[str, jax.Array]], jax.Array],
    features: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    num_samples: int,
    *,
    conditions: Callable[[np.ndarray], dict[str, np.ndarray]],
    batch_size: int,
    mesh: Mesh,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    splits: int = 0,
) -> tuple[dict[str, float], Statistics]:
    """FID against `reference` and Inception Score of `num_samples` generated images, and their
    merged statistics. `conditions(indices)`: this process's rows of a batch (class labels,
    caption ids); `generate(batch)`: images [B, H, W, C] in [-1, 1] of a global batch holding
    them and "index" (each sample's global index: its key is fold_in(key, index));
    `features(images)`: (pool [B, D], logits [B, K])."""
    stats = accumulate(
        lambda batch: features(generate(batch)),
        conditions,
        num_samples,
        batch_size=batch_size,
        mesh=mesh,
        splits=splits,
    )
    return metrics_of(stats, reference), stats


def metrics_of(
    stats: Statistics, reference: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, float]:
    """{"fid" (when there is a reference), "inception_score", "inception_score_std"}."""
    out = {}
    if reference is not None:
        mu, sigma = stats.moments.mean_and_covariance()
        if reference[0].shape != mu.shape:
            raise UserError(
                f"reference statistics of {reference[0].shape[0]} features; "
                f"the feature network gives {mu.shape[0]}"
            )
        out["fid"] = frechet_distance(mu, sigma, *reference)
    if stats.scores is not None:
        out["inception_score"], out["inception_score_std"] = stats.scores.score()
    return out


def load_reference(path: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu [D], sigma [D, D]) of an .npz in ADM's layout; anything else is a one-line UserError
    naming the file (and the keys it has)."""
    if not os.path.isfile(os.path.expanduser(path)):
        raise UserError(f"{path}: no such reference statistics file (an .npz with mu and sigma)")
    try:
        with np.load(os.path.expanduser(path), allow_pickle=False) as npz:
            keys = list(npz.files)
            found = {k: npz[k] for k in ("mu", "sigma") if k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: not a readable .npz ({one_line(e)})") from None
    if len(found) < 2:
        has = ", ".join(keys) or "no arrays"
        raise UserError(f"{path}: reference statistics need the keys mu and sigma; it has {has}")
    mu, sigma = found["mu"].astype(np.float64), found["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    if dim is not None and len(mu) != dim:
        raise UserError(
            f"{path}: statistics of {len(mu)} features; the feature network gives {dim}"
        )
    return mu, sigma


def write_reference(path: str, stats: Statistics) -> tuple[np.ndarray, np.ndarray]:
    """Write `mu` and `sigma` of merged statistics to an .npz in ADM's layout (process 0 only; a
    temporary file renamed into place, so no half-written file), and return them."""
    mu, sigma = stats.moments.mean_and_covariance()
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    return mu, sigma
