"""Sweep transitions: trials, parallelism, goal, max trials, max failed trials, resume."""

from __future__ import annotations

import copy
import itertools

from saeops.api import SAESweep, names, parse_resource, search
from saeops.operator.state import ObservedSweep
from saeops.operator.sweep import reconcile_sweep

from .helpers import T0, cond, sweep_doc


def _finish(trial, phase="Succeeded", ev=None, l0=None):
    trial = copy.deepcopy(trial)
    metrics = {}
    if ev is not None:
        metrics["explained_variance"] = str(ev)
    if l0 is not None:
        metrics["l0"] = str(l0)
    trial["status"] = {"phase": phase, "metrics": metrics}
    return trial


def _step(obs: ObservedSweep):
    d = reconcile_sweep(obs, T0)
    res = copy.deepcopy(obs.resource)
    if d.status is not None:
        res["status"] = d.status
    return d, ObservedSweep(resource=res, trials=obs.trials + tuple(d.create))


def _replace(obs, trials):
    return ObservedSweep(resource=obs.resource, trials=tuple(trials))


def test_grid_creates_parallel_trials_with_assigned_parameters():
    d, obs = _step(ObservedSweep(resource=sweep_doc()))
    assert [t["metadata"]["name"] for t in d.create] == ["sw-0", "sw-1"]
    t0, t1 = d.create
    assert t0["spec"]["sae"]["topK"] == 16 and t0["spec"]["trainer"]["lr"] == 0.0001
    assert t1["spec"]["sae"]["topK"] == 16 and t1["spec"]["trainer"]["lr"] == 0.001
    assert t0["metadata"]["labels"][names.LABEL_SWEEP] == "sw"
    assert t0["metadata"]["ownerReferences"][0]["kind"] == "SAESweep"
    assert t0["spec"]["output"]["storageUri"] == "s3://bucket/runs/quickstart/sw-0"
    for t in d.create:
        parse_resource(t)
    st = d.status
    assert st["trials"] == 2 and st["trialsRunning"] == 2 and st["phase"] == "Running"
    assert cond(st, "Running")["status"] == "True"
    assert "pareto" in st and "trialList" not in st
    d2 = reconcile_sweep(obs, T0)
    assert d2.changes_nothing  # idempotent


def test_same_manifest_same_names_and_values():
    a = reconcile_sweep(ObservedSweep(resource=sweep_doc(algorithm={"type": "random", "seed": 7})), T0)
    b = reconcile_sweep(ObservedSweep(resource=sweep_doc(algorithm={"type": "random", "seed": 7})), T0)
    assert a.create == b.create
    c = reconcile_sweep(ObservedSweep(resource=sweep_doc(algorithm={"type": "random", "seed": 8})), T0)
    assert [t["spec"]["trainer"]["lr"] for t in a.create] != [t["spec"]["trainer"]["lr"] for t in c.create]


def test_random_search_values_in_range_and_integer():
    doc = sweep_doc(algorithm={"type": "random", "seed": 1}, max_trials=50)
    doc["spec"]["parameters"] = [
        {"name": "sae.topK", "uniform": {"min": 8, "max": 64}, "integer": True},
        {"name": "trainer.lr", "logUniform": {"min": 1e-5, "max": 1e-2}},
        {"name": "sae.actFn", "categorical": ["topk", "batchtopk"]},
    ]
    spec = SAESweep.model_validate(doc).spec
    for i in range(50):
        a = search.assignment(spec, i)
        assert isinstance(a["sae.topK"], int) and 8 <= a["sae.topK"] <= 64
        assert 1e-5 <= a["trainer.lr"] <= 1e-2 and a["sae.actFn"] in ("topk", "batchtopk")


def test_grid_matches_cartesian_product():
    spec = SAESweep.model_validate(sweep_doc()).spec
    axes = [search._grid_values(p) for p in spec.parameters]
    product = [dict(zip([p.name for p in spec.parameters], combo, strict=True)) for combo in itertools.product(*axes)]
    assert [search.assignment(spec, i) for i in range(4)] == product
    assert search.space_size(spec) == 4


