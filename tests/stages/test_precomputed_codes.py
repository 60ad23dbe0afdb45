"""generator.precompute_codes: the training batches' code ids are the frozen tokenizer's, and the
iterator over them resumes exactly like every stage's."""

import importlib.util

import flax.linen as nn
import jax
import numpy as np

from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import generators, precompute, tokenizer
from crossmodal_jax.stages.objectives import TOKENIZER_CODES, source_code_ids
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import RunContext, abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer


def _smoke_config(tmp_path, path="configs/img2txt.py"):
    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    if config.task != "text2image":
        config.generator.update(precompute_codes=True, source_shift=(), source_affine=(0.0, 0.0))
    return config


def _experiment(config, tmp_path):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = sharding.rules_from_config(config.mesh.rules)
    ctx = RunContext(workdir=str(tmp_path / "run"), mesh=mesh, rules=rules, seed=config.seed)
    return Experiment.build(config, ctx)


def _fresh(spec, ctx, seed):
    """A stage's freshly initialised (untrained) state, sharded as a run shards it."""
    init_fn, _, _ = abstract_state(
        spec, make_optimizer(spec.train_cfg)[0], jax.random.key(seed), ctx
    )
    return fresh_state(spec, init_fn, jax.random.key(seed))


def test_precomputed_codes_are_the_tokenizers_and_the_iterator_resumes(tmp_path):
    config = _smoke_config(tmp_path)
    exp = _experiment(config, tmp_path)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        exp.results["tokenizer"] = _fresh(tokenizer.tokenizer_stage(exp), exp.ctx, 0)  # untrained
        make_iterator = precompute.precomputed_codes_iterator_factory(exp, exp.tokenizer)
        it = make_iterator()
        first = [next(it) for _ in range(2)]
        saved = it.get_state()
        later = [next(it) for _ in range(2)]
        resumed = make_iterator()
        resumed.set_state(saved)
        for a, b in zip(later, [next(resumed) for _ in range(2)], strict=True):
            assert a.keys() == {TOKENIZER_CODES, "text", "text_mask"}
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        # Every record pairs a training source's code ids, as the tokenizer gives them, with
        # that source's caption.
        train_source, transform = exp.source("train")
        examples = [transform.map(train_source[i]) for i in range(len(train_source))]
        images = np.stack([ex["image"] for ex in examples])
        pad = -len(images) % 8  # whole batches over the 8 test devices
        images = np.concatenate([images, images[:pad]])
        tok_vars = tokenizer.tokenizer_variables(exp)
        ids = np.asarray(source_code_ids(exp.tokenizer, tok_vars, images))[: len(examples)]
        pairs = {(i.tobytes(), ex["text"].tobytes()) for i, ex in zip(ids, examples, strict=True)}
        for batch in first:
            for code_ids, text in zip(batch[TOKENIZER_CODES], batch["text"], strict=True):
                assert (code_ids.tobytes(), text.tobytes()) in pairs


def test_text_to_image_trains_on_precomputed_codes_as_on_the_encoded_images(tmp_path):
    config = _smoke_config(tmp_path, "configs/vqdit_img.py")
    config.generator.precompute_codes = True
    exp = _experiment(config, tmp_path)
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        exp.results["tokenizer"] = _fresh(tokenizer.tokenizer_stage(exp), exp.ctx, 0)
        gen = generators.gaussian_image_stage(exp)
        params = _fresh(gen, exp.ctx, 1).params
        batch = exp.first_examples("train", 8)
        ids = source_code_ids(exp.tokenizer, tokenizer.tokenizer_variables(exp), batch["image"])
        text = {"text": batch["text"], "text_mask": batch["text_mask"]}
        key = jax.random.key(2)
        encoded, _ = gen.objective(params, gen.frozen_state, {"image": batch["image"], **text}, key)
        looked_up, _ = gen.objective(params, gen.frozen_state, {TOKENIZER_CODES: ids, **text}, key)
        np.testing.assert_allclose(looked_up, encoded, rtol=1e-6)
        assert TOKENIZER_CODES in next(gen.make_iterator())


def test_latent_statistics_read_batches_the_devices_can_split(tmp_path):
    # A joint task's few mixture rows (4 in the smoke run) restored on more devices (the 8 test
    # devices): the statistics' batches round up to 8 rows instead of raising IndivisibleError,
    # and a batch the devices split (8) is read as it is, so trained runs keep their statistics.
    config = _smoke_config(tmp_path, "configs/vqdit_img.py")
    exp = _experiment(config, tmp_path)
    assert sharding.data_parallel_size(exp.ctx.mesh) == 8
    with jax.set_mesh(exp.ctx.mesh), nn.logical_axis_rules(exp.ctx.rules):
        exp.results["tokenizer"] = _fresh(tokenizer.tokenizer_stage(exp), exp.ctx, 0)
        tok_vars = tokenizer.tokenizer_variables(exp)
        stats = {}
        for rows in (4, 8):
            config.generator.train.batch_size = rows
            stats[rows] = precompute.latent_statistics(exp, tok_vars, num_batches=2)
        for k in ("mean", "std"):
            np.testing.assert_array_equal(stats[4][k], stats[8][k])
        assert stats[8]["mean"].shape == (exp.tokenizer.code_dim,) and float(stats[8]["std"]) > 0
