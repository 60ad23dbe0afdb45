"""The README and docs/ stay true: their library examples run as written, the public surface they list is
documented, the README stays a short page, and every path, module, config and make target they name exists."""

import glob
import importlib
import importlib.util
import inspect
import math
import os
import re

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README, *DOCS]
PUBLIC_MODULES = [
    "crossmodal_jax.models",
    "crossmodal_jax.diffusion",
    "crossmodal_jax.training.step",
    "crossmodal_jax.training.sharding",
    "crossmodal_jax.data",
    "crossmodal_jax.evaluation.image_metrics",
]
README_MAX_LINES = 200

# Repository paths as the docs write them: top-level folders of the repository, and package files
# written from inside the package (`training/loop.py` = crossmodal_jax/training/loop.py).
_REPO_PATH = re.compile(
    r"(?<![\w./~<>$-])((?:configs|crossmodal_jax|launch|benchmarks|docs|tests|\.ci)/[\w./*-]*)"
)
_PACKAGE_PATH = re.compile(
    r"(?<![\w./~<>$-])((?:training|stages|evaluation|logs|config|models|diffusion|data)/\w+\.py)\b"
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_PYTHON_M = re.compile(r"python -m (crossmodal_jax(?:\.\w+)+)")
_CONFIG_FLAG = re.compile(r"--config=(configs/[\w./-]+?\.py)(?::([\w,]+))?")
# `make X` where a command starts (not "make" in a sentence of a code comment or string)
_MAKE = re.compile(r"(?:^|[;&|(]\s*|\btime\s+|\bsudo\s+)make\s+([A-Za-z][\w-]*)")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _code(text: str) -> list[str]:
    """Every fenced block and inline code span of a markdown page."""
    blocks = _FENCE.findall(text)
    prose = _FENCE.sub("", text)
    return blocks + _INLINE.findall(prose)


def _section_code(path: str, heading: str) -> str:
    text = _read(path)
    assert f"\n{heading}\n" in text, f"{_rel(path)} has no section {heading!r}"
    section = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block in {_rel(path)}'s section {heading!r}"
    return match[1]


def _exec(code: str, filename: str) -> dict:
    scope: dict = {"__name__": "docs_example"}
    exec(compile(code, filename, "exec"), scope)  # noqa: S102 - our own docs
    return scope


def test_library_example_runs(capsys):
    scope = _exec(
        _section_code(os.path.join(ROOT, "docs", "library.md"), "## Using it as a library"),
        "docs/library.md",
    )
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


def test_readme_library_example_runs(capsys):
    _exec(_section_code(README, "## Use it as a library"), "README.md")
    assert math.isfinite(float(capsys.readouterr().out.split()[-1]))


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_names_have_docstrings(name):
    module = importlib.import_module(name)
    undocumented = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.ismodule(obj) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue  # constants and submodules (documented at their definition)
        if not (inspect.getdoc(obj) or "").strip():
            undocumented.append(attr)
    assert not undocumented, f"{name}: no docstring on {undocumented}"


def test_readme_is_a_short_page():
    lines = _read(README).splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    )


def _named_paths(path: str) -> set[str]:
    """Repository paths (relative to the root) that a page names in code or links to."""
    text = _read(path)
    named = set()
    for code in _code(text):
        for token in _REPO_PATH.findall(code):
            named.add(token)
        for token in _PACKAGE_PATH.findall(code):
            named.add("crossmodal_jax/" + token)
    for target in _LINK.findall(_FENCE.sub("", text)):
        target = target.split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):
            continue  # an anchor of this page, or a URL
        named.add(_rel(os.path.normpath(os.path.join(os.path.dirname(path), target))))
    return {p.rstrip(".,;") for p in named if "..." not in p and p.rstrip(".,;")}


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_named_path_exists(page):
    missing = [p for p in sorted(_named_paths(page)) if not glob.glob(os.path.join(ROOT, p))]
    assert not missing, f"{_rel(page)} names paths that do not exist: {missing}"


def _slugs(path: str) -> set[str]:
    """GitHub's heading anchors of a page."""
    slugs, seen = set(), {}
    for line in _FENCE.sub("", _read(path)).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_anchor_exists(page):
    broken = []
    for target in _LINK.findall(_FENCE.sub("", _read(page))):
        if "#" not in target or re.match(r"[a-z]+:", target):
            continue
        file, anchor = target.split("#", 1)
        linked = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if linked.endswith(".md") and os.path.isfile(linked) and anchor not in _slugs(linked):
            broken.append(target)
    assert not broken, f"{_rel(page)} links to anchors that do not exist: {broken}"


def _make_targets() -> set[str]:
    targets = set()
    for line in _read(os.path.join(ROOT, "Makefile")).splitlines():
        match = re.match(r"([A-Za-z][\w-]*)\s*:(?!=)", line)
        if match:
            targets.add(match[1])
    return targets


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_commands_exist(page):
    targets = _make_targets()
    problems = []
    for code in _code(_read(page)):
        for line in code.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # shell comments are prose
            problems += _module_problems(line) + _config_problems(line)
            problems += [
                f"make {t}: no such Makefile target"
                for t in _MAKE.findall(line)
                if t not in targets
            ]
    assert not problems, f"{_rel(page)}: {problems}"


def _module_problems(line: str) -> list[str]:
    return [
        f"python -m {module}: no module file"
        for module in _PYTHON_M.findall(line)
        if not os.path.isfile(os.path.join(ROOT, *module.split(".")) + ".py")
    ]


def _config_problems(line: str) -> list[str]:
    problems = []
    for config, variants in _CONFIG_FLAG.findall(line):
        file = os.path.join(ROOT, config)
        if not os.path.isfile(file):
            problems.append(f"--config={config}: no such file")
            continue
        if variants:  # the config itself says whether it has them (an unknown one raises)
            try:
                _load_config(file).get_config(variants)
            except ValueError as e:
                problems.append(f"--config={config}:{variants}: {e}")
    return problems


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location(f"_docs_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
