"""Class samples from converted checkpoints (pretrained/class_sampler.py and `sample --dit`): a
tiny random DiT saved as a facebookresearch `.pt` and a tiny random diffusers AutoencoderKL (2x
downsampling, so the sampler must use the VAE's own factor), sampled by our DDIM / DPM-Solver++ /
learned-variance DDPM and by diffusers' schedulers on the same weights, noise and guidance rule."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from PIL import Image
from safetensors.torch import save_file

from crossmodal_jax import diffusion
from crossmodal_jax.diffusion import gaussian_samplers as gs
from crossmodal_jax.errors import UserError
from crossmodal_jax.pretrained import class_sampler as cs
from tests.pretrained.helpers import max_err

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tests.models.test_torch_dit import _facebook_state_dict  # noqa: E402

TOL = 1e-3  # of the reference's range
LABELS = [207, 360, 999]
STEPS = 10
GUIDANCE = 4.0


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def _random_(model, std):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def _vae(folder, latent_channels=4):
    model = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=8,
    )
    model = _random_(model, 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """(DiT .pt, VAE folder, torch DiT, torch VAE): hidden 384 is DiT-S (6 heads implied)."""
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=6,
        attention_head_dim=64,
        in_channels=4,
        out_channels=8,  # learned sigma
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline's null label is 1000
        norm_eps=1e-6,
    )
    dit = _random_(dit, 0.05)
    for block in dit.transformer_blocks:  # facebookresearch's timestep frequencies
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    root = tmp_path_factory.mktemp("ckpts")
    torch.save(_facebook_state_dict(dit), root / "DiT-tiny.pt")
    vae = _vae(root / "vae")
    return root / "DiT-tiny.pt", root / "vae", dit, vae


@pytest.fixture(scope="module")
def parts(ckpts):
    return cs.load_parts(str(ckpts[0]), str(ckpts[1]))


def _dit_cfg(dit, x, t, labels, scale, width=4):
    """facebookresearch/DiT's forward_with_cfg on the doubled batch (its guided channels: [:3]),
    then the conditional half's eps (width 8: and its variance), as its samplers take them."""
    y = torch.tensor(labels + [1000] * len(labels))
    with torch.no_grad():
        model_out = dit(torch.cat([x, x]), t.expand(2 * len(x)), y).sample
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
    out = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)
    return out[: len(x), :width]


def _torch_loop(sched, dit, x_T, width=4, before_step=lambda i: None):
    x = _nchw(x_T)
    for i, t in enumerate(sched.timesteps):
        before_step(i)
        x = sched.step(_dit_cfg(dit, x, t, LABELS, GUIDANCE, width), t, x).prev_sample
    return x.permute(0, 2, 3, 1).numpy()


LINEAR = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def test_ddim_equals_diffusers_ddim_scheduler(ckpts, parts):
    sched = diffusers.DDIMScheduler(
        **LINEAR, clip_sample=False, set_alpha_to_one=True, steps_offset=0
    )
    sched.set_timesteps(STEPS)  # "leading": 900, 800, ..., 0
    sample = cs.ClassSampler(*parts, sampler="ddim", guidance=GUIDANCE, timesteps=sched.timesteps)
    x_T = sample.noise(len(LABELS), jax.random.key(0))
    got = np.asarray(sample.denoise(LABELS, x_T))
    want = _torch_loop(sched, ckpts[2], np.asarray(x_T))
    err = max_err(got, want)
    print(f"DDIM vs diffusers DDIMScheduler: {err:.2e} of range {np.ptp(want):.3g}")
    assert err < TOL


def test_default_ddim_is_dit_respacing(parts):
    """Default DDIM steps are DiT's space_timesteps(1000, str(N)), run on the respaced chain:
    the same as our ddim_sample on the whole linear schedule."""
    for n in (10, 25, 50, 250):  # DiT's diffusion/respace.py, one section of n steps
        frac_stride, cur_idx, taken = 999 / (n - 1), 0.0, []
        for _ in range(n):
            taken.append(round(cur_idx))
            cur_idx += frac_stride
        assert cs.sampler_timesteps("ddim", n) == tuple(sorted(taken, reverse=True))
    sample = cs.ClassSampler(*parts, steps=STEPS, guidance=GUIDANCE)
    x_T = sample.noise(len(LABELS), jax.random.key(1))
    model_fn = cs._model_fn(sample.plan, parts[0].params, np.array(LABELS), None)
    schedule = diffusion.make_schedule("linear", 1000)
    want = diffusion.ddim_sample(
        schedule, model_fn, x_T, jax.random.key(0), num_steps=STEPS, prediction="eps"
    )
    err = max_err(sample.denoise(LABELS, x_T), want)
    print(f"respaced DDIM vs ddim_sample: {err:.2e}")
    assert err < 1e-5


