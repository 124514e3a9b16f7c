"""setup.py's own messages for the environments whose failures would otherwise name nothing: run as pip
runs it, with the missing piece hidden from the import system."""
import os
import subprocess
import sys

import pytest

from conftest import requires_sources

pytestmark = requires_sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_setup(command, hidden_modules):
    """setup.py COMMAND in a fresh interpreter in which importing any of hidden_modules fails."""
    script = (f"import runpy, sys\n"
              f"for name in {hidden_modules!r}: sys.modules[name] = None\n"
              f"sys.argv = ['setup.py', {command!r}]\n"
              f"runpy.run_path('setup.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_build_isolated_from_torch_says_to_install_torch_and_build_without_isolation():
    result = run_setup("dist_info", ["torch"])
    assert result.returncode != 0
    assert "cannot import" in result.stderr and "pip install --no-build-isolation -e ." in result.stderr


@pytest.mark.parametrize("command", ["dist_info", "editable_wheel", "bdist_wheel"])
def test_a_setuptools_without_bdist_wheel_says_to_update_it(command):
    result = run_setup(command, ["setuptools.command.bdist_wheel", "wheel"])
    assert result.returncode != 0
    assert "older than\n70.1" in result.stderr and "pip install -U setuptools" in result.stderr
