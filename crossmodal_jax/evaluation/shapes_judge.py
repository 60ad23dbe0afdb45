"""What a caption of the shapes world states, and how many of its attributes a generated caption
gets right: the per-attribute accuracy of X→text on `shapes`, `moving_shapes` and `spoken_shapes`.

A caption parses into count, colours, shapes, and size and position (one object), relation (two
objects) or direction (a moving object). A generated caption that does not parse gets every
attribute wrong; an attribute its reference does not state is not scored.

A two-object scene has two right captions: `a red circle left of a blue square` and its converse
`a blue square right of a red circle` show the same picture (the objects never overlap, so nothing
in the image says which was drawn first). Captions are therefore compared in canonical form
(`canonical`: relation `left of` or `above`, the objects in that order), and the converse is a
reference of every two-object image (`MULTI_REFERENCES`). Speech is not ambiguous: a transcript is
scored against the words spoken.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from crossmodal_jax.data import moving_shapes, shapes

_COLOR = "|".join(shapes.COLORS)
_SHAPE = "|".join(shapes.SHAPES)
_GRAMMARS = (
    re.compile(
        rf"^a (?P<size>small|large) (?P<color>{_COLOR}) (?P<shape>{_SHAPE}) "
        rf"at (?P<position>{'|'.join(shapes.POSITIONS.values())})$"
    ),
    re.compile(
        rf"^a (?P<color>{_COLOR}) (?P<shape>{_SHAPE}) (?P<relation>{'|'.join(shapes.RELATIONS)}) "
        rf"a (?P<color2>{_COLOR}) (?P<shape2>{_SHAPE})$"
    ),
    re.compile(
        rf"^a (?P<color>{_COLOR}) (?P<shape>{_SHAPE}) "
        rf"moves (?P<direction>{'|'.join(moving_shapes.DIRECTIONS)})$"
    ),
)
ATTRIBUTES = ("count", "color", "shape", "size", "position", "relation", "direction")
# Datasets whose captions this judge reads.
DATASETS = (
    "shapes",
    "moving_shapes",
    "moving_shapes_smoke",
    "spoken_shapes",
    "spoken_shapes_smoke",
)


def caption_words() -> tuple[str, ...]:
    """Every word the shapes world's captions use (a word vocabulary for the caption tokenizer)."""
    words = ["a", "at", "of", "moves", *shapes.SIZES, *shapes.COLORS, *shapes.SHAPES]
    words += [
        w for phrase in (*shapes.POSITIONS.values(), *shapes.RELATIONS) for w in phrase.split()
    ]
    words += list(moving_shapes.DIRECTIONS)
    return tuple(dict.fromkeys(words))


def parse(caption: str) -> dict[str, object] | None:
    """The attributes a caption states ({"count": 1, "color": ("red",), ...}); None if it follows
    none of the grammars."""
    text = " ".join(caption.lower().split())
    for grammar in _GRAMMARS:
        m = grammar.match(text)
        if not m:
            continue
        g = m.groupdict()
        out: dict[str, object] = {}
        if "color2" in g:
            out.update(count=2, color=(g["color"], g["color2"]), shape=(g["shape"], g["shape2"]))
        else:
            out.update(count=1, color=(g["color"],), shape=(g["shape"],))
        out.update({k: g[k] for k in ("size", "position", "relation", "direction") if k in g})
        return out
    return None


def canonical(parsed: dict[str, object] | None) -> dict[str, object] | None:
    """A parsed caption with a two-object relation written as `left of` or `above` (the objects
    swapped where it said `right of` or `below`): one form per picture."""
    if parsed is None or parsed.get("relation") not in ("right of", "below"):
        return parsed
    return {
        **parsed,
        "color": tuple(reversed(parsed["color"])),
        "shape": tuple(reversed(parsed["shape"])),
        "relation": shapes.CONVERSE[parsed["relation"]],
    }


def converse(caption: str) -> str:
    """`a X <relation> a Y` -> `a Y <converse relation> a X`; other captions unchanged."""
    p = parse(caption)
    if p is None or "relation" not in p:
        return caption
    (c1, c2), (s1, s2) = p["color"], p["shape"]
    return f"a {c2} {s2} {shapes.CONVERSE[p['relation']]} a {c1} {s1}"


def attribute_accuracy(
    hypotheses: Sequence[str | dict | None], references: Sequence[str]
) -> dict[str, float]:
    """Per attribute, the fraction of examples whose hypothesis states it as the reference does
    (over the examples whose reference states it), in canonical form; `all`: every attribute the
    reference states is right (and `all_one_object`, `all_two_objects`: the same over each kind of
    scene, where both occur); `parsed`: the fraction of hypotheses that parse. A hypothesis is a
    caption, or the attributes a detector read off an image (a dict like `parse`'s, or None)."""
    refs = [canonical(parse(r)) for r in references]
    if any(r is None for r in refs):
        bad = references[[r is None for r in refs].index(True)]
        raise ValueError(f"reference caption {bad!r} is not a shapes-world caption")
    hyps = [canonical(h if h is None or isinstance(h, dict) else parse(h)) for h in hypotheses]
    out = {"parsed": float(np.mean([h is not None for h in hyps]))}
    for attr in ATTRIBUTES:
        hits = [
            (h or {}).get(attr) == r[attr] for h, r in zip(hyps, refs, strict=True) if attr in r
        ]
        if hits:
            out[attr] = float(np.mean(hits))
    right = [
        h is not None and all(h.get(k) == v for k, v in r.items())
        for h, r in zip(hyps, refs, strict=True)
    ]
    out["all"] = float(np.mean(right))
    for count, name in ((1, "all_one_object"), (2, "all_two_objects")):
        kind = [ok for ok, r in zip(right, refs, strict=True) if r["count"] == count]
        if kind and len(kind) < len(refs):  # both kinds present: each one's share
            out[name] = float(np.mean(kind))
    return out


def _references(caption: str, label: int) -> list[str]:
    converse_caption = converse(caption)
    return [caption] if converse_caption == caption else [caption, converse_caption]


# Datasets whose examples have several right captions (evaluate.py scores against all of them).
MULTI_REFERENCES = {"shapes": _references}
