"""Per-attribute accuracy of shapes-world captions."""

import pytest

from crossmodal_jax.data import moving_shapes, shapes
from crossmodal_jax.data.text import TextTokenizer
from crossmodal_jax.evaluation import shapes_judge


def test_every_dataset_caption_parses_into_what_its_record_stores():
    for i in range(200):
        r = shapes.example("test", i)
        p = shapes_judge.parse(r["caption"].decode())
        assert p["count"] == r["count"]
        assert p["color"] == tuple(list(shapes.COLORS)[c] for c in r["colors"][: r["count"]])
        assert p["shape"] == tuple(shapes.SHAPES[s] for s in r["shapes"][: r["count"]])
    p = shapes_judge.parse(moving_shapes.example("novel", 0)["caption"].decode())
    assert p["count"] == 1 and p["direction"] in moving_shapes.DIRECTIONS


def test_the_word_vocabulary_holds_every_caption():
    tok = TextTokenizer(shapes_judge.caption_words())
    captions = [shapes.example(s, i)["caption"].decode() for s in shapes.SPLITS for i in range(100)]
    captions += [moving_shapes.example("train", i)["caption"].decode() for i in range(50)]
    assert not [w for c in captions for w in tok.unknown_words(c)]
    assert max(tok.length(c) for c in captions) == 8  # "a red circle right of a blue square"


def test_attribute_accuracy_scores_each_stated_attribute():
    refs = ["a small red square at top left", "a red circle left of a blue square"]
    hyps = ["a large red square at top left", "a red circle right of a blue cross"]
    acc = shapes_judge.attribute_accuracy(hyps, refs)
    assert acc["parsed"] == 1.0 and acc["count"] == 1.0 and acc["color"] == 1.0
    assert acc["size"] == 0.0 and acc["position"] == 1.0  # over the one-object example only
    assert acc["relation"] == 0.0 and acc["shape"] == 0.5  # the cross is wrong
    assert "direction" not in acc
    garbled = shapes_judge.attribute_accuracy(["red red red", refs[1]], refs)
    assert garbled["parsed"] == 0.5 and garbled["size"] == 0.0 and garbled["count"] == 0.5
    with pytest.raises(ValueError, match="'the digit one' is not a shapes-world caption"):
        shapes_judge.attribute_accuracy(["x"], ["the digit one"])
