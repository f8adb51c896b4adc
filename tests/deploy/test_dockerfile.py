"""The Dockerfile, parsed: what can be checked without building it. tests/cluster builds the CPU
variant (legacy builder) and runs its pods; `SAEOPS_TEST_BUILDKIT=1` also builds it with BuildKit.

A small parser: line continuations, comments and parser directives, instructions with their
flags, global and stage ARGs with `${VAR}` / `${VAR:-default}` substitution, stages by name.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import os
import re
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.deploy._helpers import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VARIANTS = ("cuda", "cpu")
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}
_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")
_IMAGE = re.compile(
    r"^(?:(?P<registry>[\w.-]+(?::\d+)?)/)?(?P<path>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


@dataclass
class Instruction:
    line: int
    keyword: str
    flags: dict[str, str]
    args: str
    comments: list[str] = field(default_factory=list)

    def json_args(self) -> list[str] | None:
        """Exec-form arguments (`["a", "b"]`), or None for shell form."""
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None


@dataclass
class Stage:
    index: int
    base: str  # as written
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    directives: dict[str, str]
    global_args: dict[str, str | None]
    stages: list[Stage]
    comments: list[str]


def parse(text: str) -> Dockerfile:
    directives: dict[str, str] = {}
    comments: list[str] = []
    instructions: list[Instruction] = []
    pending_comments: list[str] = []
    lines = text.splitlines()
    in_directives = True
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        i += 1
        if in_directives:
            m = re.match(r"^#\s*(\w+)\s*=\s*(\S+)\s*$", stripped)
            if m and m.group(1).lower() in {"syntax", "escape", "check"}:
                directives[m.group(1).lower()] = m.group(2)
                continue
            in_directives = False
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            pending_comments.append(comments[-1])
            continue
        start = i
        logical = stripped
        while logical.endswith("\\"):
            logical = logical[:-1].rstrip()
            # Comment lines inside a continuation are dropped, as BuildKit does.
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1
            assert i < len(lines), f"line {start}: continuation at end of file"
            logical += " " + lines[i].strip()
            i += 1
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        assert keyword in INSTRUCTIONS, f"line {start}: unknown instruction {keyword}"
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instructions.append(Instruction(start, keyword, flags, rest, pending_comments))
        pending_comments = []

    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            assert len(words) in (1, 3), f"line {ins.line}: FROM image [AS name]"
            name = None
            if len(words) == 3:
                assert words[1].upper() == "AS", f"line {ins.line}: expected AS"
                name = words[2]
            stages.append(Stage(len(stages), words[0], name))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.line}: only ARG may come before the first FROM"
            key, eq, value = ins.args.partition("=")
            global_args[key.strip()] = unquote(value.strip()) if eq else None
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(directives, global_args, stages, comments)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def substitute(text: str, env: dict[str, str | None]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = env.get(name)
        if m.group(2) == "-" and not value:
            return m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        assert value is not None, f"${name} is not defined"
        return value

    return _VAR.sub(repl, text)


def resolved_bases(df: Dockerfile, variant: str) -> list[str]:
    env = {**df.global_args, "VARIANT": variant}
    return [substitute(stage.base, env) for stage in df.stages]


def stage_chain(df: Dockerfile, variant: str) -> list[Stage]:
    """The final stage and the stages it is built FROM, final first."""
    names = {s.name: s for s in df.stages if s.name}
    bases = resolved_bases(df, variant)
    chain = [df.stages[-1]]
    while bases[chain[-1].index] in names:
        chain.append(names[bases[chain[-1].index]])
    return chain


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_parses_into_named_multi_stages(dockerfile: Dockerfile) -> None:
    # A `# syntax=` line makes BuildKit pull a frontend image: nothing beyond the named bases.
    assert dockerfile.directives == {}
    assert len(dockerfile.stages) >= 3, "multi-stage: a builder and a final stage at least"
    names = [s.name for s in dockerfile.stages if s.name]
    assert len(names) == len(set(names)), names
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9_.-]*", name), name
    assert dockerfile.stages[-1].name == "final"


def test_variant_argument(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args["VARIANT"] == "cuda"
    for variant in VARIANTS:
        bases = resolved_bases(dockerfile, variant)
        chain = stage_chain(dockerfile, variant)
        root = bases[chain[-1].index]
        expected = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04" if variant == "cuda" else "python:3.11-slim"
        assert root.startswith(expected), (variant, root)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_from_is_a_stage_or_a_pinned_image(dockerfile: Dockerfile, variant: str) -> None:
    earlier: set[str] = set()
    for stage, base in zip(dockerfile.stages, resolved_bases(dockerfile, variant), strict=True):
        if base in earlier:
            pass
        else:
            m = _IMAGE.match(base)
            assert m, f"FROM {stage.base} -> {base!r} is not an image reference"
            assert m.group("tag") or m.group("digest"), f"FROM {base}: pin a tag or a digest"
            assert m.group("tag") != "latest", f"FROM {base}: 'latest' is not a pin"
        if stage.name:
            earlier.add(stage.name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_copy_from_and_args_are_declared(dockerfile: Dockerfile, variant: str) -> None:
    env_global = {**dockerfile.global_args, "VARIANT": variant}
    names: set[str] = set()
    for stage in dockerfile.stages:
        env: dict[str, str | None] = {}
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                key, eq, value = ins.args.partition("=")
                key = key.strip()
                assert eq or key in env_global, f"line {ins.line}: ARG {key} has no value and no global default"
                env[key] = unquote(value.strip()) if eq else env_global[key]
            elif ins.keyword == "ENV":
                for m in re.finditer(r"(\w+)=(\"[^\"]*\"|\S+)", ins.args):
                    env[m.group(1)] = unquote(m.group(2))
            elif ins.keyword in {"COPY", "ADD"} and "from" in ins.flags:
                assert ins.flags["from"] in names, f"line {ins.line}: COPY --from={ins.flags['from']} is no earlier stage"
            if ins.keyword in {"COPY", "WORKDIR", "USER", "EXPOSE"}:
                substitute(ins.args, env)  # every variable used is defined
        if stage.name:
            names.add(stage.name)


def test_final_stage_runs_as_non_root_without_entrypoint(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    users = [ins.args for ins in final.instructions if ins.keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, user
    assert user == "1000", "numeric uid 1000 (Kubernetes runAsNonRoot can only check numeric users)"
    assert not [ins for ins in final.instructions if ins.keyword == "ENTRYPOINT"]
    (cmd,) = [ins for ins in final.instructions if ins.keyword == "CMD"]
    assert cmd.json_args(), "CMD in exec (JSON) form"
    run = " ".join(ins.args for ins in final.instructions if ins.keyword == "RUN")
    assert "saeops:x:1000:1000:" in run and "/etc/passwd" in run


def test_exposed_ports_match_the_chart_and_runtime(dockerfile: Dockerfile) -> None:
    import yaml

    from saeops.api import MetricsSpec

    values = yaml.safe_load((REPO / "helm" / "saeops" / "values.yaml").read_text(encoding="utf-8"))
    exposed = {int(p.split("/")[0]) for ins in dockerfile.stages[-1].instructions if ins.keyword == "EXPOSE"
               for p in ins.args.split()}
    assert exposed == {values["operator"]["healthPort"], values["operator"]["metricsPort"], MetricsSpec().port}


def named_entry_points(df: Dockerfile) -> set[str]:
    """Console scripts the Dockerfile names: its CMD and the documented entry points."""
    names: set[str] = set()
    for stage in df.stages:
        for ins in stage.instructions:
            if ins.keyword in {"CMD", "ENTRYPOINT"} and ins.json_args():
                names.add(ins.json_args()[0])  # type: ignore[index]
    for comment in df.comments:
        m = re.match(r"^(saeops[\w-]*)\s", comment)
        if m:
            names.add(m.group(1))
    return names


def test_entry_points_exist_in_pyproject(dockerfile: Dockerfile, pyproject: dict) -> None:
    scripts = pyproject["project"]["scripts"]
    named = named_entry_points(dockerfile)
    assert {"saeops", "saeops-runtime"} <= named, named
    for name in named:
        assert name in scripts, f"Dockerfile names {name!r}, not in [project.scripts]"


@pytest.mark.parametrize("script", ["saeops", "saeops-runtime"])
def test_entry_point_targets_resolve(pyproject: dict, script: str) -> None:
    module, _, attr = pyproject["project"]["scripts"][script].partition(":")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} (target of {script}) is not written yet")
    mod = importlib.import_module(module)
    assert callable(getattr(mod, attr)), f"{module}:{attr}"


def test_install_uses_existing_extras_and_the_ci_torch_pin(dockerfile: Dockerfile, pyproject: dict) -> None:
    extras = set(pyproject["project"]["optional-dependencies"])
    text = DOCKERFILE.read_text(encoding="utf-8")
    for m in re.finditer(r"SAEOPS_EXTRAS=([\w,]+)", text):
        wanted = set(m.group(1).split(","))
        assert {"runtime", "operator"} <= wanted and wanted <= extras, wanted
    assert re.search(r"SAEOPS_EXTRAS=[\w,]*triton", text), "the CUDA variant installs Triton"
    ci = (REPO / ".ci" / "setup").read_text(encoding="utf-8")
    ci_pin = re.search(r"torch==([\d.]+)", ci)
    assert ci_pin and dockerfile.global_args["TORCH_VERSION"] == ci_pin.group(1)
    assert "download.pytorch.org/whl/cpu" in text and re.search(r"download\.pytorch\.org/whl/cu\d+", text)


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        pat = pat.removeprefix("**/")
        parts = path.split("/")
        hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) or fnmatch.fnmatch(parts[i], pat)
                  for i in range(len(parts)))
        if hit:
            ignored = not negate
    return ignored


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: Dockerfile) -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.keyword == "COPY" and "from" not in ins.flags:
                copied += [src.removeprefix("./") for src in ins.args.split()[:-1]]
    assert {"pyproject.toml", "README.md", "runtime", "operator", "kernels"} <= set(copied), copied
    optional = [src for src in copied if src.endswith("*")]  # the wheelhouse and the CA bundle
    assert len(optional) == 2, optional
    for src in (s for s in copied if s not in optional):
        rel = src.removeprefix("./")
        assert (REPO / rel).exists(), f"COPY {src}: not in the repository"
        assert not dockerignored(rel, patterns), f"COPY {src}: excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests", "runs"):
        assert dockerignored(heavy, patterns), f"{heavy} should stay out of the build context"


def test_parser_rejects_broken_files() -> None:
    with pytest.raises(AssertionError):
        parse("RUN echo hi\nFROM x:1\n")  # instruction before FROM
    with pytest.raises(AssertionError):
        parse("FROM x:1\nFORM y\n")  # typo
    df = parse("ARG B=img:1\nFROM ${B} AS a\nFROM a\nUSER 1000\n")
    assert resolved_bases(df, "cpu") == ["img:1", "a"]
    assert substitute("${X:-d}/${Y:+set}", {"X": None, "Y": "1"}) == "d/set"


def test_network_inputs_are_build_args(dockerfile: Dockerfile) -> None:
    """Offline and behind a mirror: every base and index is a global ARG, and the torch index can
    be overridden (it is no ENV fixed in a base stage)."""
    for arg in ("CPU_IMAGE", "CUDA_IMAGE", "UV_IMAGE", "INDEX_URL", "TORCH_INDEX_URL", "WHEELHOUSE", "CA_BUNDLE"):
        assert arg in dockerfile.global_args, arg
    assert {s.base for s in dockerfile.stages if s.base.startswith("$")} == {"${UV_IMAGE}", "${CUDA_IMAGE}",
                                                                           "${CPU_IMAGE}"}
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "${TORCH_INDEX_URL:-$SAEOPS_TORCH_INDEX}" in text
    assert not re.search(r"^ENV[^\n]*TORCH_INDEX_URL=", text, re.M)
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    declared = {ins.args.split("=")[0] for ins in builder.instructions if ins.keyword == "ARG"}
    assert {"INDEX_URL", "TORCH_INDEX_URL", "WHEELHOUSE", "CA_BUNDLE"} <= declared


def test_dependencies_layer_does_not_depend_on_the_sources(dockerfile: Dockerfile) -> None:
    """Source edits rebuild a small layer, not the multi-GB dependency install."""
    builder = next(s for s in dockerfile.stages if s.name == "builder")
    order = [(ins.keyword, ins.args) for ins in builder.instructions if ins.keyword in ("COPY", "RUN")]
    deps = next(i for i, (k, a) in enumerate(order) if k == "RUN" and "-r pyproject.toml" in a)
    before = " ".join(a for k, a in order[:deps] if k == "COPY")
    for source in ("runtime", "operator", "kernels", "README.md"):
        assert source not in before.split(), f"{source} is copied before the dependency layer"


@pytest.mark.skipif(os.environ.get("SAEOPS_TEST_BUILDKIT") != "1", reason="set SAEOPS_TEST_BUILDKIT=1 to build "
                    "the CPU image with BuildKit too (a cold build takes minutes)")
def test_builds_with_buildkit() -> None:
    import shutil
    import subprocess

    from tests.cluster import images
    from tests.cluster.engine import cache_dir, ensure_engine

    client = shutil.which("docker", path="/usr/bin") or shutil.which("docker")  # Debian's has BuildKit built in
    docker, _ = ensure_engine(cache_dir() / "dockerd.log")
    log = images.BuildLog()
    base, uv = images.build_base(docker, cache_dir(), log), images.build_uv(docker, cache_dir(), log)
    args, extras = images.build_inputs(cache_dir(), base, uv)
    context = images.stage_context(cache_dir() / "buildkit-context", extras)
    cmd = [client, "build", "--network=host", "-t", "saeops-test/saeops:buildkit"]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    out = subprocess.run([*cmd, str(context)], env={**os.environ, "DOCKER_BUILDKIT": "1"}, capture_output=True,
                         text=True, timeout=3600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    version = docker("run", "--rm", "saeops-test/saeops:buildkit", "python", "-c",
                     "import torch; print(torch.__version__)").stdout.strip()
    docker("rmi", "saeops-test/saeops:buildkit", check=False)
    assert version.endswith("+cpu"), version
