"""The README's library example runs as written, and the public surface it lists is documented."""

import inspect
import os
import re

import jax
import numpy as np
import pytest

from crossmodal_jax import data, diffusion, image_metrics, models, sharding, step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_MODULES = [models, diffusion, step, sharding, data, image_metrics]


def test_library_example_runs(capsys):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Using it as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    scope: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    state, metrics, batch = scope["state"], scope["metrics"], scope["batch"]
    assert int(state.step) == 20
    assert np.isfinite(float(metrics["loss"])) and float(metrics["worst_mse"]) >= float(
        metrics["loss"]
    )
    # The batch really was split over every device, and the 20 steps moved the weights.
    assert len(batch["image"].sharding.device_set) == jax.device_count() == 8
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        state.params,
        state.ema_params,
    )
    assert max(jax.tree.leaves(moved)) > 0
    assert capsys.readouterr().out.startswith("20 ")


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_public_names_have_docstrings(module):
    undocumented = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # constants and submodules (documented at their definition)
        if not (inspect.getdoc(obj) or "").strip():
            undocumented.append(name)
    assert not undocumented, f"{module.__name__}: no docstring on {undocumented}"
