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
