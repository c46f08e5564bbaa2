"""Build a copy of the source tree in a temporary folder (for the build tests)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: The repository root (tests/_support/ is two levels below it).
REPO = Path(__file__).resolve().parents[2]


def build_source_copy(dest, env_extra, compiler):
    """Copy the source tree's sources to ``dest`` and build them in place with ``env_extra``."""
    pytest.importorskip("Cython")
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")

    def build_outputs(folder, names):
        """Compiled modules, Cython's generated C (a .c beside its .pyx) and other build leftovers."""
        generated = {n[:-4] + ".c" for n in names if n.endswith(".pyx")}
        return {n for n in names if n.endswith((".so", ".pyd", ".html")) or n in generated
                or n in ("__pycache__", "_build_config.py")}

    shutil.copytree(REPO / "fastopt", dest / "fastopt", ignore=build_outputs)
    shutil.copytree(REPO / "build_tools", dest / "build_tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", dest / "setup.py")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=str(dest),
                          env=dict(os.environ, **env_extra), capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        pytest.fail("the build failed:\n" + done.stderr[-3000:])
    return done.stdout
