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
    hyps = ["a large red square at top left", "a red circle above a blue cross"]
    acc = shapes_judge.attribute_accuracy(hyps, refs)
    assert acc["parsed"] == 1.0 and acc["count"] == 1.0 and acc["color"] == 1.0
    assert acc["size"] == 0.0 and acc["position"] == 1.0  # over the one-object example only
    assert acc["relation"] == 0.0 and acc["shape"] == 0.5  # the cross is wrong
    assert acc["all"] == 0.0 and acc["all_one_object"] == 0.0 and acc["all_two_objects"] == 0.0
    acc = shapes_judge.attribute_accuracy([refs[0], hyps[1]], refs)
    assert acc["all"] == 0.5 and acc["all_one_object"] == 1.0 and acc["all_two_objects"] == 0.0
    assert "direction" not in acc
    garbled = shapes_judge.attribute_accuracy(["red red red", refs[1]], refs)
    assert garbled["parsed"] == 0.5 and garbled["size"] == 0.0 and garbled["count"] == 0.5
    with pytest.raises(ValueError, match="'the digit one' is not a shapes-world caption"):
        shapes_judge.attribute_accuracy(["x"], ["the digit one"])


def test_a_two_object_caption_and_its_converse_are_the_same_picture():
    caption = "a red circle left of a blue square"
    assert shapes_judge.converse(caption) == "a blue square right of a red circle"
    assert shapes_judge.converse(shapes_judge.converse(caption)) == caption
    assert shapes_judge.converse("a small red square at top") == "a small red square at top"
    acc = shapes_judge.attribute_accuracy([shapes_judge.converse(caption)], [caption])
    assert acc["all"] == acc["relation"] == acc["color"] == 1.0
    swapped = "a blue circle left of a red square"  # colours bound to the wrong shapes
    acc = shapes_judge.attribute_accuracy([swapped], [caption])
    assert acc["relation"] == 1.0 and acc["color"] == 0.0 and acc["all"] == 0.0
    refs = shapes_judge.MULTI_REFERENCES["shapes"](caption, 0)
    assert refs == [caption, "a blue square right of a red circle"]


def test_detector_outputs_are_scored_like_parsed_captions():
    stated = {"count": 1, "color": ("red",), "shape": ("square",), "size": "small"}
    acc = shapes_judge.attribute_accuracy(
        [{**stated, "position": "top"}, None], ["a small red square at top"] * 2
    )
    assert acc["all"] == 0.5 and acc["parsed"] == 0.5 and acc["position"] == 0.5


def test_the_judges_canonical_form_is_the_datasets_canonical_caption():
    for i in range(100):
        caption = shapes.example("train", i)["caption"].decode()
        for c in (caption, shapes_judge.converse(caption)):
            expected = shapes_judge.parse(shapes.canonical_caption(c))
            assert shapes_judge.canonical(shapes_judge.parse(c)) == expected