def test_dpm_solver_equals_diffusers(ckpts, parts):
    sched = diffusers.DPMSolverMultistepScheduler(
        **LINEAR,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        final_sigmas_type="zero",
    )
    sched.set_timesteps(STEPS)
    sample = cs.ClassSampler(*parts, sampler="dpm_solver", steps=STEPS, guidance=GUIDANCE)
    np.testing.assert_array_equal(sample.plan.timesteps, sched.timesteps.numpy())
    x_T = sample.noise(len(LABELS), jax.random.key(2))
    want = _torch_loop(sched, ckpts[2], np.asarray(x_T))
    err = max_err(sample.denoise(LABELS, x_T), want)
    print(f"DPM-Solver++(2M) vs diffusers: {err:.2e}")
    assert err < TOL


def test_bfloat16_compute_stays_near_the_float32_chain(parts):
    """dtype="bfloat16" runs the DiT in bfloat16 (float32 weights and chain): the latents move,
    by far less than their range; an unknown dtype is one line."""
    kw = dict(sampler="dpm_solver", steps=STEPS, guidance=GUIDANCE)
    f32 = cs.ClassSampler(*parts, **kw)
    bf16 = cs.ClassSampler(*parts, **kw, dtype="bfloat16")
    assert bf16.plan.dit.dtype == jnp.bfloat16 and f32.plan.dit.dtype == jnp.float32
    x_T = f32.noise(len(LABELS), jax.random.key(2))
    want, got = f32.denoise(LABELS, x_T), bf16.denoise(LABELS, x_T)
    assert got.dtype == jnp.float32
    err = max_err(got, want)
    print(f"bfloat16 DiT vs float32, DPM-Solver++ {STEPS} steps: {err:.2e} of the range")
    assert 1e-5 < err < 2e-2
    with pytest.raises(UserError, match="dtype 'float16': the DiT computes in float32 or bfloat16"):
        cs.ClassSampler(*parts, **kw, dtype="float16")


def test_ddpm_equals_diffusers_ddpm_scheduler(ckpts, parts, monkeypatch):
    """DiT's default sampler: DDPM with the learned variance (the DiT's channels 4..7, conditional)
    on DiT's respacing, against DDPMScheduler(variance_type="learned_range") given the same
    timesteps as custom ones (it then steps the respaced chain, as DiT's SpacedDiffusion does)
    and the same per-step noise."""
    from diffusers.schedulers import scheduling_ddpm

    assert cs.sampler_timesteps("ddpm", None) == cs.sampler_timesteps("ddim", 250)
    sample = cs.ClassSampler(*parts, sampler="ddpm", steps=STEPS, guidance=GUIDANCE)
    assert sample.plan.variance == "learned_range"
    key = jax.random.key(4)
    x_T = sample.noise(len(LABELS), key)
    got = sample.denoise(LABELS, x_T, key)
    noise = np.array(gs.ddpm_noise(sample.chain_keys(len(LABELS), key), x_T.shape, STEPS))
    step_noise = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **kw: step_noise["z"])
    sched = diffusers.DDPMScheduler(**LINEAR, variance_type="learned_range", clip_sample=False)
    sched.set_timesteps(timesteps=list(sample.plan.timesteps))
    set_noise = lambda i: step_noise.update(z=_nchw(noise[i]))
    want = _torch_loop(sched, ckpts[2], np.asarray(x_T), 8, set_noise)
    err = max_err(got, want)
    print(
        f"learned-variance DDPM vs diffusers DDPMScheduler: {err:.2e} of range {np.ptp(want):.3g}"
    )
    assert err < 1e-4
    # The variance really was compared: the fixed posterior variance is another sampler.
    fixed = diffusers.DDPMScheduler(**LINEAR, clip_sample=False)  # variance_type="fixed_small"
    fixed.set_timesteps(timesteps=list(sample.plan.timesteps))
    fixed_err = max_err(got, _torch_loop(fixed, ckpts[2], np.asarray(x_T), 4, set_noise))
    print(f"fixed_small DDPMScheduler instead: {fixed_err:.2e}")
    assert fixed_err > 100 * err
    with pytest.raises(ValueError, match="give denoise a key"):
        sample.denoise(LABELS, x_T)


