"""One PSNR for training and evaluation."""

import jax.numpy as jnp
import numpy as np

from crossmodal_jax.stages.objectives import psnr


def test_psnr_closed_form_and_the_same_on_host_and_device():
    mse = np.array([0.04, 4.0, 0.0], np.float32)  # [-1, 1] signals: peak-to-peak 2
    host = psnr(mse)
    assert isinstance(host, np.ndarray)
    np.testing.assert_allclose(host[:2], [20.0, 0.0], atol=1e-5)
    assert host[2] == np.float32(10 * np.log10(4.0 / 1e-12))  # clipped, not infinite
    np.testing.assert_allclose(np.asarray(psnr(jnp.asarray(mse))), host, rtol=1e-6)
