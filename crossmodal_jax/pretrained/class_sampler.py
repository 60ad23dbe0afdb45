"""Class-conditional ImageNet samples from a converted DiT and a KL VAE, with no training run, as
facebookresearch/DiT's sample.py makes them, on crossmodal_jax.diffusion's samplers.

    dit, vae = load_parts("DiT-XL-2-256x256.pt", "sd-vae-ft-ema")
    images = ClassSampler(dit, vae, steps=50, guidance=4.0)([207, 360], jax.random.key(0))

DiT's chain: latents [B, h, w, C] ~ N(0, 1) (example i from fold_in(key, offset + i), so a sample
does not depend on its batch); linear betas 1e-4 .. 0.02 over 1000 steps; classifier-free guidance
against the null label (= num_classes); the eps half of a learned-sigma output (DDIM and DPM-Solver
use no variance, DDPM the other half); decode(latents / scaling_factor + shift) clipped to
[-1, 1], rounded to uint8 as torchvision's save_image does.

Guidance: facebookresearch/DiT's `forward_with_cfg` (models.py, every commit up to its HEAD
ed81ce2) guides output channels [:3] only, "for exact reproducibility reasons"; eps channel 3 and
the variance keep the conditional output. That is the default (`guided_channels=3`); None guides
every eps channel, as diffusers' DiTPipeline and DiT's commented-out "standard approach" do.

Samplers: "ddim" (eta 0) and "ddpm" on DiT's respacing `space_timesteps(1000, str(N))`
(= ddim_timesteps), run as DiT's SpacedDiffusion runs them: on the respaced schedule, the model
given the original timestep; "dpm_solver": DPM-Solver++(2M) on diffusers' linspace timesteps. Each
takes explicit `timesteps` instead. "ddpm" is DiT's default: 250 ancestral steps with
guided_diffusion's "learned_range" variance from the DiT's second half of channels (the
conditional output: forward_with_cfg passes it through unguided), or beta_t for a DiT without
one, as DiT's create_diffusion picks. Example i's step noise comes from
fold_in(fold_in(key, CHAIN_STREAM), offset + i), so it too does not depend on the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal_jax import diffusion
from crossmodal_jax.diffusion.gaussian import schedule_from_betas
from crossmodal_jax.diffusion.gaussian_samplers import ddpm_sample
from crossmodal_jax.errors import CheckpointError, UserError, one_line
from crossmodal_jax.pretrained import autoencoder
from crossmodal_jax.pretrained.parts import GeneratorPart, TokenizerPart

NUM_TIMESTEPS = 1000  # DiT's training chain: linear betas 1e-4 .. 0.02
SAMPLERS = ("ddim", "dpm_solver", "ddpm")
# diffusers' DiTPipeline default; its DPM-Solver example; DiT's sample.py default
DEFAULT_STEPS = {"ddim": 50, "dpm_solver": 25, "ddpm": 250}
# fold_in data of the DDPM noise stream: the initial latents use fold_in(key, i) with i < 2**31,
# so this root never meets one of them.
CHAIN_STREAM = 2**32 - 1
DIT_GUIDED_CHANNELS = 3  # facebookresearch/DiT forward_with_cfg: model_out[:, :3]
DIT_SCALING_FACTOR = 0.18215  # DiT's sample.py: vae.decode(samples / 0.18215)


def load_parts(dit_path: str, vae_path: str) -> tuple[GeneratorPart, TokenizerPart]:
    """A class-label DiT and a KL VAE whose latents it models, or a one-line CheckpointError."""
    from crossmodal_jax import pretrained

    parts = []
    for flag, path, kind in (("--dit", str(dit_path), "dit"), ("--vae", str(vae_path), "vae")):
        try:
            part = pretrained.load(path)
        except (UserError, ValueError, OSError) as e:
            msg = one_line(e)  # most name the path already
            raise CheckpointError(f"{flag if path in msg else f'{flag}={path}'}: {msg}") from None
        if part.kind != kind:
            raise CheckpointError(f"{flag}={path}: a {part.kind} checkpoint, not a {kind}")
        parts.append(part)
    dit, vae = parts
    c, out_c = dit.config["in_channels"], dit.config["out_channels"] or dit.config["in_channels"]
    if not dit.config.get("num_classes"):
        raise CheckpointError(f"--dit={dit_path}: not a class-conditional DiT (no label table)")
    if out_c not in (c, 2 * c):
        raise CheckpointError(f"--dit={dit_path}: {out_c} output channels for {c} latent ones")
    if vae.config["latent_channels"] != c:
        raise CheckpointError(
            f"the DiT models {c}-channel latents, the VAE ({vae_path}) has "
            f"{vae.config['latent_channels']}"
        )
    return dit, vae


def parse_classes(text: str, num_classes: int) -> list[int]:
    """'207,360,387' -> [207, 360, 387], each in [0, num_classes)."""
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--classes={text}: not a comma-separated list of integers") from None
    if not classes:
        raise UserError("--classes is empty")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--classes: {bad[0]} is not a class id of this DiT (0..{num_classes - 1})")
    return classes


def respaced(timesteps_desc: Sequence[int]):
    """DiT's SpacedDiffusion: the chain kept at `timesteps` (its abar values unchanged, betas
    re-derived), as a GaussianSchedule indexed 0..N-1 in increasing timestep order."""
    abar = np.cumprod(1.0 - diffusion.linear_betas(NUM_TIMESTEPS))[np.sort(timesteps_desc)]
    return schedule_from_betas(1.0 - abar / np.append(1.0, abar[:-1]))


def sampler_timesteps(
    sampler: str, steps: int | None, timesteps: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The decreasing timesteps a sampler runs on (`steps` None: DEFAULT_STEPS), or a one-line
    UserError."""
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler={sampler}: choose one of {', '.join(SAMPLERS)}")
    if timesteps is None:
        steps = DEFAULT_STEPS[sampler] if steps is None else steps
        pick = (
            diffusion.dpm_solver_timesteps if sampler == "dpm_solver" else diffusion.ddim_timesteps
        )
        try:
            timesteps = pick(NUM_TIMESTEPS, steps)
        except ValueError as e:
            raise UserError(f"--steps={steps}: {one_line(e)}") from None
    ts = tuple(int(t) for t in timesteps)
    if not (len(ts) and np.all(np.diff(ts) < 0) and 0 <= ts[-1] and ts[0] < NUM_TIMESTEPS):
        raise UserError(f"timesteps must decrease within [0, {NUM_TIMESTEPS - 1}]: {ts}")
    return ts


