"""The public API is explicit and importing harness stays cheap."""

from __future__ import annotations

import subprocess
import sys

import harness


def test_all_names_resolve():
    for name in harness.__all__:
        assert getattr(harness, name) is not None, name


def test_no_private_names_exported():
    assert all(not n.startswith("_") or n == "__version__" for n in harness.__all__)
    assert len(set(harness.__all__)) == len(harness.__all__)


def test_import_loads_no_numba():
    code = "import sys, harness; print(any(m == 'numba' or m.startswith('numba.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", "importing harness must not import numba (kernels load on first use)"


def test_cli_help_lists_commands(capsys):
    from harness.cli import main

    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for cmd in ("validate", "inspect", "replay", "capture", "golden"):
        assert cmd in out


def test_cli_profile_choices_are_the_reference_profiles():
    """The CLI lists profiles statically (no numba at start-up); they must match."""
    from harness.cli import build_parser
    from harness.reference import PROFILES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    replay_profile = next(a for a in sub.choices["replay"]._actions if a.dest == "profile")
    assert set(replay_profile.choices) == set(PROFILES)
    audit_profile = next(a for a in sub.choices["audit"]._actions if a.dest == "profile")
    assert set(audit_profile.choices) <= set(PROFILES)


def test_function_names_are_not_shadowed_by_submodules():
    """A public function must not share its name with a submodule: importing the
    submodule would replace the package attribute with the module."""
    import importlib
    import pkgutil

    importlib.import_module("harness.replayer")
    submodules = {m.name for m in pkgutil.iter_modules(harness.__path__)}
    for name in harness.__all__:
        if callable(getattr(harness, name)) and not isinstance(getattr(harness, name), type):
            assert name not in submodules, f"harness.{name} is both a function and a submodule"
    assert callable(harness.replay) and not hasattr(harness.replay, "__path__")
