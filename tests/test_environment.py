"""pyproject.toml and environment.yml must list the same packages (and the same exact pins).

environment.yml is for conda users and cannot be exercised in CI, so this test keeps it from
drifting. It is parsed with a tiny reader for the subset of YAML it uses (no PyYAML needed).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# conda-forge name -> PyPI name, where they differ.
CONDA_TO_PYPI = {"pytorch": "torch"}
# Entries of environment.yml that are tooling, not project dependencies.
NOT_DEPENDENCIES = {"python", "pip"}

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def normalise(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.strip().lower())
    return CONDA_TO_PYPI.get(name, name)


def split_spec(spec: str) -> tuple[str, str | None]:
    """'nbval=0.11.0' / 'jupyter-book==1.0.4.post1' / 'torch>=2.2' -> (name, exact pin or None)."""
    spec = spec.split(";")[0].split("#")[0].strip()
    match = _NAME.match(spec)
    assert match, f"cannot parse requirement {spec!r}"
    name, rest = match.groups()
    rest = re.sub(r"\[.*?\]", "", rest).strip()  # drop extras
    pin = re.fullmatch(r"={1,2}\s*([^,<>=!~\s]+)", rest)
    return normalise(name), pin.group(1) if pin else None


def pyproject_requirements() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"core": project["dependencies"], **project["optional-dependencies"]}


def environment_requirements() -> list[str]:
    """The conda and pip entries of environment.yml's `dependencies:` list."""
    specs: list[str] = []
    in_deps = False
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split(" #")[0].rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")):  # a new top-level key
            in_deps = line.startswith("dependencies:")
            continue
        if in_deps:
            item = line.strip()
            assert item.startswith("- "), f"unexpected line in environment.yml: {raw!r}"
            item = item[2:].strip()
            if item != "pip:":
                specs.append(item)
    return specs


def as_pins(specs) -> dict[str, str | None]:
    return dict(split_spec(s) for s in specs)


def test_environment_yml_lists_the_same_packages_as_pyproject():
    groups = pyproject_requirements()
    pyproject = {}
    for specs in groups.values():
        pyproject.update(as_pins(specs))
    env = {k: v for k, v in as_pins(environment_requirements()).items() if k not in NOT_DEPENDENCIES}

    assert sorted(set(pyproject) - set(env)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(env) - set(pyproject)) == [], "in environment.yml but not in pyproject.toml"
    pinned = {name: pin for name, pin in pyproject.items() if pin}
    assert {name: env[name] for name in pinned} == pinned, "exact pins differ"


def test_dev_extra_is_book_plus_test():
    groups = pyproject_requirements()
    assert sorted(groups["dev"]) == sorted(set(groups["book"]) | set(groups["test"]))


def test_torch_is_a_range_not_an_unpinned_name():
    """A bare `torch` lets pip pull a multi-GB CUDA build; keep the lower bound."""
    core = pyproject_requirements()["core"]
    assert any(re.fullmatch(r"torch\s*>=\s*[\d.]+", s) for s in core), core


def test_parser_reads_the_spec_forms_used():
    assert split_spec("nbval=0.11.0") == ("nbval", "0.11.0")
    assert split_spec("jupyter-book==1.0.4.post1") == ("jupyter-book", "1.0.4.post1")
    assert split_spec("pytorch>=2.2") == ("torch", None)
    assert split_spec("Sphinx_Mathjax.Offline") == ("sphinx-mathjax-offline", None)