def _compute_dtype(name: str) -> jnp.dtype:
    if name not in ("float32", "bfloat16"):
        raise UserError(f"dtype {name!r}: the DiT computes in float32 or bfloat16")
    return jnp.dtype(name)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about a sampler (hashable: one compilation per plan and shapes)."""

    dit: object  # the flax module (a hashable dataclass)
    sampler: str
    timesteps: tuple[int, ...]  # decreasing, original timesteps
    guidance: float
    guided_channels: int | None
    num_classes: int
    latent_shape: tuple[int, int, int]
    variance: str | None = None  # ddpm only: "learned_range" or "fixed_large" (DDPM_VARIANCES)


def _model_fn(plan: _Plan, dit_params, labels_B: jax.Array, to_original: jax.Array | None):
    """model_fn(x, t) -> guided eps for our samplers, and for learned_range the conditional v
    after it; t is mapped to DiT's timestep first."""
    c = plan.latent_shape[-1]
    width = 2 * c if plan.variance == "learned_range" else c

    def eps(x, t, y):
        if to_original is not None:
            t = to_original[t]
        out = plan.dit.apply({"params": dit_params}, x, t, y)[..., :width]
        return out.astype(jnp.float32)  # the chain's arithmetic stays float32

    if plan.guidance == 1.0:
        return lambda x, t: eps(x, t, labels_B)

    def pair_fn(x, t):  # one batched pass: [conditional; null label]
        null = jnp.full_like(labels_B, plan.num_classes)
        both = eps(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([labels_B, null])
        )
        cond, uncond = jnp.split(both, 2)
        k = c if plan.guided_channels is None else min(plan.guided_channels, c)
        if k < width:  # unguided channels (v among them): uncond := cond, so cfg gives cond
            uncond = jnp.concatenate([uncond[..., :k], cond[..., k:]], axis=-1)
        return cond, uncond

    return diffusion.guided_model_fn(pair_fn, plan.guidance)


