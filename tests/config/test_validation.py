"""Config checks before anything runs: names, impossible combinations, the workdir's config."""

import json
import os

import pytest

from configs import shapes_joint, vqdit_img
from crossmodal_jax import joint_run, tasks
from crossmodal_jax.config import workdir as workdir_lib
from crossmodal_jax.data.modalities import MODALITIES
from crossmodal_jax.errors import UserError
from crossmodal_jax.run import build_experiment
from crossmodal_jax.stages import tokenizer_source
from crossmodal_jax.stages.generators import processes_for


def test_every_task_names_a_tokenizer_modality_and_a_process():
    for task in tasks.TASKS.values():
        assert task.continuous in MODALITIES
        assert processes_for(task.target)
    with pytest.raises(UserError, match="unknown task 'image2sound'"):
        tasks.get_task("image2sound")


def _config(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", f"configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


@pytest.mark.parametrize(
    "config_name, key, value, message",
    [
        ("img2txt", "generator.diffusion.process", "gaussian", "cannot generate text"),
        ("img2txt", "data.name", "moving_digits", "needs a dataset of images"),
        ("video2txt", "generator.diffusion.schedule", "cubic", "unknown masking schedule"),
        ("img2txt", "generator.model.cond_input", "pixels", "unknown condition input"),
        (
            "vqdit_img",
            "generator.model.conditioning",
            "concat",
            r"unknown DiT conditioning 'concat' \(generator.model.conditioning\); available: "
            "in_context, cross_attention, mmdit",
        ),
        ("video2txt", "tokenizer.model.strides", ((2, 2, 2),), "tokenizer.model"),
        (
            "img2txt",
            "generator.model.cond_patch",
            (3, 1),
            "cond_patch=.3, 1. must have one divisor",
        ),
        ("img2txt", "generator.source_shift", (1, 1, 1), "source_shift=.1, 1, 1. needs 2 entries"),
        ("img2txt", "data.text_words", "one two one", "data.text_words: text vocabulary has rep"),
        ("speech2txt", "generator.diffusion.word_mask_prob", 0.5, "each token is already a word"),
        ("img2txt", "generator.code_shift", (1, 1), "code_shift needs generator.precompute_codes"),
        ("speech2txt", "generator.source_shift", (8, 0), "use generator.code_shift .in codes."),
        ("speech2txt", "generator.code_shift", (1, 0, 0), "needs 2 non-negative entries"),
        ("img2txt", "generator.source_affine", (10.0,), "must be .largest angle in degrees"),
        ("video2txt", "generator.source_affine", (10.0, 0.1), "source_affine warps sources"),
        ("video2txt", "generator.model.cond_conv_kernel", (3, 3), "needs 3 sizes >= 1, one per"),
        ("img2txt", "generator.model.cond_conv", (8, 0), "cond_conv=.8, 0. needs widths >= 1"),
        ("img2txt", "generator.model.cond_conv_stride", (2, 2), "cond_conv_stride needs generat"),
        ("shapes_i2t", "generator.model.cond_pool_hidden", 256, "cond_pool_hidden=256 is unused"),
        ("img2txt", "generator.sample.sampler", "beam", "unknown sampler 'beam'.*threshold"),
        ("vqdit_img", "generator.sample.guidance_interval", (0.6, 0.4), "0 <= lo < hi <= 1"),
        ("img2txt", "profile_steps", "5", r"config.profile_steps: expected two step numbers 'a,b'"),
        ("img2txt", "profile_steps", "3,2", r"config.profile_steps: expected 1 <= a <= b"),
        ("img2txt", "peak_tflops", -1.0, "config.peak_tflops: must be >= 0"),
        ("img2txt", "eval.every", -5, "config.eval.every must be >= 0"),
    ],
)
def test_impossible_text_task_configs_are_one_line(tmp_path, config_name, key, value, message):
    config = _config(config_name)
    config.data.data_dir = str(tmp_path / "data")
    section, _, field = key.rpartition(".")
    node = config
    for part in section.split(".") if section else ():
        node = node[part]
    with node.ignore_type():
        node[field] = value
    with pytest.raises(UserError, match=message) as err:
        build_experiment(config, str(tmp_path / "run"))
    assert "\n" not in str(err.value)


def test_masked_sampler_options_are_checked_where_the_sampler_reads_them():
    from crossmodal_jax.config import blocks
    from crossmodal_jax.config.validation import check_masked_sampler

    check_masked_sampler(blocks.sample("masked", threshold=0.0))  # maskgit reads no threshold
    for sampler, key, value in [("threshold", "threshold", 0.0), ("semi_ar", "block_size", 0)]:
        with pytest.raises(UserError, match=rf"generator.sample.{key}={value} must be"):
            check_masked_sampler(blocks.sample("masked", sampler=sampler, **{key: value}))


def test_an_x_to_text_config_may_choose_its_decoding_over_the_block_defaults():
    from configs import img2txt, shapes_i2t, shapes_s2t, shapes_v2t, speech2txt, video2txt
    from crossmodal_jax.config import blocks

    sample = blocks.text_generator(8, sample_overrides=dict(sampler="threshold", steps=6)).sample
    assert (sample.sampler, sample.steps, sample.schedule, sample.temperature) == (
        "threshold",
        6,
        "linear",
        0.0,
    )
    assert blocks.text_generator(8).sample.steps == 8  # the block's default: a token a step
    # The configs measured with threshold decoding decode in fewer steps than tokens.
    for module in (img2txt, speech2txt, video2txt, shapes_i2t, shapes_s2t, shapes_v2t):
        config = module.get_config()
        assert config.generator.sample.sampler == "threshold"
        assert config.generator.sample.steps < config.data.text_max_len


def test_impossible_combinations_are_named(tmp_path):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.generator.train.batch_size = 12
    with pytest.raises(
        UserError,
        match=r"generator.train.batch_size=12 is not divisible by the "
        r"data-parallel size .* 8",
    ):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})
    config.generator.train.batch_size = 16
    config.generator.model.patch_size = 3  # the smoke tokenizer's latent grid is 4x4
    with pytest.raises(
        UserError, match=r"the latent grid 4x4 is not divisible by generator.model.patch_size=3"
    ):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})
    config.generator.model.patch_size = 2
    config.stages = ("generator",)
    with pytest.raises(UserError, match="needs a trained tokenizer"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})