def test_grid_range_without_steps_is_invalid_spec():
    doc = sweep_doc()
    doc["spec"]["parameters"][1]["logUniform"].pop("steps")
    d = reconcile_sweep(ObservedSweep(resource=doc), T0)
    assert not d.create and cond(d.status, "Failed")["reason"] == "InvalidSpec"
    assert "trainer.lr" in cond(d.status, "Failed")["message"]


def test_invalid_sweep_names_field():
    doc = sweep_doc()
    doc["spec"]["maxTrials"] = 0
    d = reconcile_sweep(ObservedSweep(resource=doc), T0)
    assert not d.create and d.status["phase"] == "Failed" and "spec.maxTrials" in cond(d.status, "Failed")["message"]


def test_max_trials_reached_then_resumed_by_raising_max_trials():
    _, obs = _step(ObservedSweep(resource=sweep_doc(max_trials=2)))
    d = reconcile_sweep(obs, T0)
    assert d.changes_nothing  # both running, parallel=2
    obs = _replace(obs, [_finish(t, ev=0.5 + i / 10, l0=10 + i) for i, t in enumerate(obs.trials)])
    d, obs = _step(obs)
    st = d.status
    assert st["phase"] == "Succeeded" and cond(st, "Succeeded")["reason"] == "MaxTrialsReached"
    assert st["trialsSucceeded"] == 2 and st["bestTrial"]["name"] == "sw-1"
    assert st["bestTrial"]["parameters"] == {"sae.topK": "16", "trainer.lr": "0.001"}
    assert [e.reason for e in d.events] == ["MaxTrialsReached"] and "completionTime" in st
    assert reconcile_sweep(obs, T0).changes_nothing
    res = copy.deepcopy(obs.resource)
    res["spec"]["maxTrials"] = 4
    res["metadata"]["generation"] = 2
    d, obs = _step(ObservedSweep(resource=res, trials=obs.trials))
    assert [t["metadata"]["name"] for t in d.create] == ["sw-2", "sw-3"]
    st = d.status
    assert st["phase"] == "Running" and cond(st, "Succeeded")["status"] == "False"
    assert "completionTime" not in st and "Resumed" in [e.reason for e in d.events]


def test_parallel_trials_limit_creates_as_trials_finish():
    _, obs = _step(ObservedSweep(resource=sweep_doc(max_trials=4, parallel=1)))
    assert len(obs.trials) == 1
    obs = _replace(obs, [_finish(obs.trials[0], ev=0.3, l0=5)])
    d, obs = _step(obs)
    assert [t["metadata"]["name"] for t in d.create] == ["sw-1"]


def test_goal_reached_stops_the_sweep():
    _, obs = _step(ObservedSweep(resource=sweep_doc(max_trials=4, target=0.9)))
    obs = _replace(obs, [_finish(obs.trials[0], ev=0.95, l0=10), obs.trials[1]])
    d, obs = _step(obs)
    assert not d.create and d.status["phase"] == "Succeeded"
    assert cond(d.status, "Succeeded")["reason"] == "GoalReached"


def test_minimize_goal():
    doc = sweep_doc(max_trials=2)
    doc["spec"]["objective"] = {"metric": "mse", "goal": "minimize", "paretoMetric": None}
    _, obs = _step(ObservedSweep(resource=doc))
    trials = []
    for t, mse in zip(obs.trials, (0.2, 0.1), strict=True):
        t = _finish(t)
        t["status"]["metrics"]["mse"] = str(mse)
        trials.append(t)
    d = reconcile_sweep(_replace(obs, trials), T0)
    assert d.status["bestTrial"]["name"] == "sw-1"


def test_max_failed_trials():
    _, obs = _step(ObservedSweep(resource=sweep_doc(max_trials=4, max_failed=2)))
    obs = _replace(obs, [_finish(obs.trials[0], "Failed"), obs.trials[1]])
    d, obs = _step(obs)
    assert [t["metadata"]["name"] for t in d.create] == ["sw-2"]  # one failure tolerated
    obs = _replace(obs, [_finish(obs.trials[0], "Failed"), _finish(obs.trials[1], "Failed"), obs.trials[2]])
    d, obs = _step(obs)
    assert not d.create and d.status["phase"] == "Failed"
    assert cond(d.status, "Failed")["reason"] == "MaxFailedTrialsReached"
    res = copy.deepcopy(obs.resource)
    res["spec"]["maxFailedTrials"] = 5  # budget edit from Git resumes the sweep
    d, _ = _step(ObservedSweep(resource=res, trials=obs.trials))
    assert d.status["phase"] == "Running" and [t["metadata"]["name"] for t in d.create] == ["sw-3"]