@functools.partial(jax.jit, static_argnums=0)
def _denoise(plan: _Plan, dit_params, labels_B: jax.Array, x_T: jax.Array, keys_B) -> jax.Array:
    """Final latents [B, h, w, C], in the DiT's (scaled) latent space; keys_B: ddpm's noise."""
    ts = np.asarray(plan.timesteps, np.int32)
    if plan.sampler in ("ddim", "ddpm"):
        s = respaced(ts)
        model_fn = _model_fn(plan, dit_params, labels_B, jnp.asarray(np.sort(ts)))
        if plan.sampler == "ddpm":
            return ddpm_sample(s, model_fn, x_T, keys_B, prediction="eps", variance=plan.variance)
        return diffusion.ddim_sample(
            s, model_fn, x_T, jax.random.key(0), num_steps=len(ts), eta=0.0, prediction="eps"
        )
    s = schedule_from_betas(diffusion.linear_betas(NUM_TIMESTEPS))
    model_fn = _model_fn(plan, dit_params, labels_B, None)
    return diffusion.dpmpp_2m_sample(s, model_fn, x_T, prediction="eps", timesteps=ts)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _noise(latent_shape: tuple[int, ...], n: int, key: jax.Array, offset: jax.Array) -> jax.Array:
    """Example i of a call: N(0, 1) from fold_in(key, offset + i), whatever the batch."""
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i), latent_shape)
    return jax.vmap(draw)(offset + jnp.arange(n))


@functools.partial(jax.jit, static_argnums=0)
def _chain_keys(n: int, key: jax.Array, offset: jax.Array) -> jax.Array:
    """Example i's DDPM key: fold_in(fold_in(key, CHAIN_STREAM), offset + i), whatever the batch."""
    root = jax.random.fold_in(key, CHAIN_STREAM)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(offset + jnp.arange(n))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(decoding: tuple, as_uint8: bool, vae_params, latents: jax.Array) -> jax.Array:
    """DiT latents -> images in [-1, 1], or uint8 rounded as torchvision's save_image."""
    vae, scaling_factor, shift_factor = decoding
    z = latents / scaling_factor + shift_factor
    images = jnp.clip(vae.apply({"params": vae_params}, z, method="decode"), -1.0, 1.0)
    if not as_uint8:
        return images
    return jnp.floor((images + 1.0) * 127.5 + 0.5).astype(jnp.uint8)


class ClassSampler:
    """`sampler(labels [B] int, key, offset=0) -> uint8 [B, H, W, 3]`: jitted noise, chain and
    decoding programs (`noise`, `denoise`, `decode`), each compiled once per settings and shapes.

    `timesteps` (decreasing, in [0, 999]) replaces the sampler's own N steps; `image_size`, when
    given, must be the size this DiT and VAE produce; `scaling_factor` defaults to the VAE
    config's (a config-less latent-diffusion file: DiT's 0.18215). `dtype` is the DiT's compute
    dtype (its weights stay float32, the chain's arithmetic too): "bfloat16" is faster where
    the hardware multiplies bfloat16 (an AMX CPU: docs/results.md), its final latents a few
    thousandths of their range from float32's.
    """

    def __init__(
        self,
        dit: GeneratorPart,
        vae: TokenizerPart,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        guidance: float = 4.0,
        guided_channels: int | None = DIT_GUIDED_CHANNELS,
        timesteps: Sequence[int] | None = None,
        scaling_factor: float | None = None,
        image_size: int | None = None,
        dtype: str = "float32",
    ):
        ts = sampler_timesteps(sampler, steps, timesteps)
        h, w = dit.config["input_size"]
        factor = autoencoder.downsampling(vae.config)  # the VAE's own, not always 8
        self.image_shape = (h * factor, w * factor, vae.config["out_channels"])
        if image_size is not None and (image_size, image_size) != self.image_shape[:2]:
            raise UserError(
                f"--image_size={image_size}: this DiT ({h}x{w} latents) and VAE ({factor}x) "
                f"make {self.image_shape[0]}x{self.image_shape[1]} images"
            )
        if scaling_factor is None:
            taming = vae.config.get("layout") == "taming"
            scaling_factor = DIT_SCALING_FACTOR if taming else vae.scaling_factor
        self.dit, self.vae = dit, vae
        self.num_classes = int(dit.config["num_classes"])
        self.decoding = (vae.module, float(scaling_factor), vae.shift_factor)
        c = int(dit.config["in_channels"])
        learned = (dit.config["out_channels"] or c) == 2 * c
        variance = ("learned_range" if learned else "fixed_large") if sampler == "ddpm" else None
        self.plan = _Plan(
            dit=dit.module.clone(dtype=_compute_dtype(dtype)),
            sampler=sampler,
            timesteps=ts,
            guidance=float(guidance),
            guided_channels=guided_channels,
            num_classes=self.num_classes,
            latent_shape=(h, w, c),
            variance=variance,
        )

    def _labels(self, labels) -> jax.Array:
        labels = np.asarray(labels, np.int32).reshape(-1)
        if labels.size and not (0 <= labels.min() and labels.max() < self.num_classes):
            raise UserError(f"class ids must lie in [0, {self.num_classes - 1}]")
        return jnp.asarray(labels)

    def noise(self, n: int, key: jax.Array, offset: int = 0) -> jax.Array:
        """The initial latents [n, h, w, C] of a call with this key and offset."""
        return _noise(self.plan.latent_shape, n, key, jnp.int32(offset))

    def chain_keys(self, n: int, key: jax.Array, offset: int = 0) -> jax.Array:
        """The per-example keys [n] of ddpm's step noise in a call with this key and offset."""
        return _chain_keys(n, key, jnp.int32(offset))

    def denoise(self, labels, x_T, key: jax.Array | None = None, offset: int = 0) -> jax.Array:
        """Final latents f32 [B, h, w, C] from initial ones; ddpm also draws step noise from
        `key` and `offset` (chain_keys), which the other samplers do not need."""
        labels = self._labels(labels)
        keys = None
        if self.plan.sampler == "ddpm":
            if key is None:
                raise ValueError("the ddpm sampler draws noise at every step: give denoise a key")
            keys = self.chain_keys(len(labels), key, offset)
        with self.dit._context():
            return _denoise(self.plan, self.dit.params, labels, jnp.asarray(x_T), keys)

    def decode(self, latents, as_uint8: bool = False) -> jax.Array:
        """Images of final latents: f32 in [-1, 1], or uint8."""
        latents = jnp.asarray(latents, jnp.float32)
        return _decode(self.decoding, as_uint8, self.vae.params, latents)

    def __call__(self, labels, key: jax.Array, offset: int = 0) -> jax.Array:
        """uint8 [B, H, W, 3]: three jitted programs (noise, the chain, decoding) in a row."""
        labels = self._labels(labels)
        x_T = self.noise(len(labels), key, offset)
        return self.decode(self.denoise(labels, x_T, key, offset), True)

    def sample_all(self, classes: Sequence[int], key: jax.Array, batch_size: int) -> np.ndarray:
        """uint8 images of every class in order, `batch_size` at a time (the last batch padded,
        so one program serves them all)."""
        out = []
        for start in range(0, len(classes), batch_size):
            chunk = list(classes[start : start + batch_size])
            padded = chunk + [chunk[-1]] * (min(batch_size, len(classes)) - len(chunk))
            out.append(np.asarray(self(padded, key, start))[: len(chunk)])
        return np.concatenate(out)


