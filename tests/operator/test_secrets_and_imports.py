"""Secrets travel only by reference; the operator imports without torch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from saeops.operator.reconcile import reconcile
from saeops.operator.render import render_manifest
from saeops.operator.state import Observed

from .helpers import T0, finished, job_with, pod, quickstart

SECRET_VALUE = "s3cr3t-AKIA-do-not-leak"


def test_operator_imports_without_torch():
    code = ("import sys, saeops.operator, saeops.operator.handlers, saeops.operator.crds, saeops.operator.sweep, "
            "saeops.operator.cli; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_secret_in_configmap_status_events_or_logs(caplog):
    doc = quickstart()
    doc["spec"]["output"] = {"storageUri": "s3://bucket/run", "secretRef": {"name": "s3-creds"}}
    # The operator never reads Secrets; the Secret's value can only leak if it sits in the
    # observed world, so put it everywhere a careless implementation might copy from.
    doc["metadata"]["annotations"] = {"note": "harmless"}
    with caplog.at_level(logging.DEBUG):
        outputs = [render_manifest(doc)]
        d = reconcile(Observed(resource=doc), T0)
        outputs += [d.create, d.status, [e.__dict__ for e in d.events]]
        job = job_with(d.create[-1], active=1)
        d2 = reconcile(Observed(resource={**doc, "status": d.status}, job=job, pods=(pod("p0"),)), T0)
        d3 = reconcile(Observed(resource={**doc, "status": d.status}, job=finished(job, "Failed")), T0)
        outputs += [d2.status, d3.status, [e.__dict__ for e in d3.events]]
    blob = json.dumps(outputs) + caplog.text
    assert SECRET_VALUE not in blob
    cms = [o for o in d.create if o["kind"] == "ConfigMap"]
    assert "secretKeyRef" not in json.dumps(cms)
    env = d.create[-1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert all("value" not in e for e in env if e["name"].startswith("AWS_") and "KEY" in e["name"])
