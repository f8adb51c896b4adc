"""kind-cluster end-to-end (skipped unless SAEOPS_E2E=1; needs kind, kubectl, docker)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("SAEOPS_E2E") != "1", reason="set SAEOPS_E2E=1 to run against kind"),
]
SCRIPT = Path(__file__).with_name("run_kind_e2e.sh")


def test_examples_succeed_on_kind():
    for tool in ("kind", "kubectl", "docker"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    subprocess.run(["bash", str(SCRIPT)], check=True, timeout=3600)