def save_samples(images: np.ndarray, output: str, upscale: int = 1) -> list[str]:
    """OUT/000000.png ... in order, and OUT/grid.png; written to a hidden folder inside OUT first
    and moved in, so an interrupted write leaves no half-written PNG."""
    from crossmodal_jax.logs.pictures import image_grid, save_png

    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    os.makedirs(output, exist_ok=True)
    staging = os.path.join(output, f".writing-{os.getpid()}")
    os.makedirs(staging, exist_ok=True)
    grid = image_grid(images, cols=math.ceil(math.sqrt(len(images))))
    names = [f"{i:06d}.png" for i in range(len(images))] + ["grid.png"]
    for name, img in zip(names, [*images, grid], strict=True):
        save_png(os.path.join(staging, name), img)
    for name in names:
        os.replace(os.path.join(staging, name), os.path.join(output, name))
    os.rmdir(staging)
    return [os.path.join(output, n) for n in names]


def sample_to_folder(
    dit_path: str,
    vae_path: str,
    classes: str,
    output: str,
    *,
    sampler: str = "ddim",
    steps: int | None = None,
    guidance: float = 4.0,
    seed: int = 0,
    batch_size: int = 64,
    image_size: int | None = None,
    upscale: int = 1,
    dtype: str = "float32",
) -> list[str]:
    """`python -m crossmodal_jax.sample --dit ...`: every check before any compute, then every
    sample before any file; returns the written paths."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output={output} is a file, not a folder")
    if batch_size < 1 or upscale < 1:
        raise UserError("--batch_size and --upscale must be >= 1")
    sampler_timesteps(sampler, steps)
    dit, vae = load_parts(dit_path, vae_path)
    ids = parse_classes(classes, int(dit.config["num_classes"]))
    sample = ClassSampler(
        dit,
        vae,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        image_size=image_size,
        dtype=dtype,
    )
    images = sample.sample_all(ids, jax.random.key(seed), batch_size)
    return save_samples(images, output, upscale)
