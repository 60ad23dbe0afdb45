"""InceptionV3 (pytorch-fid's FID network) in Flax: weight loading, outputs, errors.

Random weights with pytorch-fid's state-dict names stand in for pt_inception-2015-12-05-6726825d.pth
(never downloaded). The torch tests re-implement pytorch-fid's forward with torch.nn.functional on
the same state dict and need torch (the `bench` extra); they are skipped without it.
"""

import functools
import sys

import jax
import numpy as np
import pytest

from crossmodal_jax.errors import CheckpointError, UserError
from crossmodal_jax.models import inception, inception_weights

# Every forward runs 2 images at 32x32 resized to 107 (one compile for the file). 107 leaves 2x2
# maps at Mixed_7b/7c, where E_1's count_include_pad=False average and E_2's max pool differ from
# the alternatives; at the minimum size 75 those maps are 1x1 and every 3x3 pool is exact there.
RESIZE = 107


def _random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    return inception_weights.random_state_dict(seed)


@pytest.fixture(scope="module")
def state_dict():
    return _random_state_dict()


@pytest.fixture(scope="module")
def npz_path(state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception.npz"
    np.savez(path, **state_dict)
    return path


@pytest.fixture(scope="module")
def variables(npz_path):
    return inception_weights.load_inception_params(npz_path)


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, size, size, 3)).astype(np.float32)


def test_state_dict_names_and_shapes():
    shapes = inception_weights.torch_state_dict_shapes()
    # Literal names/shapes of pytorch-fid's file (5 tensors per BasicConv2d, 94 of them, + fc).
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_1a_3x3.bn.running_mean"] == (32,)
    assert shapes["Conv2d_4a_3x3.conv.weight"] == (192, 80, 3, 3)
    assert shapes["Mixed_5b.branch5x5_2.conv.weight"] == (64, 48, 5, 5)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6a.branch3x3.conv.weight"] == (384, 288, 3, 3)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_6e.branch7x7dbl_2.conv.weight"] == (192, 192, 7, 1)
    assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert shapes["Mixed_7b.branch3x3_2a.conv.weight"] == (384, 384, 1, 3)
    assert shapes["Mixed_7c.branch3x3dbl_1.conv.weight"] == (448, 2048, 1, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["Mixed_7c.branch_pool.bn.weight"] == (192,)
    assert shapes["fc.weight"] == (1008, 2048)
    assert shapes["fc.bias"] == (1008,)
    assert len(shapes) == 94 * 5 + 2
    assert not any(k.startswith("AuxLogits") for k in shapes)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 23_885_392


def test_minimum_size_shapes(variables):
    pool, logits = jax.eval_shape(
        lambda v, x: inception.features(v, x, resize_to=inception.MIN_SIZE),
        variables,
        jax.ShapeDtypeStruct((2, 32, 32, 1), np.float32),  # grayscale is repeated to RGB
    )
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)