def test_suspend_creates_no_trials():
    doc = sweep_doc()
    doc["spec"]["suspend"] = True
    d = reconcile_sweep(ObservedSweep(resource=doc), T0)
    assert not d.create and d.status["phase"] == "Suspended"


def test_pareto_front_is_bounded_and_non_dominated():
    doc = sweep_doc(max_trials=200, parallel=200, algorithm={"type": "random", "seed": 3})
    _, obs = _step(ObservedSweep(resource=doc))
    trials = [_finish(t, ev=(i % 50) / 50, l0=i) for i, t in enumerate(obs.trials)]
    d = reconcile_sweep(_replace(obs, trials), T0)
    front = d.status["pareto"]
    assert 1 <= len(front) <= 32
    evs = [float(p["metrics"]["explained_variance"]) for p in front]
    l0s = [float(p["metrics"]["l0"]) for p in front]
    assert l0s == sorted(l0s) and evs == sorted(evs)  # more L0 only when it buys EV


def test_foreign_trials_are_ignored():
    _, obs = _step(ObservedSweep(resource=sweep_doc()))
    other = copy.deepcopy(obs.trials[0])
    other["metadata"]["labels"][names.LABEL_SWEEP] = "other"
    other["metadata"]["name"] = "other-0"
    d = reconcile_sweep(ObservedSweep(resource=obs.resource, trials=(*obs.trials, other)), T0)
    assert d.changes_nothing


def test_only_owned_trials_count():
    d, obs = _step(ObservedSweep(resource=sweep_doc(max_trials=2, parallel=2)))
    impostor = copy.deepcopy(d.create[0])
    impostor["metadata"]["ownerReferences"] = [{"apiVersion": "saeops.io/v1alpha1", "kind": "SAESweep", "name": "sw",
                                                "uid": "another-sweep-of-that-name"}]
    # A labelled run the sweep does not own, claiming to be the best trial: not counted, not reported.
    fake = _finish(impostor, ev=0.99)
    fake["metadata"]["name"] = "sw-impostor"
    real = [_finish(t, ev=0.5) for t in d.create]
    d = reconcile_sweep(_replace(obs, [*real, fake]), T0)
    assert d.status["trials"] == 2 and d.status["trialsSucceeded"] == 2
    assert d.status["bestTrial"]["name"] in ("sw-0", "sw-1")


def test_a_trial_name_taken_by_a_foreign_run_fails_the_sweep_and_stops_creating():
    sweep = sweep_doc()
    taken = {"apiVersion": "saeops.io/v1alpha1", "kind": "SAETrainingRun",
             "metadata": {"name": "sw-0", "namespace": "default", "uid": "theirs"}}
    d = reconcile_sweep(ObservedSweep(resource=sweep, foreign=(taken,)), T0)
    assert not d.create and d.status["phase"] == "Failed"
    failed = cond(d.status, "Failed")
    assert failed["reason"] == "NameConflict" and "SAETrainingRun sw-0" in failed["message"]
    sweep = copy.deepcopy(sweep)
    sweep["status"] = d.status
    assert reconcile_sweep(ObservedSweep(resource=sweep), T0).changes_nothing  # no retry for this generation
    sweep["metadata"]["generation"] = 2
    d = reconcile_sweep(ObservedSweep(resource=sweep), T0)
    assert [t["metadata"]["name"] for t in d.create] == ["sw-0", "sw-1"]
    assert cond(d.status, "Failed")["status"] == "False"


def test_a_refused_trial_fails_the_sweep():
    from saeops.operator.state import Rejection

    rej = Rejection("SAETrainingRun", "sw-0", 422, 'SAETrainingRun.saeops.io "sw-0" is invalid: spec.sae.topK: Invalid value')
    d = reconcile_sweep(ObservedSweep(resource=sweep_doc(), rejection=rej), T0)
    assert not d.create and cond(d.status, "Failed")["reason"] == "InvalidSpec"
    assert "spec.sae.topK: Invalid value" in cond(d.status, "Failed")["message"]