def test_images_equal_diffusers_dit_pipeline(ckpts, parts, monkeypatch):
    """End to end, decoding included, against DiTPipeline, which guides all 4 eps channels."""
    from diffusers.pipelines.dit import pipeline_dit

    _, _, dit, vae = ckpts
    sched = diffusers.DDIMScheduler(**LINEAR, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(STEPS)
    sample = cs.ClassSampler(
        *parts, guidance=GUIDANCE, timesteps=sched.timesteps, guided_channels=None
    )
    assert sample.image_shape == (8, 8, 3)  # 4x4 latents, the VAE's own 2x
    x_T = sample.noise(len(LABELS), jax.random.key(3))
    monkeypatch.setattr(pipeline_dit, "randn_tensor", lambda *a, **k: _nchw(x_T))
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(LABELS, guidance_scale=GUIDANCE, num_inference_steps=STEPS, output_type="np")[0]
    latents = sample.denoise(LABELS, x_T)
    got = (np.asarray(sample.decode(latents)) + 1.0) / 2.0
    err = max_err(got, want, scale=1.0)
    print(f"images vs DiTPipeline: {err:.2e} of [0, 1]")
    assert err < TOL
    # DiT's own rule (channels [:3]) is another sampler: the rule is really what was compared.
    sched.set_timesteps(STEPS)
    dit_rule = _torch_loop(sched, dit, np.asarray(x_T))
    assert max_err(np.asarray(latents), dit_rule) > 10 * TOL


def _run_cli(capsys, *args):
    from crossmodal_jax import sample

    try:
        flags.FLAGS(["sample", *args])
        sample.main(["sample"])
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        flags.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_one_png_per_class_and_a_grid(ckpts, parts, tmp_path, capsys):
    out = tmp_path / "out"
    args = [f"--dit={ckpts[0]}", f"--vae={ckpts[1]}", f"--output={out}", f"--steps={STEPS}"]
    code, stdout, err = _run_cli(capsys, *args, "--classes=207,360,999,207", "--batch_size=3")
    assert code == 0, err
    assert "wrote 5 file(s)" in stdout
    names = [f"{i:06d}.png" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == [*names, "grid.png"]
    images = np.stack([np.asarray(Image.open(out / n)) for n in names]).astype(int)
    # Examples 0..2 (the first batch) as ClassSampler draws them, rounded as save_image does.
    sample = cs.ClassSampler(*parts, steps=STEPS, guidance=GUIDANCE)
    x_T = sample.noise(len(LABELS), jax.random.key(0))
    unit = (np.asarray(sample.decode(sample.denoise(LABELS, x_T))) + 1.0) / 2.0
    assert np.abs(images[:3] - np.floor(unit * 255 + 0.5)).max() <= 1
    assert np.abs(images[3] - images[0]).max() > 1  # example 3 (class 207 again): its own noise
    assert np.asarray(Image.open(out / "grid.png")).shape == (19, 19, 3)  # 2x2, 1-pixel pads


def test_cli_ddpm_writes_pngs(ckpts, parts, tmp_path, capsys):
    out = tmp_path / "out"
    args = [f"--dit={ckpts[0]}", f"--vae={ckpts[1]}", f"--output={out}", f"--steps={STEPS}"]
    code, stdout, err = _run_cli(capsys, *args, "--sampler=ddpm", "--classes=207,360,999")
    assert code == 0, err
    assert "wrote 4 file(s)" in stdout
    names = [f"{i:06d}.png" for i in range(3)]
    images = np.stack([np.asarray(Image.open(out / n)) for n in names]).astype(int)
    want = cs.ClassSampler(*parts, sampler="ddpm", steps=STEPS)(LABELS, jax.random.key(0))
    assert np.abs(images - np.asarray(want)).max() <= 1


def test_cli_dit_dtype_samples_in_bfloat16(ckpts, parts, tmp_path, capsys):
    out = tmp_path / "out"
    args = [f"--dit={ckpts[0]}", f"--vae={ckpts[1]}", f"--output={out}", f"--steps={STEPS}"]
    code, _, err = _run_cli(capsys, *args, "--classes=207,360,999", "--dit_dtype=bfloat16")
    assert code == 0, err
    images = np.stack([np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(3)])
    bf16 = cs.ClassSampler(*parts, steps=STEPS, dtype="bfloat16")(LABELS, jax.random.key(0))
    f32 = cs.ClassSampler(*parts, steps=STEPS)(LABELS, jax.random.key(0))
    np.testing.assert_array_equal(images, bf16)  # the same programs: the same bytes
    assert not np.array_equal(images, f32)  # one level apart somewhere: bfloat16 really ran


@pytest.fixture(scope="module")
def not_parts(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, root / "other.pt")
    _vae(root / "vae3", latent_channels=3)
    (root / "unet").mkdir()
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    save_file({"conv_in.weight": torch.zeros(1)}, str(root / "unet" / "model.safetensors"))
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir=/tmp"], "--dit and --workdir exclude each other"),
        (["--dit=/no/such/DiT.pt"], "no such file"),
        (["--dit={bad}/other.pt"], "no known architecture"),
        (["--vae={bad}/unet"], "unknown architecture 'UNet2DModel'"),
        (["--vae={dit}"], "a dit checkpoint, not a vae"),
        (["--vae={bad}/vae3"], "the DiT models 4-channel latents, the VAE"),
        (["--classes=3,1000"], "1000 is not a class id of this DiT (0..999)"),
        (["--classes=a,b"], "not a comma-separated list"),
        (["--image_size=256"], "make 8x8 images"),
        (["--sampler=euler"], "choose one of ddim, dpm_solver, ddpm"),
        (["--steps=0"], "--steps=0"),
        (["--input=x.txt"], "--input and --task are for --workdir"),
    ],
)
def test_cli_errors_are_one_line(ckpts, not_parts, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    given = {a.split("=")[0] for a in args}
    base = {
        "--dit": f"--dit={ckpts[0]}",
        "--vae": f"--vae={ckpts[1]}",
        "--classes": "--classes=1,2",
        "--output": f"--output={out}",
    }
    argv = [a.format(bad=not_parts, dit=ckpts[0]) for a in args]
    argv += [v for k, v in base.items() if k not in given]
    code, _, err = _run_cli(capsys, *argv)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()  # nothing written
