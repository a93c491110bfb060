"""tests/notebooks/launch.ipynb, executed for real: nbclient drives an ipykernel kernel running
this interpreter, the notebook launches the digits training with ``hotcb.launch``, raises the
learning rate through the handle, reads ``metrics()`` and stops the run. The test checks the
executed notebook's outputs and the run directory's ledger."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.testing import read_ledger

#: This environment without HOTCB_DIR (a developer's shell may set it).
SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("pandas")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tests" / "notebooks" / "launch.ipynb"
KERNEL = "hotcb-test-python"


def _kernel_spec_dir(tmp_path: Path) -> Path:
    """A kernelspec that runs this interpreter: the installed ``python3`` spec may start
    whichever ``python`` comes first on PATH."""
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "hotcb tests", "language": "python"})
    )
    return spec.parent


def _outputs(nb: Any) -> list[str]:
    """Every cell's text: printed streams, plain results and HTML, one string per output."""
    texts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out["text"])
            elif out.get("output_type") in ("execute_result", "display_data"):
                data = out.get("data", {})
                texts.append(data.get("text/html") or data.get("text/plain", ""))
    return texts


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_launch_notebook_steers_a_run(tmp_path: Path) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    run_dir = tmp_path / "run"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = AsyncKernelManager(
        kernel_name=KERNEL,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[os.fspath(_kernel_spec_dir(tmp_path))]),
    )
    client = nbclient.NotebookClient(
        nb, km=km, timeout=300, startup_timeout=120, resources={"metadata": {"path": str(ROOT)}}
    )
    env = {
        **SUBPROCESS_ENV,
        "HOTCB_NOTEBOOK_RUN_DIR": os.fspath(run_dir),
        "HOTCB_NOTEBOOK_SCRIPT": os.fspath(ROOT / "examples" / "bare_loop.py"),
    }
    client.execute(env=env, cleanup_kc=True)  # shut the kernel down after (we own km)

    texts = _outputs(nb)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    html = next(t for t in texts if 'class="hotcb-launch"' in t)
    assert "open the dashboard" in html and "token=" in html  # the launch cell's display
    lines = "".join(t for t in texts if not t.startswith("<")).splitlines()
    assert any(line.startswith("lr change: applied at step") for line in lines), lines
    (summary,) = [
        json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("SUMMARY ")
    ]
    assert summary["state"] == "running" and summary["rows"] > 20
    assert summary["lr_after"] == pytest.approx(3e-3, rel=1e-3) != summary["lr_before"]
    assert "exit code 0" in lines and "STATE stopped" in lines
    assert any("set_params" in t and "stop" in t for t in texts)  # the ledger table

    ledger = read_ledger(run_dir)
    (lr,) = [e for e in ledger if e.get("module") == "opt"]
    assert lr["source"] == "launch" and lr["decision"] == "applied"
    assert lr["changes"]["lr"]["new"] == pytest.approx(3e-3)
    (stop,) = [e for e in ledger if e.get("op") == "stop"]
    assert stop["decision"] == "applied" and stop["step"] > lr["step"]
    meta = jsonl.read_json(run_dir / "hotcb.run.json")
    assert meta["launch"]["exit_code"] == 0 and meta["ended"]["stopped"] is True
