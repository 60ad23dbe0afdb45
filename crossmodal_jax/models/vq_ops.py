"""Pure maths of the EMA vector quantizer: lookup, EMA statistics, restarts, seeding, health.

Everything here works in float32 whatever the caller's compute dtype: the distance expansion
||z||^2 - 2 z.e + ||e||^2 cancels catastrophically in bfloat16 (8 mantissa bits), and EMA sums
drift when accumulated in low precision.

Under jit the arrays are the *global* batch (GSPMD splits them over devices and inserts the
all-reduce for every batch sum), so the statistics, restarts and seeding below are global and
identical on every replica without explicit psums, provided all replicas use the same key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
SMALL_CODEBOOK = 256  # nearest_code's two-pass lookup up to this size (measured on 2 CPU cores)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / ||x|| over the last axis (a zero vector stays zero)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x**2, axis=-1, keepdims=True), eps**2))


def nearest_codes(z_NxD: jax.Array, codebook_KxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index of the nearest code for each row and all squared L2 distances (float32).

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: one matmul instead of an [N, K, D] difference tensor.
    """
    z = z_NxD.astype(jnp.float32)
    e = codebook_KxD.astype(jnp.float32)
    dist_NxK = (
        jnp.sum(z**2, axis=1, keepdims=True)
        - 2.0 * jnp.matmul(z, e.T, precision=HIGHEST)
        + jnp.sum(e**2, axis=1)[None, :]
    )
    return jnp.argmin(dist_NxK, axis=1).astype(jnp.int32), dist_NxK


