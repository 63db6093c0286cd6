"""The README's quick start runs as written (the part after `import torch` only with torch)."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_start_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        src = f.read()
    m = re.search(r"## Quick start\n\n```python\n(.*?)```", src, re.S)
    assert m, "README has no quick start block"
    code = m.group(1)
    head, sep, tail = code.partition("import torch")
    ns = {}
    exec(compile(head, "README quick start", "exec"), ns)  # noqa: S102 - our own README
    assert ns["out"].shape == (8, 100, 64) and ns["o"].shape == (2, 8, 512, 64)
    if sep:
        pytest.importorskip("torch")
        exec(compile(sep + tail, "README quick start (torch)", "exec"), ns)  # noqa: S102
