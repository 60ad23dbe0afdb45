"""FID and Inception Score of N generated images, across every device and process, with no host
holding all of them (evaluation/distribution_stats.py, fid_eval.py).

A converted facebookresearch DiT (the DiT paper's FID-50K; sample i: class i % 1000, its own key):
    python -m crossmodal_jax.evaluate --dit=DiT-XL-2-256x256.pt --vae=sd-vae-ft-ema \
        --num_samples=50000 --reference=VIRTUAL_imagenet256_labeled.npz \
        --inception_weights=pt_inception-2015-12-05-6726825d.pth --output=metrics.json \
        [--sampler=ddpm|ddim|dpm_solver] [--steps=250] [--guidance=1.5]
    -> {"fid", "inception_score", "inception_score_std", "num_samples"} in --output.

A finished text→image run (captions of its test split dealt i mod their count): its image
metrics only, merged into DIR/metrics.json (or --output); the reference is --reference, else
eval.reference_stats, else the test split's real images:
    python -m crossmodal_jax.evaluate --workdir=DIR --num_samples=50000 \
        --inception_weights=inception.npz [--reference=ref.npz]
Reference statistics of a run's test split (e.g. COCO's val), in ADM's .npz layout:
    python -m crossmodal_jax.evaluate --workdir=DIR --inception_weights=inception.npz \
        --write_reference=coco_val.npz

Multi-process: --coordinator_address, --num_processes, --process_id (or --distributed), as main.
Flags are defined when the CLI runs (`run_main`), not at import: main and sample define some of
the same names, and the tests import those in-process.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from crossmodal_jax.errors import UserError, exit_alone, fail, one_line

FLAGS = flags.FLAGS
_DIT_DEFAULTS = {"batch_size": 64, "guidance": 1.5, "sampler": "ddpm", "seed": 0}  # DiT's FID-50K
# --features: the feature network, and the dimension of its pool features (of the reference).
FEATURES = {"inception": 2048, "random_projection": 64}


def define_flags() -> None:
    s, i, f = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_float
    s("workdir", None, "A finished text→image run to evaluate (instead of --dit).")
    s("dit", None, "A class-conditional DiT (facebookresearch .pt or diffusers folder).")
    s("vae", None, "With --dit: the KL VAE folder (e.g. sd-vae-ft-ema).")
    i("num_samples", None, "Images generated (--dit: 50000; --workdir: eval.num_samples).")
    s("reference", None, "Reference statistics: an .npz with mu and sigma (ADM's layout).")
    s("inception_weights", None, "pytorch-fid's InceptionV3 weights (.pth with torch, or .npz).")
    s("output", None, "JSON file of the metrics (--workdir: default DIR/metrics.json, merged).")
    s("write_reference", None, "With --workdir: write its test split's statistics to this .npz.")
    s("sampler", None, "With --dit: ddpm (250 steps, default), ddim (50) or dpm_solver (25).")
    i("steps", None, "Sampler steps (default: the sampler's, or the run's config).")
    f("guidance", None, "Classifier-free guidance (--dit: 1.5; --workdir: the run's config).")
    i("seed", None, "Seed of the sampling noise (--dit: 0; --workdir: the run's seed).")
    i("batch_size", None, "Global batch of a generation step (--dit: 64; else eval.batch_size).")
    i("inception_splits", 0, "Inception Score splits; 0 = one per 5,000 samples (ADM's).")
    s("features", "inception", "inception, or random_projection: a stand-in for plumbing tests.")
    s("coordinator_address", None, "host:port of process 0.")
    i("num_processes", None, "Processes in a multi-process run.")
    i("process_id", None, "This process's index.")
    flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the environment.")


def check_flags() -> str:
    """Which mode ("dit" or "workdir"), or a one-line UserError naming the flag."""
    if bool(FLAGS.workdir) == bool(FLAGS.dit):
        raise UserError(
            "name one of --workdir=DIR (a finished text→image run) or --dit=CKPT --vae=FOLDER"
        )
    given = lambda *names: [n for n in names if FLAGS[n].value is not None]
    if FLAGS.features not in FEATURES:
        raise UserError(f"--features={FLAGS.features}: choose one of {', '.join(FEATURES)}")
    if FLAGS.dit:
        needed = ("vae", "reference", "output")
        needed += ("inception_weights",) if FLAGS.features == "inception" else ()
        missing = [n for n in needed if not given(n)]
        if missing:
            raise UserError(f"--dit needs --{', --'.join(missing)}")
        if FLAGS.write_reference:
            raise UserError("--write_reference is for --workdir (its test split's real images)")
    elif given("vae", "sampler"):
        raise UserError(f"--{given('vae', 'sampler')[0]} is for --dit")
    if FLAGS.num_samples is not None and FLAGS.num_samples < 2:
        raise UserError(f"--num_samples={FLAGS.num_samples}: FID needs at least 2 samples")
    if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be >= 1")
    for name in ("inception_weights", "reference"):
        path = FLAGS[name].value
        if path and not os.path.isfile(path):
            raise UserError(f"--{name}={path}: no such file")
    return "dit" if FLAGS.dit else "workdir"


def _features(weights: str, mesh):
    from crossmodal_jax.evaluation import fid_eval
    from crossmodal_jax.models import inception_weights

    if FLAGS.features == "random_projection":
        return fid_eval.projection_features(mesh)
    return fid_eval.inception_features(inception_weights.load_inception_params(weights), mesh)


def evaluate_dit() -> dict[str, float]:
    import jax

    from crossmodal_jax.config import blocks
    from crossmodal_jax.evaluation import distribution_stats as ds
    from crossmodal_jax.evaluation import fid_eval
    from crossmodal_jax.pretrained import class_sampler
    from crossmodal_jax.training import compile_cache, sharding

    compile_cache.enable(blocks.monitoring().compilation_cache_dir)  # the configs' default
    reference = ds.load_reference(FLAGS.reference, FEATURES[FLAGS.features])  # before compute
    value = lambda name: _DIT_DEFAULTS[name] if FLAGS[name].value is None else FLAGS[name].value
    class_sampler.sampler_timesteps(value("sampler"), FLAGS.steps)  # a bad one: before loading
    dit, vae = class_sampler.load_parts(FLAGS.dit, FLAGS.vae)
    sample = class_sampler.ClassSampler(
        dit, vae, sampler=value("sampler"), steps=FLAGS.steps, guidance=value("guidance")
    )
    mesh = sharding.make_mesh({"data": -1})
    num_samples = FLAGS.num_samples or 50_000
    metrics, _ = ds.evaluate_generated(
        fid_eval.class_generator(sample, jax.random.key(value("seed")), mesh),
        _features(FLAGS.inception_weights, mesh),
        num_samples,
        conditions=fid_eval.class_conditions(sample.num_classes),
        batch_size=value("batch_size"),
        mesh=mesh,
        reference=reference,
        splits=FLAGS.inception_splits,
    )
    return {**metrics, "num_samples": num_samples}


def evaluate_workdir() -> dict[str, float]:
    import flax.linen as nn
    import jax

    from crossmodal_jax import tasks
    from crossmodal_jax.config.workdir import load_resolved_config
    from crossmodal_jax.evaluation import distribution_stats as ds
    from crossmodal_jax.evaluation import fid_eval
    from crossmodal_jax.experiment import local_experiment
    from crossmodal_jax.stages.generators import generator_stage, sampler
    from crossmodal_jax.stages.tokenizer_source import attach_tokenizer
    from crossmodal_jax.training import compile_cache
    from crossmodal_jax.training.stage import restore_stage_state

    config = load_resolved_config(FLAGS.workdir)
    compile_cache.enable(config.compilation_cache_dir)  # the run's
    if config.task == tasks.JOINT or tasks.get_task(config.task).target != "image":
        raise UserError(f"--workdir={FLAGS.workdir}: not a single-task text→image run")
    ev = config.eval
    ev.inception_weights = FLAGS.inception_weights or ev.inception_weights
    ev.reference_stats = FLAGS.reference or ev.reference_stats
    ev.num_samples = FLAGS.num_samples or ev.num_samples
    ev.batch_size = FLAGS.batch_size or ev.batch_size
    for name in ("guidance", "steps"):
        if FLAGS[name].value is not None:
            config.generator.sample[name] = FLAGS[name].value
    config.seed = config.seed if FLAGS.seed is None else FLAGS.seed
    if not ev.inception_weights and FLAGS.features == "inception":
        raise UserError("name --inception_weights (this run's eval.inception_weights is empty)")
    if ev.reference_stats:
        ds.load_reference(ev.reference_stats, FEATURES[FLAGS.features])  # before any compute
    if not (FLAGS.write_reference or ev.num_samples >= 2):
        raise UserError("name --num_samples (this run's eval.num_samples is 0)")
    exp = local_experiment(config, FLAGS.workdir)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        if FLAGS.write_reference:
            features = _features(ev.inception_weights, exp.ctx.mesh)
            stats = fid_eval.split_statistics(exp, features, limit=ev.num_examples)
            ds.write_reference(FLAGS.write_reference, stats)
            return {}
        attach_tokenizer(exp)
        try:
            state = restore_stage_state(generator_stage(exp), exp.ctx)
        except FileNotFoundError as e:
            raise UserError(one_line(e)) from e
        features = _features(ev.inception_weights, exp.ctx.mesh)
        return fid_eval.fid_metrics(
            exp, state, sampler(exp), features=features, splits=FLAGS.inception_splits
        )


def write_metrics(path: str, metrics: dict[str, float], merge: bool) -> None:
    """Process 0 writes `metrics` (over what `path` holds when `merge`) through a renamed temp."""
    import jax

    if jax.process_index() != 0:
        return
    old = {}
    if merge and os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump({**old, **metrics}, f, indent=2, sort_keys=True)
    os.replace(f"{path}.tmp", path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        mode = check_flags()
    except UserError as e:
        fail(one_line(e))
    import jax

    from crossmodal_jax import processes
    from crossmodal_jax.logs.writers import quiet_library_logs

    quiet_library_logs()
    processes.start(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed
    )
    try:
        metrics = evaluate_dit() if mode == "dit" else evaluate_workdir()
        if FLAGS.write_reference:
            print(f"wrote reference statistics to {FLAGS.write_reference}")
            return
        output = FLAGS.output or os.path.join(FLAGS.workdir, "metrics.json")
        write_metrics(output, metrics, merge=mode == "workdir")
        print(json.dumps(metrics))
    except Exception as e:
        if jax.process_count() > 1:
            exit_alone(e)
        if isinstance(e, UserError):
            fail(one_line(e))
        raise


def run_main() -> None:
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run_main()
