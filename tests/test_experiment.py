"""The Experiment: what each shipped config means, derived once."""

import pytest

from configs import img2txt, speech2txt, video2txt, vqdit_img
from crossmodal_jax.errors import UserError
from crossmodal_jax.experiment import local_experiment
from crossmodal_jax.stages.generators import sampler


@pytest.mark.parametrize(
    "module, modality, input_shape, grid",
    [
        (vqdit_img, "image", (8, 8, 1), (4, 4)),
        (img2txt, "image", (8, 8, 1), (8, 8)),
        (speech2txt, "audio", (160, 32, 1), (20, 4)),
        (video2txt, "video", (8, 16, 16, 1), (8, 16, 16)),
    ],
)
def test_every_config_resolves_its_task_shapes_and_grid(module, modality, input_shape, grid):
    config = module.get_config()
    config.data.name = {"audio": "spoken_digits_smoke"}.get(modality, config.data.name)
    exp = local_experiment(config)
    assert exp.modality.name == exp.task.continuous == modality
    assert exp.input_shape == input_shape and exp.latent_grid == grid
    assert exp.tokenizer.num_codes == config.tokenizer.model.num_codes
    assert exp.text.words == tuple(config.data.text_words.split())


def test_the_sampler_is_built_once_per_experiment():
    exp = local_experiment(vqdit_img.get_config("smoke"))
    assert sampler(exp) is sampler(exp)
    assert sampler(local_experiment(vqdit_img.get_config("smoke"))) is not sampler(exp)


def test_bad_tokenizer_strides_and_vocabulary_are_one_line():
    config = video2txt.get_config("smoke")
    config.tokenizer.model.strides = ((2, 2, 2),)
    with pytest.raises(UserError, match="^tokenizer.model: "):
        local_experiment(config)
    config = img2txt.get_config("smoke")
    config.data.text_words = "one one"
    with pytest.raises(UserError, match="^data.text_words: text vocabulary has repeated words"):
        local_experiment(config)


def test_a_sweep_rebuilds_the_sampler_from_the_changed_settings():
    exp = local_experiment(vqdit_img.get_config("smoke"))
    first = sampler(exp)
    exp.config.generator.sample.guidance = 2.0
    assert sampler(exp) is first  # settings are read when the sampler is built ...
    rebuilt = sampler(exp, rebuild=True)  # ... so a sweep rebuilds it
    assert rebuilt is not first and sampler(exp) is rebuilt


def test_the_shapes_world_feeds_a_tokenizer_and_is_evaluated_on_novel_too(tmp_path):
    import flax.linen as nn
    import jax

    from configs import img2txt
    from crossmodal_jax.evaluation.tokenizer_metrics import reconstruction_metrics

    config = img2txt.get_config("smoke")
    config.data.update(name="shapes", data_dir=str(tmp_path), text_words="", text_max_len=40)
    config.eval.update(num_examples=16, batch_size=16)
    exp = local_experiment(config)
    assert exp.dataset.splits == ("train", "test", "novel")
    assert exp.input_shape == (32, 32, 3) and exp.latent_grid == (32, 32)
    batch = exp.first_examples("novel", 4)
    assert (
        batch["image"].shape == (4, 32, 32, 3)
        and -1 <= batch["image"].min() < batch["image"].max() <= 1
    )
    x = batch["image"][:1]
    keys = {"params": jax.random.key(0), "vq": jax.random.key(1)}
    variables = nn.meta.unbox(exp.tokenizer.init(keys, x, train=False))
    with jax.set_mesh(exp.ctx.mesh):  # as in a run
        metrics = reconstruction_metrics(exp, variables, "novel")
    assert {"novel_psnr_db", "novel_codebook_usage", "dead_codes"} <= set(metrics)
