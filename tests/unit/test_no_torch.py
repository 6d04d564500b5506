"""The runtime package never imports torch: import every module of inspector/ in a fresh interpreter."""

import pkgutil
import subprocess
import sys

import inspector


def test_inspector_modules_do_not_import_torch():
    names = [
        m.name
        for m in pkgutil.walk_packages(inspector.__path__, "inspector.")
        if not m.name.endswith("__main__")
    ]
    assert len(names) >= 5
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch imported by the runtime: {out.stdout.strip()}"