def test_outputs_shapes_and_batch_invariance(variables, state_dict):
    imgs = _images(3, 32)
    # batch_size 2: batches [0, 1] and [2, zero padding].
    pool, logits = inception.inception_outputs(variables, imgs, batch_size=2, resize_to=RESIZE)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    assert pool.dtype == np.float64 and logits.dtype == np.float64
    assert np.isfinite(pool).all() and np.isfinite(logits).all()
    assert (pool >= 0).all() and pool.std() > 0  # averages of ReLU outputs, not all zero
    assert not np.allclose(pool[0], pool[1])
    # Default logits are fc without its bias (TF Inception Score, torch-fidelity logits_unbiased).
    np.testing.assert_allclose(logits, pool @ state_dict["fc.weight"].T, rtol=1e-4, atol=1e-4)

    # The same images at other batch positions, with and without padding: the same rows.
    pool2, logits2 = inception.inception_outputs(
        variables, imgs[[2, 0]], batch_size=2, resize_to=RESIZE
    )
    np.testing.assert_allclose(pool2, pool[[2, 0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits2, logits[[2, 0]], rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_user_errors(variables):
    with pytest.raises(UserError, match="shape"):
        inception.inception_outputs(variables, np.zeros((2, 32, 32, 4)), resize_to=RESIZE)
    with pytest.raises(UserError, match="minimum 75"):
        inception.inception_outputs(variables, np.zeros((2, 32, 32, 3)), resize_to=64)


# ---- errors ----


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_missing_key(state_dict):
    sd = dict(state_dict)
    del sd["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    with pytest.raises(CheckpointError) as e:
        inception_weights.convert_state_dict(sd, source="w.npz")
    _one_line_error(e, "w.npz", "Mixed_6c.branch7x7dbl_3.bn.running_var", "(160,)")


def test_wrong_shape(state_dict, tmp_path):
    sd = dict(state_dict)
    sd["Mixed_5b.branch_pool.conv.weight"] = np.zeros((64, 192, 1, 1), np.float32)
    path = tmp_path / "bad.npz"
    np.savez(path, **sd)
    with pytest.raises(CheckpointError) as e:
        inception_weights.load_inception_params(path)
    _one_line_error(
        e, str(path), "Mixed_5b.branch_pool.conv.weight", "(64, 192, 1, 1)", "(32, 192, 1, 1)"
    )


def test_torchvision_imagenet_weights_are_named(state_dict):
    sd = dict(state_dict)
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(CheckpointError) as e:
        inception_weights.convert_state_dict(sd)
    _one_line_error(e, "fc.weight", "torchvision", inception_weights.WEIGHTS_FILE)


def test_extra_key_and_num_batches_tracked(state_dict):
    sd = dict(state_dict)
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0, np.int64)  # ignored
    assert inception_weights.convert_state_dict(sd)["params"]["fc"]["kernel"].shape == (2048, 1008)
    sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    with pytest.raises(CheckpointError) as e:
        inception_weights.convert_state_dict(sd)
    _one_line_error(e, "AuxLogits.fc.weight", "(1008, 768)")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "pt_inception.pth"
    with pytest.raises(UserError) as e:
        inception_weights.load_inception_params(path)
    _one_line_error(e, str(path), "no such file")


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    path = tmp_path / "pt_inception.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(CheckpointError) as e:
        inception_weights.load_inception_params(path)
    _one_line_error(e, str(path), ".npz", "np.savez", "torch.load")


# ---- equivalence with pytorch-fid's forward (torch.nn.functional) ----


def _torch_fid_inception(sd, x, *, resize_to):
    """pytorch-fid's InceptionV3 (fid_inception_v3, FIDInception* blocks) + fc, NCHW, from `sd`."""
    import torch
    import torch.nn.functional as F

    w = {k: torch.from_numpy(v) for k, v in sd.items()}

    def conv(x, name, stride=1, padding=0):
        x = F.conv2d(x, w[f"{name}.conv.weight"], stride=stride, padding=padding)
        x = F.batch_norm(
            x, w[f"{name}.bn.running_mean"], w[f"{name}.bn.running_var"],
            w[f"{name}.bn.weight"], w[f"{name}.bn.bias"], training=False, eps=1e-3,
        )  # fmt: skip
        return F.relu(x)

    def avg(x):
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(x, p):
        b1 = conv(x, f"{p}.branch1x1")
        b5 = conv(conv(x, f"{p}.branch5x5_1"), f"{p}.branch5x5_2", padding=2)
        b3 = conv(x, f"{p}.branch3x3dbl_1")
        b3 = conv(conv(b3, f"{p}.branch3x3dbl_2", padding=1), f"{p}.branch3x3dbl_3", padding=1)
        return torch.cat([b1, b5, b3, conv(avg(x), f"{p}.branch_pool")], 1)

    def block_b(x, p):
        b3 = conv(x, f"{p}.branch3x3", stride=2)
        bd = conv(conv(x, f"{p}.branch3x3dbl_1"), f"{p}.branch3x3dbl_2", padding=1)
        bd = conv(bd, f"{p}.branch3x3dbl_3", stride=2)
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)

    def block_c(x, p):
        b1 = conv(x, f"{p}.branch1x1")
        b7 = conv(x, f"{p}.branch7x7_1")
        b7 = conv(b7, f"{p}.branch7x7_2", padding=(0, 3))
        b7 = conv(b7, f"{p}.branch7x7_3", padding=(3, 0))
        bd = conv(x, f"{p}.branch7x7dbl_1")
        for i, pad in zip((2, 3, 4, 5), ((3, 0), (0, 3), (3, 0), (0, 3)), strict=True):
            bd = conv(bd, f"{p}.branch7x7dbl_{i}", padding=pad)
        return torch.cat([b1, b7, bd, conv(avg(x), f"{p}.branch_pool")], 1)

    def block_d(x, p):
        b3 = conv(conv(x, f"{p}.branch3x3_1"), f"{p}.branch3x3_2", stride=2)
        b7 = conv(x, f"{p}.branch7x7x3_1")
        b7 = conv(b7, f"{p}.branch7x7x3_2", padding=(0, 3))
        b7 = conv(b7, f"{p}.branch7x7x3_3", padding=(3, 0))
        b7 = conv(b7, f"{p}.branch7x7x3_4", stride=2)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)

    def block_e(x, p, pool):
        b1 = conv(x, f"{p}.branch1x1")
        b3 = conv(x, f"{p}.branch3x3_1")
        b3 = torch.cat(
            [conv(b3, f"{p}.branch3x3_2a", padding=(0, 1)),
             conv(b3, f"{p}.branch3x3_2b", padding=(1, 0))], 1,
        )  # fmt: skip
        bd = conv(conv(x, f"{p}.branch3x3dbl_1"), f"{p}.branch3x3dbl_2", padding=1)
        bd = torch.cat(
            [conv(bd, f"{p}.branch3x3dbl_3a", padding=(0, 1)),
             conv(bd, f"{p}.branch3x3dbl_3b", padding=(1, 0))], 1,
        )  # fmt: skip
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if pool == "max" else avg(x)
        return torch.cat([b1, b3, bd, conv(pooled, f"{p}.branch_pool")], 1)

    with torch.no_grad():
        x = torch.from_numpy(x).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(resize_to, resize_to), mode="bilinear", align_corners=False)
        x = conv(x, "Conv2d_1a_3x3", stride=2)
        x = conv(x, "Conv2d_2a_3x3")
        x = F.max_pool2d(conv(x, "Conv2d_2b_3x3", padding=1), 3, stride=2)
        x = conv(conv(x, "Conv2d_3b_1x1"), "Conv2d_4a_3x3")
        x = F.max_pool2d(x, 3, stride=2)
        for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = block_a(x, p)
        x = block_b(x, "Mixed_6a")
        for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = block_c(x, p)
        x = block_d(x, "Mixed_7a")
        x = block_e(block_e(x, "Mixed_7b", "avg"), "Mixed_7c", "max")
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        logits = F.linear(pool, w["fc.weight"], w["fc.bias"])
    return pool.double().numpy(), logits.double().numpy()


