"""The layout: flexgrpo/ holds the contracts every role shares and imports no role (actors, learner,
reward_workers, cluster) nor the orchestration above them; its config and control plane load neither torch nor
ray, so `flexgrpo status` and `flexgrpo command` start in a blink."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS_ABOVE = {"actors", "learner", "reward_workers", "cluster", "orchestration"}


def test_config_and_control_plane_import_neither_torch_nor_ray():
    code = "import sys, flexgrpo.config, flexgrpo.control_plane; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_status_and_command_entry_points_do_not_import_torch():
    code = "import sys, orchestration.cli; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_no_module_under_flexgrpo_imports_a_role_or_the_orchestration():
    offenders = []
    for path in sorted((REPO / "flexgrpo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ROOMS_ABOVE]
    assert offenders == []
