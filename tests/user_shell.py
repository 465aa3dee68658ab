"""What a user's shell gives a command: the installed `flexgrpo` and an environment with only PATH and HOME.
None of what tests/conftest.py sets reaches it, so a user path that works only because of a test setting fails
its test."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLEXGRPO = str(Path(sys.executable).with_name("flexgrpo"))
CLEAN_ENV = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}


def run_in_clean_shell(argv: list[str], code: int = 0, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """Run `argv` as a user would; it must exit with `code` (the assertion shows the end of its stderr)."""
    done = subprocess.run(argv, cwd=REPO, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == code, done.stderr[-3000:]
    return done