def test_class_labels_and_stored_latents_where_they_cannot_work_are_named(tmp_path):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.data.text_classes = True  # the embedded digits' captions are sentences, not classes
    with pytest.raises(UserError, match="text_classes=True needs a dataset with class labels"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})
    config = _config("img2txt")
    config.data.data_dir = str(tmp_path / "data")
    config.generator.latents.precompute = True
    with pytest.raises(UserError, match="generator.latents.precompute stores the latents"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})


def test_tokenizer_extras_that_cannot_work_are_named(tmp_path):
    config = vqdit_img.get_config("smoke")
    config.data.data_dir = str(tmp_path / "data")
    config.tokenizer.adversarial.perceptual_weights = str(tmp_path / "vgg.npz")
    with pytest.raises(UserError, match=r"tokenizer.adversarial.perceptual_weights=.*no such file"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})
    (tmp_path / "vgg.npz").write_bytes(b"")
    with pytest.raises(UserError, match=r"at least 16x16; this tokenizer's inputs are image"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})  # digits are 8x8
    config.tokenizer.adversarial.perceptual_weights = ""
    config.tokenizer.model.quantizer = "fsq"
    config.tokenizer.model.levels = (8, 2)
    with pytest.raises(UserError, match=r"^tokenizer.model.levels=\(8, 2\): fsq needs"):
        build_experiment(config, str(tmp_path / "run"), {"data": 8})


def test_config_diff_ignores_safe_keys_only():
    old = json.loads(vqdit_img.get_config().to_json_best_effort())
    new = vqdit_img.get_config()
    new.generator.train.steps = 10
    new.eval.samples_per_prompt = 3
    new.update(peak_tflops=989.0, profile_steps="10,12")  # what the logs say, not what trains
    assert workdir_lib.config_diff(old, json.loads(new.to_json_best_effort())) == []
    new.tokenizer.model.num_codes = 64
    assert workdir_lib.config_diff(old, json.loads(new.to_json_best_effort())) == [
        "tokenizer.model.num_codes: 256 -> 64"
    ]


def test_a_workdir_of_an_earlier_version_gets_new_keys_at_their_defaults(tmp_path):
    """A key added to a config block after a workdir was written (here a sampler option and a
    model option) takes its default there: the workdir resumes and samples; a changed value of
    an old key is still refused."""
    config = vqdit_img.get_config()
    old = json.loads(config.to_json_best_effort())
    del old["generator"]["sample"]["guidance_interval"], old["generator"]["model"]["conditioning"]
    del old["peak_tflops"], old["eval"]["every"]  # top-level keys are added too
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = workdir_lib.load_resolved_config(str(tmp_path))
    assert tuple(loaded.generator.sample.guidance_interval) == (0.0, 1.0)
    assert loaded.generator.model.conditioning == "in_context"
    assert (loaded.peak_tflops, loaded.eval.every) == (0.0, 0)
    assert (
        workdir_lib.config_diff(
            workdir_lib.with_new_keys(old), json.loads(config.to_json_best_effort())
        )
        == []
    )
    (tmp_path / "tokenizer" / "checkpoints" / "6").mkdir(parents=True)
    workdir_lib.check_workdir(config, str(tmp_path))
    config.generator.model.depth += 1
    with pytest.raises(UserError, match="generator.model.depth: 4 -> 5"):
        workdir_lib.check_workdir(config, str(tmp_path))