def test_matches_pytorch_fid_forward(variables, state_dict):
    pytest.importorskip("torch")
    imgs = _images(2, 32, seed=3)
    want_pool, want_logits = _torch_fid_inception(state_dict, imgs, resize_to=RESIZE)
    pool, logits = inception.inception_outputs(variables, imgs, batch_size=2, resize_to=RESIZE)
    # Not a constant: the images' features differ by far more than the tolerance.
    assert np.abs(want_pool[0] - want_pool[1]).max() > 0.01 * np.abs(want_pool).max()
    np.testing.assert_allclose(pool, want_pool, rtol=0, atol=1e-4 * np.abs(want_pool).max())
    # Default logits leave out fc's bias; fc_bias=True adds it (torchvision's fc(x)).
    unbiased = want_logits - state_dict["fc.bias"]
    np.testing.assert_allclose(logits, unbiased, rtol=0, atol=1e-4 * np.abs(unbiased).max())
    biased = inception.FC(with_bias=True).apply(
        {"params": variables["params"]["fc"]}, want_pool.astype(np.float32)
    )
    np.testing.assert_allclose(biased, want_logits, rtol=0, atol=1e-4 * np.abs(want_logits).max())


def test_resize_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    for size in (32, 160):  # up- and downsampling; jax would antialias the latter by default
        imgs = _images(2, size, seed=size)
        got = np.asarray(inception.resize_images(imgs, RESIZE))
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
        want = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_pth_with_torch_equals_npz(variables, state_dict, tmp_path):
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / inception_weights.WEIGHTS_FILE
    torch.save(sd, path)
    got = inception_weights.load_inception_params(path)
    assert jax.tree.structure(got) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluation_reports_fid_and_inception_score_from_the_configured_file(npz_path, monkeypatch):
    """image_generation.inception_metrics with eval.inception_weights: FID of two different sets
    is positive; the score lies in [1, 1008] (identical sets give 0: test_image_metrics.py)."""
    from configs import vqdit_img
    from crossmodal_jax.evaluation import image_generation

    config = vqdit_img.get_config("smoke")
    assert image_generation.inception_metrics(config, None, None) == {}  # no weights: no FID
    config.eval.inception_weights = str(npz_path)
    small = functools.partial(inception.inception_outputs, batch_size=2, resize_to=RESIZE)
    monkeypatch.setattr(inception, "inception_outputs", small)  # the test's compiled size
    real, other = _images(4, 32, seed=3), _images(4, 32, seed=4)  # the shape compiled above
    metrics = image_generation.inception_metrics(config, real, other)
    assert metrics["test_fid"] > 0.0 and 1.0 <= metrics["test_inception_score"] <= 1008.0
