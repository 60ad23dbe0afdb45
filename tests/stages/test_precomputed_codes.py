"""generator.precompute_codes: the training batches' code ids are the frozen tokenizer's, and the
iterator over them resumes exactly like every stage's."""

import importlib.util

import flax.linen as nn
import jax
import numpy as np

from crossmodal_jax.experiment import Experiment
from crossmodal_jax.stages import precompute, tokenizer
from crossmodal_jax.stages.objectives import SOURCE_CODES, source_code_ids
from crossmodal_jax.training import sharding
from crossmodal_jax.training.stage import RunContext, abstract_state, fresh_state
from crossmodal_jax.training.step import make_optimizer


def _smoke_config(tmp_path):
    spec = importlib.util.spec_from_file_location("cfg", "configs/img2txt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.generator.update(precompute_codes=True, source_shift=(), source_affine=(0.0, 0.0))
    return config


def test_precomputed_codes_are_the_tokenizers_and_the_iterator_resumes(tmp_path):
    config = _smoke_config(tmp_path)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = sharding.rules_from_config(config.mesh.rules)
    ctx = RunContext(workdir=str(tmp_path / "run"), mesh=mesh, rules=rules, seed=config.seed)
    exp = Experiment.build(config, ctx)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        spec = tokenizer.tokenizer_stage(exp)
        tx, _ = make_optimizer(spec.train_cfg)
        init_fn, _, _ = abstract_state(spec, tx, jax.random.key(0), ctx)
        exp.results["tokenizer"] = fresh_state(spec, init_fn, jax.random.key(0))  # untrained
        make_iterator = precompute.precomputed_codes_iterator_factory(exp, exp.tokenizer)
        it = make_iterator()
        first = [next(it) for _ in range(2)]
        saved = it.get_state()
        later = [next(it) for _ in range(2)]
        resumed = make_iterator()
        resumed.set_state(saved)
        for a, b in zip(later, [next(resumed) for _ in range(2)], strict=True):
            assert a.keys() == {SOURCE_CODES, "text", "text_mask"}
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
            for code_ids, text in zip(batch[SOURCE_CODES], batch["text"], strict=True):
                assert (code_ids.tobytes(), text.tobytes()) in pairs
