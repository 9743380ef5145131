"""pyproject.toml declares every package that vglaw/ imports (the optional ones in their extras)
and nothing that it does not use: deptry, configured under [tool.deptry], reports no issue."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_import_is_declared_and_every_declared_dependency_is_imported():
    done = subprocess.run([sys.executable, "-m", "deptry", "vglaw", "--no-ansi"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    report = done.stdout + done.stderr
    assert done.returncode == 0 and "No dependency issues found" in report, report
