"""The README's library example runs as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_library_example_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Using it as a library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert int(scope["state"].step) == 1
    assert float(scope["metrics"]["loss"]) == 4.0  # ((0 * 1 - 2) ** 2).mean() before the update
