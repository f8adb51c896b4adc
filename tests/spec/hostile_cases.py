"""The table of hostile and invalid manifests and `--set` arguments (issue #17's acceptance).

Each case is a manifest (bytes, with `@TMP@` standing for the test's directory), extra CLI
arguments, the commands it goes through, and a needle the one `error:` line must contain (the
field, the `--set` path or the file). The base manifest is valid and cheap: a random native
model, a dataset path that does not exist (a case that wrongly passed validation would fail
in `run` with a different message, and the needle check would catch it) and an absolute output
under the test's directory (anything written there is caught too).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from saeops.api.reader import MAX_BYTES, MAX_DEPTH, MAX_NODES

ALL = ("validate", "render", "run")
FILE = "m.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    data: bytes
    needle: str
    args: tuple[str, ...] = ()
    commands: tuple[str, ...] = ALL
    name: str = FILE


BASE: dict[str, Any] = {
    "apiVersion": "saeops.io/v1alpha1",
    "kind": "SAETrainingRun",
    "metadata": {"name": "hostile"},
    "spec": {
        "model": {"name": "native-tiny", "native": {"nLayers": 1, "dModel": 16, "nHeads": 2, "dHead": 8,
                                                    "dMlp": 32, "dVocab": 300, "nCtx": 32},
                  "tokenizer": "bytes", "batchSize": 4},
        "dataset": {"path": "@TMP@/no-such-corpus.jsonl", "contextSize": 16},
        "sae": {"hookPointIn": "blocks.0.hook_resid_post", "expansionFactor": 2, "actFn": "topk", "topK": 4},
        "initializer": {"initTokens": 64},
        "trainer": {"totalTrainingTokens": 512, "batchSize": 64, "lr": 1e-3, "progressBar": False},
        "resources": {"numNodes": 1},
        "output": {"storageUri": "@TMP@/out"},
    },
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


def with_(path: str, value: Any, doc: dict[str, Any] | None = None) -> bytes:
    """The base manifest with `path` (dotted, manifest names) set to `value`."""
    doc = base() if doc is None else doc
    node = doc
    *head, last = path.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    return dump(doc)


def without(path: str) -> bytes:
    doc = base()
    node = doc
    *head, last = path.split(".")
    for k in head:
        node = node[k]
    del node[last]
    return dump(doc)


def laughs(where: str = "metadata", levels: int = 9) -> bytes:
    lines = ["apiVersion: saeops.io/v1alpha1", "kind: SAETrainingRun", "metadata:", "  name: x"]
    if where != "metadata":
        lines.append(f"{where}:")
    lines.append("  l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]")
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


TEXT = dump(BASE).decode()


def cases() -> list[Case]:
    out: list[Case] = []

    def add(cid: str, cat: str, data: bytes | str, needle: str, *args: str,
            commands: tuple[str, ...] = ALL, name: str = FILE) -> None:
        out.append(Case(cid, cat, data.encode() if isinstance(data, str) else data, needle, args, commands, name))

    # ---- the file itself: size, encoding, nesting, aliases, keys, tags, shape
    cat = "file"
    add("size-yaml", cat, TEXT + "#" + "x" * MAX_BYTES, "larger than 1048576 bytes")
    add("size-json", cat, json.dumps({**BASE, "pad": "x" * MAX_BYTES}), "larger than", name="m.json")
    add("laughs-metadata", cat, laughs("metadata"), f"more than {MAX_NODES} values")
    add("laughs-spec", cat, laughs("spec"), f"more than {MAX_NODES} values")
    add("laughs-deep-few", cat, laughs("metadata", 6), f"more than {MAX_NODES} values")
    add("alias-recursive", cat, "a: &a [*a]\n", "not complete")
    add("alias-undefined", cat, TEXT + "x: *nope\n", "not complete")
    add("deep-flow", cat, "a: " + "[" * 5000 + "]" * 5000, FILE)
    add("deep-block", cat, "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "x: 1\n",
        f"nested deeper than {MAX_DEPTH}")
    add("deep-json", cat, "[" * 100_000 + "]" * 100_000, "nested deeper than", name="m.json")
    add("deep-json-shallow", cat, '{"a": ' + "[" * (MAX_DEPTH + 2) + "]" * (MAX_DEPTH + 2) + "}",
        "nested deeper than", name="m.json")
    add("deep-toml", cat, "a = " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than", name="m.toml")
    add("many-values", cat, TEXT + "x: [" + ", ".join(["1"] * (MAX_NODES + 1)) + "]\n", f"more than {MAX_NODES}")
    add("latin-1", cat, TEXT.replace("hostile", "hostil\xe9").encode("latin-1"), "not UTF-8 text")
    add("random-bytes", cat, bytes(range(255, -1, -1)) * 4, "not UTF-8 text")
    add("utf-16", cat, TEXT.encode("utf-16"), "not UTF-8 text")
    add("nul-byte", cat, TEXT.replace("native-tiny", "native\x00tiny"), "malformed yaml")
    add("control-char", cat, TEXT.replace("native-tiny", "native\x07tiny"), "malformed yaml")
    add("dup-top", cat, TEXT + "kind: SAETrainingRun\n", "duplicate key 'kind'")
    add("dup-nested", cat, TEXT.replace("  sae:\n", "  sae:\n    topK: 8\n"), "duplicate key 'topK'")
    add("dup-json", cat, '{"kind": "SAETrainingRun", "kind": "SAESweep"}', "duplicate key 'kind'", name="m.json")
    add("dup-toml", cat, 'kind = "a"\nkind = "b"\n', "malformed toml", name="m.toml")
    add("two-docs", cat, TEXT + "---\n" + TEXT, "more than one YAML document")
    add("python-tag", cat, TEXT + "x: !!python/object/apply:os.system ['true']\n", "malformed yaml")
    add("binary-tag", cat, TEXT + "x: !!binary aGk=\n", "no JSON value")
    add("set-tag", cat, TEXT + "x: !!set {a}\n", "no JSON value")
    add("custom-tag", cat, TEXT + "x: !shell rm\n", "malformed yaml")
    add("int-key", cat, TEXT + "1: x\n", "key 1 is not a string")
    add("bool-key", cat, TEXT.replace("  sae:\n", "  sae:\n    on: 1\n"), "key True is not a string")
    add("complex-key", cat, TEXT + "? [a]\n: b\n", "not a string")
    add("malformed-yaml", cat, TEXT + "spec: [1, 2\n", "malformed yaml")
    add("malformed-json", cat, '{"kind": ', "malformed json", name="m.json")
    add("malformed-toml", cat, "kind = \n", "malformed toml", name="m.toml")
    add("empty-file", cat, "", "expected a mapping")
    add("top-list", cat, "- 1\n- 2\n", "expected a mapping")
    add("top-scalar", cat, "hello\n", "expected a mapping")
    add("json-string", cat, '"SAETrainingRun"', "expected a mapping", name="m.json")
    add("key-next-line-char", cat, with_("spec.sae.to\x85pK", 4), "unknown field")  # str.splitlines breaks at \x85
    add("key-line-separator", cat, with_("spec.trainer.l\u2028r", 4), "unknown field")
    add("tab-indent", cat, TEXT.replace("  name: hostile", "\tname: hostile"), "malformed yaml")
    # ---- kind and apiVersion
    cat = "kind"
    add("kind-list", cat, with_("kind", ["a", "b"]), "kind: expected one of")
    add("kind-map", cat, with_("kind", {"a": 1}), "kind: expected one of")
    add("kind-int", cat, with_("kind", 3), "kind: expected one of")
    add("kind-null", cat, with_("kind", None), "kind: expected one of")
    add("kind-typo", cat, with_("kind", "SAETrainingRn"), "did you mean SAETrainingRun")
    add("kind-huge", cat, with_("kind", "K" * 100_000), "kind: unknown kind")
    add("api-list", cat, with_("apiVersion", ["saeops.io/v1alpha1"]), "apiVersion: expected")
    add("api-null", cat, with_("apiVersion", None), "apiVersion: expected")
    add("api-v1", cat, with_("apiVersion", "v1"), "apiVersion: expected")
    add("no-kind", cat, without("kind"), "kind: expected one of")
    add("metadata-list", cat, with_("metadata", ["name"]), "metadata")
    add("spec-string", cat, with_("spec", "train please"), "spec")
    add("no-metadata-name", cat, with_("metadata", {}), "metadata.name: required field is missing")
    # ---- metadata: only ObjectMeta's fields, names, labels, annotations
    cat = "metadata"
    for cid, path, value, needle in [
        ("unknown-field", "metadata.clusterName", "c", "metadata.clusterName: unknown field"),
        ("name-upper", "metadata.name", "Hostile", "metadata.name"),
        ("name-underscore", "metadata.name", "a_b", "metadata.name"),
        ("name-64", "metadata.name", "a" * 64, "metadata.name"),
        ("name-dash-end", "metadata.name", "a-", "metadata.name"),
        ("name-dot", "metadata.name", "a.b", "metadata.name"),
        ("name-empty", "metadata.name", "", "metadata.name"),
        ("name-int", "metadata.name", 12, "metadata.name"),
        ("name-newline", "metadata.name", "a\nb", "metadata.name"),
        ("namespace-bad", "metadata.namespace", "Team_A", "metadata.namespace"),
        ("label-key-space", "metadata.labels", {"bad key": "x"}, "metadata.labels"),
        ("label-key-slashes", "metadata.labels", {"a/b/c": "x"}, "metadata.labels"),
        ("label-key-long-prefix", "metadata.labels", {"a" * 254 + "/x": "x"}, "metadata.labels"),
        ("label-value-long", "metadata.labels", {"k": "v" * 64}, "metadata.labels.k"),
        ("label-value-space", "metadata.labels", {"k": "a b"}, "metadata.labels.k"),
        ("label-value-bool", "metadata.labels", {"k": True}, "metadata.labels.k"),
        ("labels-list", "metadata.labels", ["a"], "metadata.labels"),
        ("annotations-300k", "metadata.annotations", {"a": "x" * (300 * 1024)}, "metadata.annotations"),
        ("annotations-many", "metadata.annotations", {f"k{i}": "x" * 100 for i in range(2700)}, "metadata.annotations"),
        ("annotation-key-bad", "metadata.annotations", {"not a key": "x"}, "metadata.annotations"),
        ("annotation-value-int", "metadata.annotations", {"k": 1}, "metadata.annotations.k"),
        ("finalizer-bad", "metadata.finalizers", ["bad finalizer"], "metadata.finalizers"),
        ("generation-negative", "metadata.generation", -1, "metadata.generation"),
        ("owner-refs-string", "metadata.ownerReferences", "me", "metadata.ownerReferences"),
    ]:
        add(cid, cat, with_(path, value), needle)
    # ---- Kubernetes names, keys, values, quantities in the spec
    cat = "k8s-values"
    res = "spec.resources"
    for cid, path, value, needle in [
        ("secret-upper", "spec.output", {"storageUri": "s3://bkt/x", "secretRef": {"name": "S3"}}, "spec.output.secretRef.name"),
        ("secret-underscore", "spec.output", {"storageUri": "s3://bkt/x", "secretRef": {"name": "s3_creds"}}, "secretRef.name"),
        ("secret-long", "spec.output", {"storageUri": "s3://bkt/x", "secretRef": {"name": "a" * 254}}, "secretRef.name"),
        ("cache-ref-dots", "spec.activations", {"cacheRef": "my.cache"}, "spec.activations.cacheRef"),
        ("cache-ref-upper", "spec.activations", {"cacheRef": "Cache"}, "spec.activations.cacheRef"),
        ("priority-upper", f"{res}.priorityClassName", "High", f"{res}.priorityClassName"),
        ("sa-underscore", f"{res}.serviceAccountName", "sa_1", f"{res}.serviceAccountName"),
        ("queue-upper", "spec.queueName", "Team", "spec.queueName"),
        ("queue-64", "spec.queueName", "q" * 64, "spec.queueName"),
        ("queue-slash", "spec.queueName", "a/b", "spec.queueName"),
        ("node-selector-value", f"{res}.nodeSelector", {"gpu": "H100 80GB"}, f"{res}.nodeSelector.gpu"),
        ("node-selector-key", f"{res}.nodeSelector", {"-gpu": "x"}, f"{res}.nodeSelector"),
        ("node-selector-bool", f"{res}.nodeSelector", {"gpu": True}, f"{res}.nodeSelector.gpu"),
        ("toleration-key", f"{res}.tolerations", [{"key": "a b", "operator": "Exists"}], f"{res}.tolerations.0.key"),
        ("toleration-value", f"{res}.tolerations", [{"key": "k", "value": "a b"}], f"{res}.tolerations.0.value"),
        ("toleration-exists-value", f"{res}.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}], "tolerations.0"),
        ("toleration-no-key", f"{res}.tolerations", [{"value": "v"}], f"{res}.tolerations.0"),
        ("toleration-seconds", f"{res}.tolerations", [{"key": "k", "tolerationSeconds": 3}], f"{res}.tolerations.0"),
        ("toleration-effect", f"{res}.tolerations", [{"key": "k", "effect": "Evict"}], f"{res}.tolerations.0.effect"),
        ("image-space", f"{res}.image", "img:1 latest", f"{res}.image"),
        ("image-empty", f"{res}.image", "", f"{res}.image"),
        ("cpu-words", f"{res}.resourcesPerNode", {"requests": {"cpu": "lots"}}, "requests.cpu"),
        ("memory-GB", f"{res}.resourcesPerNode", {"requests": {"memory": "1GB"}}, "requests.memory"),
        ("memory-negative", f"{res}.resourcesPerNode", {"limits": {"memory": "-1Gi"}}, "limits.memory"),
        ("cpu-number", f"{res}.resourcesPerNode", {"requests": {"cpu": 2}}, "requests.cpu"),
        ("cpu-exp-empty", f"{res}.resourcesPerNode", {"requests": {"cpu": "1e"}}, "requests.cpu"),
        ("resource-unprefixed", f"{res}.resourcesPerNode", {"requests": {"gpu": "1"}}, "requests"),
        ("request-over-limit", f"{res}.resourcesPerNode", {"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}, "resourcesPerNode"),
        ("gpu-no-limit", f"{res}.resourcesPerNode", {"requests": {"nvidia.com/gpu": "1"}}, "resourcesPerNode"),
        ("gpu-fraction", f"{res}.resourcesPerNode", {"limits": {"nvidia.com/gpu": "0.5"}}, "resourcesPerNode"),
        ("gpu-mismatch", f"{res}.resourcesPerNode", {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}, "resourcesPerNode"),
        ("shm-space", f"{res}.shmSize", "2 Gi", f"{res}.shmSize"),
        ("shm-negative", f"{res}.shmSize", "-2Gi", f"{res}.shmSize"),
        ("shm-empty", f"{res}.shmSize", "", f"{res}.shmSize"),
        ("shm-huge-exponent", f"{res}.shmSize", "1e999999", f"{res}.shmSize"),
    ]:
        add(cid, cat, with_(path, value), needle)
    # ---- floats: never NaN or infinite; fractions below 1
    cat = "floats"
    for cid, path, value in [
        ("weight-decay-inf", "spec.trainer.weightDecay", math.inf),
        ("weight-decay-nan", "spec.trainer.weightDecay", math.nan),
        ("lr-nan", "spec.trainer.lr", math.nan),
        ("l1-inf", "spec.trainer.l1Coefficient", math.inf),
        ("l1-neg-inf", "spec.trainer.l1Coefficient", -math.inf),
        ("k-warmup-nan", "spec.trainer.kWarmupSteps", math.nan),
        ("k-warmup-1.5", "spec.trainer.kWarmupSteps", 1.5),
        ("lr-warmup-2.0", "spec.trainer.lrWarmUpSteps", 2.0),
        ("aux-k-inf", "spec.trainer.auxKCoefficient", math.inf),
        ("clip-inf", "spec.trainer.clipGradNorm", math.inf),
        ("dense-threshold-nan", "spec.trainer.denseFeatureThreshold", math.nan),
        ("expansion-inf", "spec.sae.expansionFactor", math.inf),
        ("jumprelu-window-nan", "spec.sae.jumpreluThresholdWindow", math.nan),
        ("init-norm-inf", "spec.initializer.initDecoderNorm", math.inf),
        ("init-threshold-nan", "spec.initializer.initLogJumpreluThresholdValue", math.nan),
        ("lp-inf", "spec.trainer.lpCoefficient", math.inf),
        ("lr-string", "spec.trainer.lr", "fast"),
        ("lr-bool", "spec.trainer.lr", True),
        ("lr-nan-string", "spec.trainer.lr", "nan"),
    ]:
        add(cid, cat, with_(path, value), path)
    add("betas-nan", cat, with_("spec.trainer.betas", [0.9, math.nan]), "spec.trainer.betas")
    add("betas-one", cat, with_("spec.trainer.betas", [1.0, 0.999]), "spec.trainer.betas")
    add("json-NaN", cat, with_json("spec.trainer.weightDecay", math.nan), "spec.trainer.weightDecay", name="m.json")
    add("json-Infinity", cat, with_json("spec.trainer.lr", math.inf), "spec.trainer.lr", name="m.json")
    add("toml-inf", cat, TEXT_TOML.replace("lr = 0.001", "lr = inf"), "spec.trainer.lr", name="m.toml")
    # ---- integers and booleans
    cat = "ints-bools"
    for cid, path, value in [
        ("seed-2^70", "spec.trainer.seed", 2**70),
        ("seed-2^63", "spec.trainer.seed", 2**63),
        ("seed-negative", "spec.trainer.seed", -1),
        ("native-seed-huge", "spec.model.native.seed", 2**64),
        ("topk-true", "spec.sae.topK", True),
        ("topk-float", "spec.sae.topK", 4.0),
        ("topk-string", "spec.sae.topK", "4"),
        ("topk-over-dsae", "spec.sae", {"hookPointIn": "h", "actFn": "topk", "dSae": 8, "topK": 9}),
        ("topk-huge", "spec.sae.topK", 2**40),
        ("batch-float", "spec.trainer.batchSize", 64.0),
        ("batch-yaml12-float", "spec.trainer.batchSize", "@RAW@6.4e1"),
        ("tokens-2^60", "spec.trainer.totalTrainingTokens", 2**60),
        ("dsae-huge", "spec.sae.dSae", 2**30),
        ("num-nodes-true", "spec.resources.numNodes", True),
        ("num-nodes-2.5", "spec.resources.numNodes", 2.5),
        ("suspend-int", "spec.suspend", 1),
        ("suspend-yes-string", "spec.suspend", "yes"),
        ("progress-bar-0", "spec.trainer.progressBar", 0),
        ("port-70000", "spec.metrics.port", 70000),
        ("deadline-huge", "spec.activeDeadlineSeconds", 2**40),
        ("ttl-negative", "spec.ttlSecondsAfterFinished", -1),
        ("toleration-seconds-huge", "spec.resources.tolerations", [{"key": "k", "effect": "NoExecute",
                                                                   "tolerationSeconds": 2**64}]),
        ("keep-checkpoints-0", "spec.trainer.keepCheckpoints", 0),
        ("log-frequency-0", "spec.trainer.logFrequency", 0),
    ]:
        field = path if not path.endswith("tolerations") else "spec.resources.tolerations.0.tolerationSeconds"
        data = with_(path, value) if value != "@RAW@6.4e1" else with_(path, 0).replace(b"batchSize: 0", b"batchSize: 6.4e1")
        add(cid, cat, data, "spec.sae" if cid == "topk-over-dsae" else field)
    # ---- storage URIs and read locations
    cat = "uris"
    for cid, value in [
        ("file-relative", "file:relative"), ("dotdot", "../../x"), ("tilde-root", "~root/x"), ("tilde", "~/runs"),
        ("s3-empty", "s3://"), ("s3-no-bucket", "s3:///p"), ("s3-dotdot", "s3://bkt/a/../b"),
        ("s3-bad-bucket", "s3://Bad_Bucket/x"), ("s3-empty-segment", "s3://bkt/a//b"), ("gs", "gs://bkt/x"),
        ("dot-segment", "@TMP@/./x"), ("leading-space", " @TMP@/x"), ("backslash", "@TMP@\\x"),
        ("newline", "@TMP@/x\ny"), ("file-host", "file://host/x"), ("http", "http://example.com/x"),
    ]:
        add(f"output-{cid}", cat, with_("spec.output.storageUri", value), "spec.output.storageUri")
    add("cache-uri-dotdot", cat, with_("spec.activations", {"cacheUri": "../cache"}), "spec.activations.cacheUri")
    add("cache-uri-s3-root-dots", cat, with_("spec.activations", {"cacheUri": "s3://bkt/./c"}), "spec.activations.cacheUri")
    add("endpoint-file", cat, with_("spec.output", {"storageUri": "s3://bkt/x", "endpointUrl": "file://"}),
        "spec.output.endpointUrl")
    add("endpoint-ftp", cat, with_("spec.output", {"storageUri": "s3://bkt/x", "endpointUrl": "ftp://h"}),
        "spec.output.endpointUrl")
    add("endpoint-creds", cat, with_("spec.output", {"storageUri": "s3://bkt/x", "endpointUrl": "https://u:p@h"}),
        "spec.output.endpointUrl")
    # hf:// and s3:// are model and dataset sources (issue #15); malformed ones are refused.
    add("model-path-s3", cat, with_("spec.model", {"name": "m", "path": "s3://Bad_Bucket/model"}), "spec.model.path")
    add("model-path-s3-bucket", cat, with_("spec.model", {"name": "m", "path": "s3://bkt"}), "spec.model.path")
    add("dataset-path-hf", cat, with_("spec.dataset.path", "hf://datasets/a/b/c"), "spec.dataset.path")
    add("dataset-path-hf-dashes", cat, with_("spec.dataset.path", "hf://org/a--b"), "spec.dataset.path")
    add("dataset-path-tilde", cat, with_("spec.dataset.path", "~/corpus.jsonl"), "spec.dataset.path")
    add("tokenizer-http", cat, with_("spec.model.tokenizer", "http://h/tok"), "spec.model.tokenizer")
    for cid, value in [("dotdot", "../x"), ("tilde", "~/x"), ("file-relative", "file:x"), ("s3", "s3://"),
                       ("empty-segment", "@TMP@//x")]:
        add(f"--output-{cid}", cat, dump(base()), "spec.output.storageUri", "--output", value)
    add("render-relative", cat, with_("spec.output.storageUri", "runs/x"), "relative path", commands=("render",))
    add("render-relative-output", cat, dump(base()), "relative path", "--output", "runs/x", commands=("render",))
    add("render-relative-cache", cat, with_("spec.activations", {"cacheUri": "caches/c"}),
        "spec.activations.cacheUri", commands=("render",))
    # ---- parallelism (issue #16)
    cat = "parallelism"
    add("nodes-2-data-1", cat, with_("spec.parallelism", {"data": 1}, with_doc("spec.resources.numNodes", 2)),
        "resources.numNodes x resources.numProcPerNode")
    add("tensor-not-dividing", cat, with_("spec.parallelism", {"tensor": 2}, with_doc("spec.resources.numProcPerNode", 3)),
        "parallelism.tensor=2 does not divide")
    add("data-too-big", cat, with_("spec.parallelism", {"data": 4}), "parallelism.data")
    add("batch-not-divisible", cat, with_("spec.resources.numNodes", 3), "parallelism.data=3")
    # ---- sweeps: every value must make a valid trial
    cat = "sweep"
    sweep = {"apiVersion": "saeops.io/v1alpha1", "kind": "SAESweep", "metadata": {"name": "s"},
             "spec": {"trialTemplate": base()["spec"], "parameters": [{"name": "sae.topK", "categorical": [2, 4]}]}}
    for cid, params, needle in [
        ("categorical-bool", [{"name": "sae.topK", "categorical": [2, True]}], "spec.parameters.0"),
        ("categorical-nan", [{"name": "trainer.lr", "categorical": [math.nan]}], "spec.parameters.0"),
        ("categorical-under-topk", [{"name": "sae.dSae", "categorical": [32, 2]}], "spec.parameters.0"),
        ("param-into-scalar", [{"name": "sae.topK.x", "categorical": [1]}], "spec.parameters.0"),
        ("param-bad-name", [{"name": "sae topK", "categorical": [1]}], "spec.parameters.0.name"),
        ("range-nan", [{"name": "trainer.lr", "uniform": {"min": math.nan, "max": 1}}], "spec.parameters.0.uniform.min"),
        ("range-inverted", [{"name": "trainer.lr", "uniform": {"min": 1, "max": 0.1}}], "spec.parameters.0"),
        ("log-range-negative", [{"name": "trainer.lr", "logUniform": {"min": -1, "max": 1}}], "spec.parameters.0"),
        ("param-output", [{"name": "output.storageUri", "categorical": ["../x"]}], "spec.parameters.0"),
        ("no-params", [], "spec.parameters"),
    ]:
        doc = copy.deepcopy(sweep)
        doc["spec"]["parameters"] = params
        add(f"sweep-{cid}", cat, dump(doc), needle)
    doc = copy.deepcopy(sweep)
    doc["spec"]["objective"] = {"target": math.inf}
    add("sweep-target-inf", cat, dump(doc), "spec.objective.target")
    doc = copy.deepcopy(sweep)
    doc["spec"]["trialTemplate"]["resources"] = {"numNodes": 2}
    doc["spec"]["trialTemplate"]["parallelism"] = {"data": 1}
    add("sweep-template-parallelism", cat, dump(doc), "spec.trialTemplate")
    # ---- --set arguments
    cat = "--set"
    text = dump(base())
    tol = dump({**base(), "spec": {**base()["spec"], "resources": {"tolerations": [{"key": "a", "operator": "Exists"}]}}})
    for cid, data, arg, needle in [
        ("index-missing-list", text, "spec.resources.tolerations.3.key=x", "--set spec.resources.tolerations.3"),
        ("index-out-of-range", tol, "spec.resources.tolerations.3.key=x", "index 3 is out of range"),
        ("key-into-list", tol, "spec.resources.tolerations.key=x", "is a list; index it with a number"),
        ("negative-index", tol, "spec.resources.tolerations.-1.key=x", "index it with a number"),
        ("huge-index", tol, "spec.resources.tolerations.99999999999999999999.key=x", "index it with a number"),
        ("key-into-scalar", text, "spec.sae.topK.x=1", "spec.sae.topK is a number, not a mapping"),
        ("key-into-string", text, "spec.sae.actFn.x=1", "spec.sae.actFn is a string"),
        ("key-into-kind", text, "kind.x=1", "kind is a string"),
        ("empty-segment", text, "spec..sae=1", "empty path segment"),
        ("leading-dot", text, ".spec=1", "empty path segment"),
        ("no-equals", text, "spec.sae.topK", "expected dotted.path=value"),
        ("deep-path", text, ".".join(["a"] * 40) + "=1", "segments"),
        ("value-true", text, "spec.sae.topK=true", "spec.sae.topK"),
        ("value-float", text, "spec.sae.topK=4.0", "spec.sae.topK"),
        ("value-nan", text, "spec.trainer.weightDecay=.nan", "spec.trainer.weightDecay"),
        ("value-inf", text, "spec.trainer.weightDecay=.inf", "spec.trainer.weightDecay"),
        ("value-seed-2^70", text, f"spec.trainer.seed={2**70}", "spec.trainer.seed"),
        ("value-deep", text, "spec.sae.topK=" + "[" * 200 + "]" * 200, "spec.sae.topK"),
        ("value-laughs", text, "spec.sae.topK={a: &a [1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]}",
         "spec.sae.topK"),
        ("value-python-tag", text, "spec.sae.topK=!!python/name:os.system", "spec.sae.topK"),
        ("kind-list", text, "kind=[a]", "kind: expected one of"),
        ("api-map", text, "apiVersion={a: 1}", "apiVersion: expected"),
        ("metadata-list", text, "metadata=[1]", "metadata"),
        ("metadata-unknown", text, "metadata.foo=1", "metadata.foo: unknown field"),
        ("label-bad", text, "metadata.labels.k=a b", "metadata.labels.k"),
        ("output-dotdot", text, "spec.output.storageUri=../x", "spec.output.storageUri"),
        ("nodes-2-with-data-1", text, "spec.resources.numNodes=2", "@SET2@"),
    ]:
        args = ("--set", arg)
        if needle == "@SET2@":
            args, needle = ("--set", arg, "--set", "spec.parallelism.data=1"), "parallelism.data"
        add(f"set-{cid}", cat, data, needle, *args)
    return out


def with_doc(path: str, value: Any) -> dict[str, Any]:
    return yaml.safe_load(with_(path, value))


def with_json(path: str, value: Any) -> str:
    return json.dumps(yaml.safe_load(with_(path, value)))


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    scalars, tables = [], []
    for k, v in doc.items():
        (tables if isinstance(v, dict) else scalars).append((k, v))
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {json.dumps(v)}" for k, v in scalars]
    for k, v in tables:
        lines.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines) + "\n"


TEXT_TOML = _toml(BASE)
