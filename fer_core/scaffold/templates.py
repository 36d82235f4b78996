"""The files of a new plugin package other than its example component (``string.Template`` sources)."""

from __future__ import annotations

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$summary, for fer-core"
readme = "README.md"
requires-python = ">=3.11"
license = "MIT"
license-files = ["LICENSE"]
dependencies = ["fer-core[torch]>=$core_version", $dependencies]

[project.optional-dependencies]
test = ["pytest>=8"]

# Point these at your repository before publishing (absolute links: they show on the package index).
[project.urls]
Homepage = "https://pypi.org/project/$dist/"

# fer-core finds the plugin through this entry point: <entry-point name> = "<hook module>"
[project.entry-points.fer_core]
$entry = "$package"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
$package = ["py.typed"]

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
testpaths = ["tests"]
'''

HOOKS = '''\
"""$dist: hook implementations only (importing this must stay cheap: no torch).

fer-core calls ``$hook`` once when it builds its component registry. The target
"$package.$module:build_$component" is imported only when a recipe builds the component.
"""

from fer_core import hookimpl


@hookimpl
def $hook(register):
    register(
        "$component",
        "$package.$module:build_$component",
        summary="$summary",
    )
'''

TESTS = '''\
"""Tests of $dist: fer-core's conformance suite, then the example's own behaviour."""

import pytest
import torch

from fer_core.testing import check_$kind, check_plugin

pytestmark = pytest.mark.usefixtures("one_thread")  # a fixture of fer-core's pytest plugin


def test_plugin_loads_alone_and_imports_no_torch():
    check_plugin("$dist")


def test_${component}_conforms():
    # registers under its name, builds from recipe parameters, shapes and dtypes, devices,
    # state dict round trip, pickling/copying, gradients, determinism (see fer_core.testing)
    check_$kind("$component", $test_params, plugin="$dist")


$behaviour_test'''

README = '''\
# $dist

A fer-core plugin that adds the $kind `$component`. Summary, as `fer plugins` shows it:
$summary.

Written by `fer plugin new $component --kind $kind`; replace the example in
`src/$package/$module.py` with your own $kind and keep its tests passing.

## Install

    pip install -e .            # from this folder, into the environment that has fer-core
    fer plugins                 # lists $kind '$component' from $dist

## Use it in a recipe

```yaml
$recipe
```

Parameters are the keyword arguments of `build_$component` in
`src/$package/$module.py`; fer-core checks recipe keys and value types against
its signature, and passes the context arguments ($context) itself.

## Test

    pip install -e '.[test]'
    pytest

`tests/test_$package.py` runs fer-core's conformance suite (`fer_core.testing.check_$kind`):
the component registers under its name, builds from recipe parameters, produces the
declared shapes and dtypes, moves between devices, round-trips its state dict,
survives pickling or copying, passes gradients to every trainable parameter and is
deterministic under a fixed seed. `check_plugin` checks that the plugin loads on
its own and that `fer plugins` stays instant (the hook module imports no torch).

## Publish

    python -m build                       # dist/$package-*.whl and dist/$dist-*.tar.gz
    unzip -l dist/*.whl                   # LICENSE, py.typed, the code; the sdist also has tests/
    twine check dist/* && twine upload dist/*

Bump `version` in `pyproject.toml` for every upload, and set `[project.urls]` to your repository first.

## Layout

* `pyproject.toml`: the entry point `[project.entry-points.fer_core] $entry = "$package"`
* `src/$package/__init__.py`: the hook implementation (`$hook`); imports no torch
* `src/$package/$module.py`: the $kind (torch code, imported only when a recipe builds it)
* `src/$package/py.typed`: tells type checkers the package has inline types
* `tests/`: pytest tests (their `one_thread` fixture comes from fer-core's pytest plugin)
* `LICENSE` (MIT; change it and `license` in `pyproject.toml` to publish under another),
  `MANIFEST.in` (the sdist ships the tests)
'''

MANIFEST = '''\
include LICENSE
graft tests
global-exclude __pycache__ *.py[cod]
'''

LICENSE = '''\
MIT License

Copyright (c) $year the $dist authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
'''
