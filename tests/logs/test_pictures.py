"""Pictures people look at: inputs beside their generated captions."""

import numpy as np

from crossmodal_jax.logs.pictures import captioned_pictures


def test_captioned_pictures_show_each_input_beside_its_caption():
    x = np.linspace(-1, 1, 2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    out = captioned_pictures("image", x, ["a red circle", "a blue cross"], ["a red circle", "x"])
    assert out.dtype == np.uint8 and out.shape[0] == 2 * (64 + 4) and out.shape[2] == 3
    text = out[:, 64:]
    red = (text[..., 0] > 150) & (text[..., 1] < 80)
    assert not red[:68].any() and red[68:].any()  # only the wrong caption is drawn in red