def nearest_code(z_NxD: jax.Array, codebook_KxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(index i32[N], squared distance f32[N]) of the nearest code: `nearest_codes` without the
    [N, K] distances returned, and faster.

    Small codebooks (K <= SMALL_CODEBOOK): the distances are laid out [K, N] and the argmin
    taken as a min followed by the first index attaining it; XLA:CPU then reduces over the
    leading axis with its vector lanes across N: 1.3 ms instead of 2.3 ms at N=4096, K=256, D=16
    (the lookup is most of a residual-VQ stage's step). Larger codebooks: jnp.argmin along rows,
    which is faster there (12.8 ms vs 20 ms at K=1024, D=64, where the two passes over the
    16 MB of distances cost more than they save). Ties resolve to the lowest index either way;
    ||z||^2 is added after the min.
    """
    z = z_NxD.astype(jnp.float32)
    e = codebook_KxD.astype(jnp.float32)
    num_codes = e.shape[0]
    if num_codes > SMALL_CODEBOOK:
        idx, dist_NxK = nearest_codes(z, e)
        return idx, jnp.take_along_axis(dist_NxK, idx[:, None], axis=1)[:, 0]
    d_KxN = jnp.sum(e**2, axis=1)[:, None] - 2.0 * jnp.matmul(e, z.T, precision=HIGHEST)
    best_N = jnp.min(d_KxN, axis=0)
    first = jnp.where(d_KxN == best_N[None, :], jnp.arange(num_codes)[:, None], num_codes)
    # A NaN row matches nothing; clamp so its index stays a valid code.
    idx = jnp.minimum(jnp.min(first, axis=0), num_codes - 1).astype(jnp.int32)
    return idx, best_N + jnp.sum(z**2, axis=1)


def nearest_codes_chunked(
    z_NxD: jax.Array, codebook_KxD: jax.Array, chunk_size: int = 0
) -> tuple[jax.Array, jax.Array]:
    """(index i32[N], squared distance f32[N]) of the nearest code, scanning the codebook in chunks.

    chunk_size <= 0 or >= K computes all distances at once. Otherwise a lax.scan over
    ceil(K / chunk) chunks keeps a running (min, argmin), so peak memory of the lookup is
        N * chunk * 4 B (one chunk of distances) + N * 8 B (running min + index)
        + K_pad * D * 4 B (the codebook, padded to a multiple of chunk) + N * D * 4 B (f32 z)
    instead of N * K * 4 B. Ties resolve to the lowest index, as in jnp.argmin.
    """
    z = z_NxD.astype(jnp.float32)
    e = codebook_KxD.astype(jnp.float32)
    num_codes, dim = e.shape
    if chunk_size <= 0 or chunk_size >= num_codes:
        return nearest_code(z, e)
    num_chunks = -(-num_codes // chunk_size)
    pad = num_chunks * chunk_size - num_codes
    e_CxSxD = jnp.pad(e, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, dim)
    # Padded codes get +inf norm so they never win.
    e2_K = jnp.pad(jnp.sum(e**2, axis=1), (0, pad), constant_values=jnp.inf)
    e2_CxS = e2_K.reshape(num_chunks, chunk_size)
    z2_N = jnp.sum(z**2, axis=1)

    def body(carry, chunk):
        best_d, best_i = carry
        c, e_SxD, e2_S = chunk
        d_NxS = z2_N[:, None] - 2.0 * jnp.matmul(z, e_SxD.T, precision=HIGHEST) + e2_S[None, :]
        local_i = jnp.argmin(d_NxS, axis=1)
        local_d = jnp.take_along_axis(d_NxS, local_i[:, None], axis=1)[:, 0]
        better = local_d < best_d  # strict: an earlier chunk wins ties
        best_d = jnp.where(better, local_d, best_d)
        best_i = jnp.where(better, (c * chunk_size + local_i).astype(jnp.int32), best_i)
        return (best_d, best_i), None

    init = (jnp.full(z.shape[:1], jnp.inf, jnp.float32), jnp.zeros(z.shape[:1], jnp.int32))
    (best_d, best_i), _ = jax.lax.scan(body, init, (jnp.arange(num_chunks), e_CxSxD, e2_CxS))
    return best_i, best_d


def straight_through(z: jax.Array, z_q: jax.Array) -> jax.Array:
    """Forward value z_q, gradient of the identity with respect to z."""
    return z + jax.lax.stop_gradient(z_q - z)


def rotation_trick(z: jax.Array, z_q: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Forward value z_q; gradient through the rotation-and-rescale taking z onto z_q.

    Fifty et al. 2024 ("Restructuring vector quantization with the rotation trick", §4.2): with
    u = z/|z|, q = z_q/|z_q| and w = (u + q)/|u + q|, all held constant, R = I - 2ww^T + 2qu^T is
    the rotation with R u = q, and sg(|z_q|/|z|) R z = z_q. The decoder's gradient reaches z
    rotated back into z's frame and rescaled, so it says where z lies inside its code's cell,
    which the straight-through identity discards. The final straight-through keeps the forward
    value bitwise z_q. Rows are the last axis; float32.
    """
    z = z.astype(jnp.float32)
    q = z_q.astype(jnp.float32)
    z_norm = jnp.sqrt(jnp.maximum(jnp.sum(z**2, axis=-1, keepdims=True), eps**2))
    q_norm = jnp.sqrt(jnp.maximum(jnp.sum(q**2, axis=-1, keepdims=True), eps**2))
    u = jax.lax.stop_gradient(z / z_norm)
    q_hat = jax.lax.stop_gradient(q / q_norm)
    w = jax.lax.stop_gradient(l2_normalize(u + q_hat, eps))
    rotated = (
        z
        - 2.0 * jnp.sum(z * w, axis=-1, keepdims=True) * w
        + 2.0 * jnp.sum(z * u, axis=-1, keepdims=True) * q_hat
    )
    rotated = rotated * jax.lax.stop_gradient(q_norm / z_norm)
    return rotated + jax.lax.stop_gradient(q - rotated)


def assignment_sums(
    z_NxD: jax.Array, indices_N: jax.Array, num_codes: int
) -> tuple[jax.Array, jax.Array]:
    """(counts f32[K], sum of the rows assigned to each code f32[K, D]) without an [N, K] one-hot."""
    z = z_NxD.astype(jnp.float32)
    counts_K = jax.ops.segment_sum(jnp.ones_like(indices_N, jnp.float32), indices_N, num_codes)
    sums_KxD = jax.ops.segment_sum(z, indices_N, num_codes)
    return counts_K, sums_KxD


def ema_step(
    cluster_size_K: jax.Array,
    embed_sum_KxD: jax.Array,
    counts_K: jax.Array,
    sums_KxD: jax.Array,
    *,
    decay: float,
    epsilon: float,
    cosine: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """EMA of the batch counts/sums; returns (cluster_size, embed_sum, codebook).

    Laplace smoothing of the cluster sizes keeps codes with no assignments from dividing by zero
    while preserving the total count n. With cosine=True the codebook is re-normalised to unit
    norm (embed_sum keeps the raw mean direction).
    """
    cluster_size = decay * cluster_size_K + (1.0 - decay) * counts_K.astype(jnp.float32)
    embed_sum = decay * embed_sum_KxD + (1.0 - decay) * sums_KxD.astype(jnp.float32)
    n = jnp.sum(cluster_size)
    num_codes = cluster_size.shape[0]
    smoothed = (cluster_size + epsilon) / (n + num_codes * epsilon) * n
    codebook = embed_sum / smoothed[:, None]
    if cosine:
        codebook = l2_normalize(codebook)
    return cluster_size, embed_sum, codebook


def ema_update(
    cluster_size_K: jax.Array,
    embed_sum_KxD: jax.Array,
    z_NxD: jax.Array,
    onehot_NxK: jax.Array,
    *,
    decay: float,
    epsilon: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA step from a one-hot assignment matrix (reference form of `ema_step`)."""
    z = z_NxD.astype(jnp.float32)
    onehot = onehot_NxK.astype(jnp.float32)
    counts_K = jnp.sum(onehot, axis=0)
    sums_KxD = jnp.matmul(onehot.T, z, precision=HIGHEST)
    return ema_step(cluster_size_K, embed_sum_KxD, counts_K, sums_KxD, decay=decay, epsilon=epsilon)


def sample_rows(key: jax.Array, z_NxD: jax.Array, num: int) -> jax.Array:
    """`num` rows of z drawn without replacement (cycling through a permutation if num > N)."""
    n = z_NxD.shape[0]
    perm = jax.random.permutation(key, n)
    return z_NxD.astype(jnp.float32)[perm[jnp.arange(num) % n]]


def restart_dead_codes(
    key: jax.Array,
    cluster_size_K: jax.Array,
    embed_sum_KxD: jax.Array,
    codebook_KxD: jax.Array,
    z_NxD: jax.Array,
    *,
    threshold: float,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Replace codes with cluster_size < threshold by encoder outputs of this (global) batch.

    The candidates are drawn uniformly (with replacement) from `key`, the step's key, identical on
    every replica, so every replica revives the same codes identically. A revived code gets
    cluster_size max(threshold, 1) (alive right after the restart) and a consistent
    embed_sum = code * cluster_size. Pass z already normalised for a cosine codebook.
    Returns the new stats and the boolean dead mask.
    """
    num_codes = cluster_size_K.shape[0]
    dead_K = cluster_size_K < threshold
    pick_K = jax.random.randint(key, (num_codes,), 0, z_NxD.shape[0])
    new_codes_KxD = z_NxD.astype(jnp.float32)[pick_K]
    revived_size = max(float(threshold), 1.0)
    codebook = jnp.where(dead_K[:, None], new_codes_KxD, codebook_KxD)
    cluster_size = jnp.where(dead_K, revived_size, cluster_size_K)
    embed_sum = jnp.where(dead_K[:, None], new_codes_KxD * revived_size, embed_sum_KxD)
    return cluster_size, embed_sum, codebook, dead_K


def kmeans_plus_plus(key: jax.Array, z_NxD: jax.Array, num_codes: int) -> jax.Array:
    """k-means++ (D^2) seeding: K rows of z, each drawn with probability ~ squared distance to the
    nearest row already chosen. Deterministic given `key`; O(K * N * D) work, O(N * D) memory.
    """
    z = z_NxD.astype(jnp.float32)
    n = z.shape[0]
    keys = jax.random.split(key, num_codes)
    first = jax.random.randint(keys[0], (), 0, n)
    codes = jnp.zeros((num_codes, z.shape[1]), jnp.float32).at[0].set(z[first])
    min_d2 = jnp.sum((z - z[first]) ** 2, axis=1)

    def body(k, carry):
        codes, min_d2 = carry
        # All remaining rows duplicate a chosen one (N < K or repeated data): pick uniformly.
        logits = jnp.where(
            jnp.sum(min_d2) > 0, jnp.log(jnp.maximum(min_d2, 0.0)), jnp.zeros_like(min_d2)
        )
        i = jax.random.categorical(keys[k], logits)
        codes = codes.at[k].set(z[i])
        min_d2 = jnp.minimum(min_d2, jnp.sum((z - z[i]) ** 2, axis=1))
        return codes, min_d2

    codes, _ = jax.lax.fori_loop(1, num_codes, body, (codes, min_d2))
    return codes


def code_counts(indices: jax.Array, num_codes: int) -> jax.Array:
    """How often each code occurs in `indices` (any shape), float32 [K]."""
    return jnp.bincount(indices.reshape(-1), length=num_codes).astype(jnp.float32)


def codebook_usage(indices: jax.Array, num_codes: int) -> jax.Array:
    """Fraction of the K codes used at least once in `indices`."""
    return jnp.mean((code_counts(indices, num_codes) > 0).astype(jnp.float32))


def perplexity_from_counts(counts_K: jax.Array) -> jax.Array:
    """exp(entropy) of the distribution the counts describe (1 .. K)."""
    p = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
    # 0 * log 0 := 0; the where keeps log's argument positive.
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def codebook_perplexity(indices: jax.Array, num_codes: int) -> jax.Array:
    """exp(entropy) of the empirical code distribution: 1 (one code) .. K (uniform)."""
    return perplexity_from_counts(code_counts(indices, num_codes))


def dead_code_count(cluster_size_K: jax.Array, threshold: float) -> jax.Array:
    """Codes whose EMA usage is below `threshold` (f32 scalar; 0 when threshold <= 0)."""
    return jnp.sum(cluster_size_K < threshold).astype(jnp.float32)