def test_workdir_with_checkpoints_but_no_config_json_is_refused(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "tokenizer" / "checkpoints" / "6").mkdir(parents=True)
    with pytest.raises(UserError) as info:
        workdir_lib.check_workdir(None, str(workdir))  # refused before the config is looked at
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"workdir {workdir} holds tokenizer checkpoints but no config.json" in message
    (workdir / "config.json").write_text('{"task": "image2')  # cut short by a crash
    with pytest.raises(UserError, match="config.json is unreadable"):
        workdir_lib.check_workdir(None, str(workdir))
    empty = tmp_path / "fresh"
    (empty / "tokenizer" / "checkpoints").mkdir(parents=True)  # no step yet: nothing to check
    workdir_lib.check_workdir(None, str(empty))


def test_a_joint_configs_task_configs_have_the_same_safe_keys_and_new_key_defaults(tmp_path):
    config = shapes_joint.get_config()
    old = json.loads(config.to_json_best_effort())
    new = shapes_joint.get_config()
    new.tasks.speech2text.data.data_dir = "/elsewhere"  # where the data is, not what it is
    new.tasks.text2image.generator.sample.steps = 10
    new.generator.train.steps = 9600
    new.generator.model.attention = "einsum"  # another kernel, the same maths
    new.tasks.text2image.generator.model.attention = "xla"
    assert workdir_lib.config_diff(old, json.loads(new.to_json_best_effort())) == []
    new.tasks.video2text.tokenizer.model.num_codes = 64
    new.generator.model.depth = 4
    assert workdir_lib.config_diff(old, json.loads(new.to_json_best_effort())) == [
        "generator.model.depth: 6 -> 4",
        "tasks.video2text.tokenizer.model.num_codes: 256 -> 64",
    ]
    # A joint workdir of an earlier version: its trunk and its tasks' blocks get new keys, and
    # no single-task generator keys are added to the trunk.
    del (
        old["generator"]["model"]["attention"],
        old["tasks"]["image2text"]["generator"]["sample"]["threshold"],
        old["generator"]["loss_weights"],
    )
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = workdir_lib.load_resolved_config(str(tmp_path))
    assert loaded.generator.model.attention == "auto" and "patch_size" not in loaded.generator.model
    assert loaded.tasks.image2text.generator.sample.threshold == 0.9
    assert dict(loaded.generator.loss_weights) == {name: 1.0 for name in config.tasks}


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"text2image": 2.0}, "generator.loss_weights names tasks ['text2image'], config.tasks"),
        ({"speech2text": -1.0}, "generator.loss_weights.speech2text=-1.0: a finite number >= 0"),
        ({"image2text": float("nan")}, "generator.loss_weights.image2text=nan: a finite number"),
        ({t: 0.0 for t in shapes_joint.TASK_CONFIGS}, "generator.loss_weights: every weight is 0"),
    ],
)
def test_bad_joint_loss_weights_are_one_line_errors(weights, message):
    config = shapes_joint.get_config("smoke")
    if len(weights) == 1 and "text2image" in weights:
        config.generator.loss_weights = weights
    else:
        config.generator.loss_weights.update(weights)
    with pytest.raises(UserError) as e:
        joint_run.check_joint(config)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_tokenizer_from_another_workdir_is_checked_in_one_line(tmp_path):
    config = shapes_joint.get_config("smoke")
    t2i = joint_run.task_config(config, "text2image")

    def source(name, cfg):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "config.json").write_text(cfg.to_json_best_effort())
        return str(tmp_path / name)

    def check(path):
        t2i.tokenizer_from = path
        tokenizer_source.check_tokenizer_source("tokenizer_from.text2image", t2i)

    def error(path):
        with pytest.raises(UserError) as e:
            check(path)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "no config.json there" in error(str(tmp_path / "none"))
    assert "is a joint workdir; name its task's folder" in error(source("joint", config))
    speech = shapes_joint.task_config("shapes_s2t.py", "smoke")
    assert "trained on 'spoken_shapes_smoke', text2image reads 'shapes'" in error(
        source("s2t", speech)
    )
    other = shapes_joint.task_config("shapes_t2i.py", "smoke")  # VQ: the smoke's t2i is FSQ
    assert "its tokenizer model differs from this run's: tokenizer.model." in error(
        source("vq", other)
    )
    check(source("same", t2i))  # no error
    config.tokenizer_from.image2text = "runs/elsewhere"  # image2text already borrows (tokenizer_of)
    with pytest.raises(UserError, match="tokenizer_from.image2text and tokenizer_of.image2text"):
        joint_run.check_joint(config)


@pytest.mark.parametrize(
    "key, message",
    [
        ("tokenizer_from", "tasks.text2image.tokenizer_from: set tokenizer_from.text2image"),
        ("text_encoder", "tasks.text2image.text_encoder: a pretrained text encoder is not"),
    ],
)
def test_joint_tasks_take_no_parts_of_their_own(key, message):
    config = shapes_joint.get_config("smoke")
    config.tasks.text2image[key] = "/models/part"
    with pytest.raises(UserError) as e:
        joint_run.check_joint(config)
    assert message in str(e.value) and "\n" not in str(e.value)
