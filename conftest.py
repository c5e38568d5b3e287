"""Let nbval collect the notebooks, which are stored only as jupytext MyST markdown (.md).

`make test` runs `pytest tests book tutorials --nbval-lax --nbval-current-env`. nbval itself
only collects `.ipynb` files; this hook hands it every `.md` file whose front matter is a jupytext
notebook with a kernelspec (plain markdown pages such as the intro or the bibliography are not
notebooks and are skipped), and reads it through `jupytext.read` instead of `nbformat.read`.
The kernel runs in the notebook's own folder, as it does in the book build.

This touches nbval's collection (IPyNbFile.collect calls `nbformat.read(path, as_version=4)`),
so nbval is pinned in pyproject.toml; re-check this file when bumping it.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

NOTEBOOK_SUFFIXES = {".md"}


def _is_text_notebook(path: Path) -> bool:
    """A jupytext text notebook: YAML front matter with both `jupytext:` and `kernelspec:`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    if end < 0:
        return False
    header = text[3:end]
    keys = {line.split(":", 1)[0].strip() for line in header.splitlines() if line[:1].isalpha()}
    return {"jupytext", "kernelspec"} <= keys


def _nbval_enabled(config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix not in NOTEBOOK_SUFFIXES or not _nbval_enabled(parent.config):
        return None
    if not _is_text_notebook(file_path):
        return None
    return JupytextNotebookFile.from_parent(parent, path=file_path)


try:
    from nbval.plugin import IPyNbFile
except ImportError:  # nbval not installed: the hook above never fires without its options
    IPyNbFile = pytest.File


class JupytextNotebookFile(IPyNbFile):
    """nbval's notebook collector, reading the notebook with jupytext."""

    def collect(self):
        import jupytext
        import nbformat

        real_read = nbformat.read
        text_notebook = str(self.path)

        def read(fp, as_version, **kwargs):
            if str(fp) == text_notebook:
                return nbformat.convert(jupytext.read(text_notebook), as_version)
            return real_read(fp, as_version, **kwargs)

        # pytest consumes this generator in one go, so the patch is only active while collecting.
        with mock.patch.object(nbformat, "read", read):
            yield from super().collect()
