"""Device mesh, logical axis names and the shardings of states and batches.

Models name the axes of every parameter and of the activations at block boundaries with the logical
names below; a rules table in the config maps them onto the mesh axes ("data", "fsdp", "sequence",
"tensor"). One table therefore selects data parallel, FSDP, sequence parallel or FSDP + tensor
parallel without touching model code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crossmodal_jax.errors import UserError

__all__ = [
    "BATCH",
    "CODEBOOK",
    "CODE_DIM",
    "CONV_IN",
    "CONV_OUT",
    "DATA_AXES",
    "DEFAULT_RULES",
    "EMBED",
    "HEADS",
    "HEAD_DIM",
    "KV_SEQ",
    "MESH_AXES",
    "MLP",
    "SEQ",
    "VOCAB",
    "axes_across_processes",
    "batch_sharding",
    "constrain",
    "data_parallel_size",
    "global_batch",
    "logical_shardings",
    "make_mesh",
    "mesh_devices",
    "mesh_from_config",
    "replicated",
    "replicated_parameters",
    "rules_from_config",
    "strip_boxes",
]

# Logical axis names used by the models (parameters and activations).
BATCH = "batch"
SEQ = "seq"
KV_SEQ = "kv_seq"  # keys and values inside attention: gathered whole (sequence parallelism)
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
CODEBOOK = "codebook"
CODE_DIM = "code_dim"

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
# Mesh axes that split the batch: every replica along them sees different examples.
DATA_AXES = ("data", "fsdp")

# Default rules: batch over data and fsdp; weights' embed dimension over fsdp (ZeRO-3 style);
# tokens over sequence (activations only: attention gathers keys and values); MLP hidden, heads
# and conv outputs over tensor (Megatron style). Codebooks stay replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (BATCH, DATA_AXES),
    (SEQ, "sequence"),
    (KV_SEQ, None),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (HEAD_DIM, None),
    (VOCAB, None),
    (CONV_IN, "fsdp"),
    (CONV_OUT, "tensor"),
    (CODEBOOK, None),
    (CODE_DIM, None),
)


def make_mesh(
    shape: dict[str, int],
    devices: Sequence[jax.Device] | None = None,
    dcn_shape: dict[str, int] | None = None,
) -> Mesh:
    """A mesh with axes MESH_AXES over `mesh_devices(shape, devices, dcn_shape)`.

    Axes are `Auto` so linen's logical constraints drive GSPMD (explicit axes reject sharded
    contractions in tensor-parallel layers).
    """
    grid = mesh_devices(shape, list(devices if devices is not None else jax.devices()), dcn_shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_devices(
    shape: dict[str, int], devices: Sequence[Any], dcn_shape: dict[str, int] | None = None
) -> np.ndarray:
    """The devices laid out as the mesh `shape`; one size may be -1 (filled from the device count).

    `dcn_shape` (multi-slice or multi-host): how many slices each axis spans, over the slow
    network (DCN), e.g. {"data": 2} for data parallelism across two slices with FSDP and tensor
    parallelism inside each. `shape` stays the whole mesh; each slice holds shape / dcn_shape.
    Slices are TPU slices (devices' `slice_index`) when there are that many, else processes (so
    on GPU hosts and CPUs each process is one), as in `create_hybrid_device_mesh`.
    """
    unknown = (set(shape) | set(dcn_shape or {})) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes must be {MESH_AXES}, got unknown {sorted(unknown)}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes, strict=True))}"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
            f"{len(devices)} are available"
        )
    dcn = [int((dcn_shape or {}).get(a, 1)) for a in MESH_AXES]
    if int(np.prod(dcn)) > 1:
        return _hybrid_grid(sizes, dcn, list(devices))
    return np.asarray(devices).reshape(sizes)


def _hybrid_grid(sizes: list[int], dcn: list[int], devices: list) -> np.ndarray:
    """Devices laid out so that the axes in `dcn` cross slices (or processes) and every other
    step of an axis stays inside one."""
    named = dict(zip(MESH_AXES, dcn, strict=True))
    if any(d < 1 or s % d for s, d in zip(sizes, dcn, strict=True)):
        raise ValueError(
            f"dcn_shape {named} must divide the mesh {dict(zip(MESH_AXES, sizes, strict=True))}"
        )
    want = int(np.prod(dcn))
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    processes = len({d.process_index for d in devices})
    if want not in (slices, processes):
        raise ValueError(
            f"dcn_shape {named} spans {want} slices, but the devices are in {slices} slice(s) "
            f"and {processes} process(es)"
        )
    ici = [s // d for s, d in zip(sizes, dcn, strict=True)]
    return mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=want != slices
    )


def axes_across_processes(device_grid: np.ndarray, axes: Sequence[str]) -> list[str]:
    """Which of `axes` (mesh axes that do not split the batch: sequence, tensor) hold devices of
    several processes along them. Processes are dealt distinct rows of the global batch, so such
    an axis would give its replicas different examples."""
    owner = np.vectorize(lambda d: d.process_index)(device_grid)
    spanning = []
    for axis in axes:
        first = np.take(owner, [0], axis=MESH_AXES.index(axis))
        if (owner != first).any():
            spanning.append(axis)
    return spanning


def mesh_from_config(mesh_cfg: Any, shape: dict | None = None) -> tuple[Mesh, tuple]:
    """The mesh (`shape`, default mesh_cfg.shape) and logical axis rules of a config's mesh block;
    a shape the devices cannot take is a one-line UserError."""
    try:
        mesh = make_mesh(dict(shape or mesh_cfg.shape), dcn_shape=dict(mesh_cfg.dcn_shape))
    except ValueError as e:
        raise UserError(f"config.mesh: {e}") from e
    return mesh, rules_from_config(mesh_cfg.rules)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Config rules ([[name, axis-or-list-or-None], ...]) as the tuple flax expects."""
    out = []
    for name, axes in rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        out.append((name, axes))
    return tuple(out)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (e.g. a 1-channel output conv)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        fitted.append(axes if names and dim % size == 0 else None)
    return P(*fitted)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """`nn.with_logical_constraint`, except that a mesh axis is dropped from a dimension it does
    not divide: a 9-token caption on a 2-way `sequence` axis stays whole rather than failing to
    compile, as parameters too small to split stay whole (`_fit_spec`)."""
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return nn.with_logical_constraint(x, logical_axes)  # flax's: outside a mesh, a no-op
    spec = nn.logical_to_mesh_axes(logical_axes, rules)
    return jax.lax.with_sharding_constraint(x, _fit_spec(spec, x.shape, mesh))


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def strip_boxes(tree: Any) -> Any:
    """Remove logical-partitioning boxes without applying sharding constraints (safe outside jit)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if _is_box(x) else x, tree, is_leaf=_is_box
    )


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence) -> Any:
    """NamedShardings for a tree of (possibly `nn.LogicallyPartitioned`) abstract values.

    Leaves without logical annotations are replicated.
    """
    specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    unboxed = strip_boxes(abstract_tree)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, _fit_spec(spec, x.shape, mesh)),
        mesh_specs,
        unboxed,
        is_leaf=lambda s: isinstance(s, P),
    )


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (scalars, small state, outputs read by all processes)."""
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the mesh's data axes (data x fsdp)."""
    return int(np.prod([mesh.shape[a] for a in DATA_AXES]))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble a global batch from this process's rows (multi-host safe)."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in local_batch.items()
    }


