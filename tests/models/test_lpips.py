"""LPIPS (VGG16) against a torch LPIPS built the way torchvision and the lpips package build theirs,
its weights file read without pickle, and the perceptual term in the tokenizer's objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal_jax.models.lpips import (
    abstract_lpips_params,
    load_lpips_params,
    lpips_distance,
)

# torchvision's vgg16 "D" configuration, and the lpips package's five slices of its `features`.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
LPIPS_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]


def _torch_lpips(state: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers, c_in = [], 3
    for v in VGG16_CFG:  # torchvision.models.vgg.make_layers(cfg "D", batch_norm=False)
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    features = nn.Sequential(*layers)
    features.load_state_dict(
        {k[len("features.") :]: torch.from_numpy(v) for k, v in state.items() if "features" in k}
    )
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    with torch.no_grad():
        out = []
        for a in (x, y):
            h = torch.from_numpy(a).permute(0, 3, 1, 2).repeat(1, 3 // a.shape[-1], 1, 1) - shift
            h, taps = h / scale, []
            for lo, hi in LPIPS_SLICES:
                h = features[lo:hi](h)
                taps.append(h)
            out.append(taps)
        total = 0
        for k, (f0, f1) in enumerate(zip(*out, strict=True)):
            n0 = f0 / (torch.sqrt(torch.sum(f0**2, dim=1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt(torch.sum(f1**2, dim=1, keepdim=True)) + 1e-10)
            lin = torch.from_numpy(state[f"lin{k}.model.1.weight"])
            total = total + torch.nn.functional.conv2d((n0 - n1) ** 2, lin).mean(dim=(2, 3))
    return total[:, 0].numpy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random VGG16 + heads in torch layout (He-scaled so features stay O(1) through 13 layers)."""
    rng = np.random.default_rng(0)
    state, c_in, index = {}, 3, 0
    for v in VGG16_CFG:
        if v == "M":
            index += 1
            continue
        std = np.sqrt(2.0 / (9 * c_in))
        state[f"features.{index}.weight"] = (rng.normal(size=(v, c_in, 3, 3)) * std).astype(
            np.float32
        )
        state[f"features.{index}.bias"] = (rng.normal(size=(v,)) * 0.01).astype(np.float32)
        c_in, index = v, index + 2
    for k, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = rng.uniform(0, 0.1, (1, c, 1, 1)).astype(np.float32)
    path = tmp_path_factory.mktemp("lpips") / "vgg_lpips.npz"
    np.savez(path, **state)
    return str(path), state


@pytest.mark.parametrize("channels", [3, 1])
def test_lpips_equals_a_torch_lpips_on_the_same_weights(weights, channels):
    path, state = weights
    rng = np.random.default_rng(1)
    x, y = (rng.uniform(-1, 1, (2, 16, 16, channels)).astype(np.float32) for _ in range(2))
    params = load_lpips_params(path)
    ours = np.asarray(jax.jit(lpips_distance)(params, jnp.asarray(x), jnp.asarray(y)))
    np.testing.assert_allclose(ours, _torch_lpips(state, x, y), rtol=1e-4)
    assert np.all(ours > 0)
    same = jax.jit(lpips_distance)(params, jnp.asarray(x), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-7)
    # The restore target has the loaded tree's structure, shapes and dtypes.
    abstract = abstract_lpips_params()
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape, params)


def test_lpips_weights_problems_are_one_line_naming_the_file_and_key(weights, tmp_path):
    path, state = weights
    missing = {k: v for k, v in state.items() if k != "lin3.model.1.weight"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"no array 'lin3\.model\.1\.weight'") as e:
        load_lpips_params(tmp_path / "missing.npz")
    assert "missing.npz" in str(e.value) and "\n" not in str(e.value)
    wrong = {**state, "features.0.bias": np.zeros((3,), np.float32)}
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match=r"'features\.0\.bias' has shape \(3,\), expected \(64,\)"):
        load_lpips_params(tmp_path / "wrong.npz")
    np.savez(tmp_path / "pickled.npz", **{**state, "extra": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="not a readable .npz of arrays"):
        load_lpips_params(tmp_path / "pickled.npz")  # an object array needs pickle: refused
    with pytest.raises(ValueError, match=r"at least 16x16"):
        lpips_distance(load_lpips_params(path), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))


def test_the_perceptual_term_adds_its_weighted_lpips_to_the_tokenizer_loss(weights):
    from crossmodal_jax.models.vqvae import VQVAE
    from crossmodal_jax.stages.objectives import PERCEPTUAL, vqvae_objective

    model = VQVAE(in_channels=3, channels=4, channel_mult=(1, 2), code_dim=4, num_codes=8)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    variables = model.init(jax.random.key(1), x[:1], train=False)
    lpips = load_lpips_params(weights[0])
    batch, key = {"image": x}, jax.random.key(2)

    def run(objective, state):
        fn = jax.jit(jax.value_and_grad(objective, has_aux=True))
        return fn(variables["params"], state, batch, key)

    stats = {"vq_stats": variables["vq_stats"]}
    (plain, (_, m0)), g0 = run(vqvae_objective(model), stats)
    (loss, (state, m1)), g1 = run(
        vqvae_objective(model, perceptual_weight=0.5), {**stats, PERCEPTUAL: lpips}
    )
    x_rec = model.apply(variables, x, train=False)[0]
    want = float(jnp.mean(lpips_distance(lpips, x, x_rec)))
    np.testing.assert_allclose(float(m1["perceptual_loss"]), want, rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(plain) + 0.5 * want, rtol=1e-5)
    assert PERCEPTUAL in state  # carried along, untouched
    delta = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)
    assert max(jax.tree.leaves(delta)) > 0  # its gradient reaches the tokenizer
