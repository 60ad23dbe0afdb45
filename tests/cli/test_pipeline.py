"""crossmodal_jax.pipeline over the joint smoke workdir (configs/shapes_joint.py:smoke, trained
once per test run): batch buckets that compile once, arrays read as the files they would be, and
one-line errors. Its outputs equal the sample CLI's: tests/cli/test_joint_cli.py."""

import jax
import numpy as np
import pytest
from cli_helpers import DEVICES, shapes_inputs
from PIL import Image

from crossmodal_jax import pipeline
from crossmodal_jax.errors import UserError
from crossmodal_jax.pipeline import Pipeline

CONFIG = "configs/shapes_joint.py:smoke"
PROMPTS = ["a red triangle above a cyan cross", "a small blue circle at top left", "a green square"]


@pytest.fixture(scope="module")
def joint(smoke_workdir):
    workdir, _, _ = smoke_workdir(CONFIG)
    # The sample CLI's devices (tests/cli/cli_helpers.DEVICES): the same sharded programs.
    return workdir, Pipeline.from_workdir(workdir, devices=jax.devices()[:DEVICES])


class Lowerings:
    """Counts jitted programs lowered (traced to a new shape or setting) while active."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._event)

    def _event(self, event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            self.count += 1


def test_buckets_cut_a_request_into_few_fixed_sizes():
    assert list(pipeline.chunks(1, (1, 8, 32))) == [(0, 1, 1)]
    assert list(pipeline.chunks(7, (1, 8, 32))) == [(0, 7, 8)]
    assert list(pipeline.chunks(33, (1, 8, 32))) == [(0, 32, 32), (32, 1, 1)]
    assert list(pipeline.chunks(41, (1, 8, 32))) == [(0, 32, 32), (32, 9, 32)]
    assert pipeline.buckets_up_to(32) == (1, 8, 32) and pipeline.buckets_up_to(4) == (1, 4)


def test_the_seed_matters_and_arrays_are_read_as_the_files_they_would_be(joint, tmp_path, data_dir):
    # Equality with the sample CLI's outputs: tests/cli/test_joint_cli.py (one CLI run per task).
    _, pipe = joint
    assert pipe.tasks == ("image2text", "speech2text", "text2image", "video2text")
    images = pipe.generate(PROMPTS, seed=3)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert not np.array_equal(pipe.generate(PROMPTS, seed=4), images)  # the seed matters
    names = shapes_inputs("i2t", tmp_path / "i2t", data_dir)  # 64×64 scenes, resized
    paths = [str(tmp_path / "i2t" / n) for n in names]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    assert pipe.caption(arrays) == pipe.caption(paths)


def test_requests_within_a_bucket_reuse_the_compiled_sampler(joint):
    _, pipe = joint
    pipe.warmup("text2image", steps=2)  # every bucket compiled up front
    lowered = Lowerings()
    for n in (1, 5, 8, 33):  # buckets 1, 8, 8, then 32 + 1
        assert len(pipe.generate(["a red circle"] * n, steps=2)) == n
    assert lowered.count == 0
    pipe.generate(["a red circle"] * 3, steps=3)  # other settings: a sampler of their own
    assert lowered.count > 0


def test_bad_requests_are_one_line_errors(joint, tmp_path):
    _, pipe = joint
    cases = [
        (lambda: pipe.generate(["a purple circle"]), "the word 'purple' is not in the vocabulary"),
        (lambda: pipe.generate(["a red circle"], task="image2text"), "does not read text"),
        (lambda: pipe.caption([np.zeros((5, 5))]), "expected an image [H, W, C], a video"),
        (lambda: pipe.caption(["x.txt"]), "x.txt: not an input file this project reads"),
        (lambda: pipe.caption([]), "no inputs to caption"),
        (lambda: pipe.caption([np.zeros((8, 8, 3), np.float32)]), "uint8 pixels, got float32"),
        (lambda: pipe.generate(["a red circle"], sampler="nope"), "nope"),
        (lambda: pipe.generate(["a red circle"], steps=0), "steps must be at least 1"),
        (lambda: pipe.caption_entries("image2text", [], step=3), "unknown sampler setting 'step'"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")  # a truncated PNG
    with pytest.raises(UserError, match="broken.png"):
        pipe.caption([str(tmp_path / "broken.png")])