def replicated_parameters(shardings_tree: Any, shapes_tree: Any, min_size: int) -> list[str]:
    """Paths ("a/b/kernel") of leaves with more than `min_size` elements that every device holds whole.

    A leaf counts as replicated when its sharding splits no dimension over a mesh axis of size > 1
    (`NamedSharding.is_fully_replicated`), e.g. a kernel sharded only over "tensor" on a mesh with
    tensor=1. With fsdp > 1 such a leaf costs its full size on every device, which is what FSDP
    is meant to avoid; small leaves (biases, norms) are not worth a collective and are ignored.
    `shapes_tree` holds arrays or ShapeDtypeStructs with the same structure as `shardings_tree`.
    """
    flat_shardings = jax.tree_util.tree_flatten_with_path(
        shardings_tree, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
    )[0]
    flat_shapes = jax.tree.leaves(strip_boxes(shapes_tree))
    if len(flat_shardings) != len(flat_shapes):
        raise ValueError(
            f"{len(flat_shardings)} shardings for {len(flat_shapes)} leaves: trees do not match"
        )
    found = []
    for (path, sharding_), leaf in zip(flat_shardings, flat_shapes, strict=True):
        if int(np.prod(leaf.shape)) > min_size and sharding_.is_fully_replicated:
            keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
            found.append("/".join(str(k) for k in keys))
    return found
