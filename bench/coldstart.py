"""Cold start and size of each Lambda function and of the shared layer.

Import time: every `functions/<name>/handler.py` is imported in a fresh interpreter with
`python -X importtime`, laid out as Lambda lays it out - the function's code directory
first, then the layer's `python/` directory, then only what the python3.13 runtime itself
provides (stdlib, boto3, botocore, s3transfer, jmespath, urllib3, dateutil, six) - with the
environment variables the template gives that function (intrinsics replaced by plausible
values). The layer is rebuilt for this machine from the .venv's copies of the exact
distributions in layer/requirements.txt plus shared/, so an import that only works because
the .venv has something the layer lacks fails here as it would in Lambda. Two cases: the
layer without bytecode (/opt is read-only in Lambda, so a layer shipped without it is
compiled again at every cold start) and with bytecode compiled; the goal is judged on the
one layer/Makefile ships (it ships bytecode when it runs compileall).

Size: the zip of each function and of the layer, from `.aws-sam/build` when `make
sam-build` has been run, else from the layer rebuilt as above (the section says which).
"""

from __future__ import annotations

import compileall
import importlib.metadata as md
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import yaml

from bench.common import (
    IMG,
    PYTHON,
    ROOT,
    Context,
    Goal,
    Section,
    fmt,
    header,
    median,
    table,
)

TEMPLATE = ROOT / "template.yaml"
BUILD = ROOT / ".aws-sam" / "build"
LAYER_REQUIREMENTS = ROOT / "layer" / "requirements.txt"
# What the python3.13 Lambda runtime provides besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "six")
IMPORT_GOAL_MS = 300.0
SIZE_GOAL_BYTES = 5 * 1024 * 1024
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation short-form tags kept as {"Fn::X": value} mappings."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def _plausible(value: Any, params: dict[str, Any]) -> str:
    """A stand-in for an intrinsic: a parameter's default, else a resource-like name."""
    if isinstance(value, dict) and "Ref" in value:
        ref = value["Ref"]
        if ref in params:
            return str(params[ref].get("Default", ""))
        if "Queue" in ref:
            return f"https://sqs.us-east-1.amazonaws.com/123456789012/bench-{ref}"
        return f"bench-{ref}"
    if isinstance(value, dict) and "Fn::If" in value:
        return _plausible(value["Fn::If"][2], params)
    if isinstance(value, dict):
        return "bench"
    return str(value)


def functions_of_template() -> list[dict[str, Any]]:
    """Each function's logical id, code directory and environment, from template.yaml."""
    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # a SafeLoader subclass
    params = doc.get("Parameters", {})
    glob = doc.get("Globals", {}).get("Function", {})
    glob_env = glob.get("Environment", {}).get("Variables", {})
    out = []
    for logical, res in doc["Resources"].items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.get("Properties", {})
        env = {**glob_env, **props.get("Environment", {}).get("Variables", {})}
        handler = props.get("Handler", glob.get("Handler", "handler.lambda_handler"))
        out.append(
            {
                "logical_id": logical,
                "code_uri": str(props["CodeUri"]).rstrip("/"),
                "module": handler.rsplit(".", 1)[0],
                "env": {k: _plausible(v, params) for k, v in env.items()},
                "memory_mb": props.get("MemorySize", glob.get("MemorySize")),
            }
        )
    return out


def _layer_distributions() -> list[str]:
    names = []
    for raw in LAYER_REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0])
    return names


def build_layer(dest: Path) -> list[str]:
    """The layer's python/ directory, from the .venv's installed copies; returns the dists."""
    python = dest / "python"
    python.mkdir(parents=True)
    dists = _layer_distributions()
    for name in dists:
        dist = md.distribution(name)
        for rel in dist.files or []:
            if "__pycache__" in rel.parts or rel.suffix == ".pyc" or rel.name == "RECORD":
                continue
            src = Path(str(dist.locate_file(rel)))
            if not src.is_file() or ".." in rel.parts:
                continue
            target = python / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    shutil.copytree(
        ROOT / "shared", python / "shared", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dists


def build_runtime(dest: Path) -> None:
    """Links to the packages the Lambda runtime itself ships (boto3 and friends)."""
    dest.mkdir(parents=True)
    site = Path(md.distribution("boto3").locate_file(""))
    for name in RUNTIME_PACKAGES:
        for candidate in (site / name, site / f"{name}.py"):
            if candidate.exists():
                os.symlink(candidate, dest / candidate.name)


def _lambda_env(fn: dict[str, Any], path: list[Path], bytecode: bool) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(p) for p in path),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",  # a placeholder: nothing is called
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": fn["logical_id"],
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn["memory_mb"] or 128),
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "LAMBDA_TASK_ROOT": str(path[0]),
        **fn["env"],
    }
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def by_package(stderr: str) -> dict[str, float]:
    """Import self-time (ms) summed by top-level package: where the time goes."""
    out: dict[str, float] = {}
    for m in (_IMPORTTIME.match(line) for line in stderr.splitlines()):
        if m:
            top = m.group(4).split(".", 1)[0]
            out[top] = out.get(top, 0.0) + int(m.group(1)) / 1000.0
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def subtree_ms(stderr: str, module: str) -> float:
    """Cumulative import time (ms) of `module` wherever it was first imported (0 if not)."""
    for m in (_IMPORTTIME.match(line) for line in stderr.splitlines()):
        if m and m.group(4) == module:
            return int(m.group(2)) / 1000.0
    return 0.0


def _parse_importtime(stderr: str, module: str) -> tuple[Optional[float], list[tuple[str, float]]]:
    """The module's cumulative import time (ms) and its heaviest direct imports."""
    total: Optional[float] = None
    children: list[tuple[str, float]] = []
    lines = [m for m in (_IMPORTTIME.match(line) for line in stderr.splitlines()) if m]
    # importtime prints children before their parent; a child of the handler is indented
    # one level (2 spaces) deeper than the handler's own line, and precedes it.
    for idx, m in enumerate(lines):
        if m.group(4) == module and len(m.group(3)) == 1:
            total = int(m.group(2)) / 1000.0
            for child in lines[:idx]:
                if len(child.group(3)) == 3:
                    children.append((child.group(4), int(child.group(2)) / 1000.0))
            break
    children.sort(key=lambda kv: -kv[1])
    return total, children[:6]


def time_import(
    fn: dict[str, Any], code: Path, layer: Path, runtime: Path, *, bytecode: bool, runs: int
) -> dict[str, Any]:
    env = _lambda_env(fn, [code, layer / "python", runtime], bytecode)
    totals: list[float] = []
    walls: list[float] = []
    heaviest: list[tuple[str, float]] = []
    packages: list[dict[str, float]] = []
    boto3_ms: list[float] = []
    error = ""
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.run(
            [PYTHON, "-S", "-X", "importtime", "-c", f"import {fn['module']}"],
            env=env,
            cwd=code,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        walls.append((time.monotonic() - started) * 1000.0)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
            error = " ".join(tail[-2:])[:300]
            break
        total, children = _parse_importtime(proc.stderr, fn["module"])
        if total is not None:
            totals.append(total)
            heaviest = children
            packages.append(by_package(proc.stderr))
            boto3_ms.append(subtree_ms(proc.stderr, "boto3"))
    return {
        "median_ms": median(totals),
        "runs_ms": totals,
        "wall_median_ms": median(walls),
        "heaviest": heaviest,
        "packages": _median_packages(packages),
        "boto3_median_ms": median(boto3_ms),
        "error": error,
    }


def _median_packages(runs: list[dict[str, float]]) -> dict[str, float]:
    names = {name for run in runs for name in run}
    med = {name: median([run.get(name, 0.0) for run in runs]) for name in names}
    return dict(sorted(med.items(), key=lambda kv: -kv[1])[:8])


def _zip_size(directory: Path) -> tuple[int, int]:
    """(zip bytes, unzipped bytes) of a directory's files, as `sam package` zips them."""
    buffer = io.BytesIO()
    raw = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(directory.rglob("*")):
            if path.is_file():  # everything sam would zip, bytecode included
                zf.write(path, path.relative_to(directory))
                raw += path.stat().st_size
    return len(buffer.getvalue()), raw


def run(quick: bool) -> dict[str, Any]:
    runs = 2 if quick else 5
    fns = functions_of_template()
    results: dict[str, Any] = {"functions": [], "runs": runs}
    makefile = ROOT / "layer" / "Makefile"
    results["ships_bytecode"] = makefile.is_file() and "compileall" in makefile.read_text()
    with tempfile.TemporaryDirectory(prefix="fieldsync-coldstart-") as tmp:
        base = Path(tmp)
        layer_plain = base / "layer-plain"
        results["layer_dists"] = build_layer(layer_plain)
        layer_compiled = base / "layer-compiled"
        shutil.copytree(layer_plain, layer_compiled)
        compileall.compile_dir(layer_compiled, quiet=2, workers=2)
        runtime = base / "runtime"
        build_runtime(runtime)
        built = BUILD.is_dir() and (BUILD / "SharedLayer").is_dir()
        results["size_source"] = ".aws-sam/build" if built else "layer rebuilt from .venv"
        layer_dir = BUILD / "SharedLayer" if built else layer_plain
        results["layer_zip"], results["layer_raw"] = _zip_size(layer_dir)
        for fn in fns:
            code = base / "code" / fn["logical_id"]
            shutil.copytree(
                ROOT / fn["code_uri"], code, ignore=shutil.ignore_patterns("__pycache__")
            )
            shipped = time_import(fn, code, layer_plain, runtime, bytecode=False, runs=runs)
            cached = time_import(fn, code, layer_compiled, runtime, bytecode=True, runs=runs)
            fn_dir = BUILD / fn["logical_id"] if built else code
            zip_bytes, raw_bytes = _zip_size(fn_dir)
            results["functions"].append(
                {
                    "name": fn["logical_id"],
                    "code_uri": fn["code_uri"],
                    "shipped": shipped,
                    "bytecode": cached,
                    "zip": zip_bytes,
                    "raw": raw_bytes,
                }
            )
    return results


def _mib(n: float) -> str:
    return f"{n / 1024 / 1024:.2f} MiB"


def render(results: dict[str, Any], ctx: Context) -> Section:
    from bench.plots import bar_chart

    fns = results["functions"]
    names = [f["name"].removesuffix("Function") for f in fns]
    key = "bytecode" if results.get("ships_bytecode") else "shipped"
    kind = "with bytecode" if key == "bytecode" else "no bytecode"
    shipped = [f[key]["median_ms"] for f in fns]
    bar_chart(
        IMG / "coldstart_import.png",
        names,
        [0.0 if math.isnan(v) else v for v in shipped],  # NaN: the import failed
        title=f"Handler import time, layer as shipped ({kind}), median",
        ylabel="ms (python -X importtime, cumulative)",
        limit=IMPORT_GOAL_MS,
        limit_label=f"goal {IMPORT_GOAL_MS:g} ms",
    )
    layer_zip = results["layer_zip"]
    rows = []
    goals = []
    for f, name in zip(fns, names):
        s, b = f["shipped"], f["bytecode"]
        g = f[key]
        total_zip = f["zip"] + layer_zip
        rows.append(
            [
                name,
                f"`{f['code_uri']}`",
                fmt(s["median_ms"]) if not s["error"] else f"fails: {s['error']}",
                fmt(b["median_ms"]) if not b["error"] else "fails",
                fmt(s["wall_median_ms"]),
                f"{f['zip'] / 1024:.1f} KiB",
                _mib(total_zip),
                ", ".join(f"{m} {ms:.0f}" for m, ms in s["heaviest"][:4]),
                ", ".join(f"{m} {ms:.0f}" for m, ms in list(s["packages"].items())[:5]),
                fmt(s["boto3_median_ms"]),
            ]
        )
        ok = not g["error"] and g["median_ms"] < IMPORT_GOAL_MS
        goals.append(
            Goal(
                f"{name}: import (layer as shipped, {kind})",
                f"< {IMPORT_GOAL_MS:g} ms",
                f"{fmt(g['median_ms'])} ms" if not g["error"] else "import fails",
                ok,
            )
        )
        goals.append(
            Goal(
                f"{name}: function + layer zip",
                "< 5 MiB",
                _mib(total_zip),
                total_zip < SIZE_GOAL_BYTES,
            )
        )
    body = (
        header(ctx) + "\nImport time of each handler module in a fresh interpreter (`python -S -X "
        "importtime -c 'import handler'`, cumulative time of the `handler` import, median of "
        f"{results['runs']} runs), laid out as Lambda lays it out: the function's code, then "
        "the layer's `python/` (rebuilt for this machine from the .venv's copies of exactly "
        f"{', '.join(results['layer_dists'])} - the pins of layer/requirements.txt - plus "
        "`shared/`), then only what the python3.13 runtime ships (stdlib, "
        f"{', '.join(RUNTIME_PACKAGES)}), with the environment variables the template sets "
        "for that function. Two layers are timed: without bytecode (/opt is read-only in "
        "Lambda, so a layer shipped that way is compiled again at every cold start) and with "
        f'bytecode precompiled; layer/Makefile ships the one marked "shipped" ({kind}), '
        "and the goal is judged on it. This machine is not a Lambda arm64 sandbox: "
        "compare the figures with each other and with the goal, not with a Lambda Init "
        "Duration.\n\n"
        f"Sizes: zip (deflate) of each function and of the layer, from {results['size_source']}"
        + (
            " (`make sam-build` output)"
            if results["size_source"].startswith(".aws")
            else " (no `make sam-build` output found: what sam would package, computed)"
        )
        + f". Layer: {_mib(layer_zip)} zipped, {_mib(results['layer_raw'])} unzipped.\n\n"
        + "![import](img/coldstart_import.png)\n\n"
        + table(
            [
                "function",
                "code",
                "import ms, no bytecode" + (" (shipped)" if key == "shipped" else ""),
                "import ms, with bytecode" + (" (shipped)" if key == "bytecode" else ""),
                "process wall ms",
                "function zip",
                "function + layer zip",
                "heaviest direct imports (ms, cumulative)",
                "self time by package (ms)",
                "boto3 subtree ms",
            ],
            rows,
        )
    )
    import_missed = [f for f in fns if f[key]["error"] or f[key]["median_ms"] >= 300]
    if import_missed:
        compile_cost = [
            f["shipped"]["median_ms"] - f["bytecode"]["median_ms"]
            for f in fns
            if not f["shipped"]["error"] and not f["bytecode"]["error"]
        ]
        boto = [f["shipped"]["boto3_median_ms"] for f in fns if not f["shipped"]["error"]]
        parts = []
        if key == "shipped" and compile_cost and max(compile_cost) > 50:
            parts.append(
                "the layer ships without bytecode, so each cold start compiles powertools, "
                "pynamodb, aws_xray_sdk and shared/: "
                f"{fmt(min(compile_cost))}-{fmt(max(compile_cost))} ms of the figures above "
                "(as shipped minus with bytecode). Fix (layer/Makefile): compile the layer "
                '(`$(PYTHON) -m compileall -q --invalidation-mode unchecked-hash "$(ARTIFACTS_DIR)'
                '/python"`) instead of deleting `__pycache__`'
            )
        if boto and min(boto) > 0:
            parts.append(
                "every handler, the health check included, imports boto3 (with botocore, "
                f"s3transfer and urllib3 under it: {fmt(min(boto))}-{fmt(max(boto))} ms) "
                "although only the SQS client needs it: `shared/logic/rest.py` imports "
                "`Principal` from the `shared.dal` package, whose `__init__` imports "
                "`shared.dal.devices` -> `shared.dal.aws`, which imports boto3 at module "
                "level. Fix (shared/dal/aws.py, shared/logic/rest.py): import boto3 inside "
                "the function that builds the SQS client, and import `Principal` from its "
                "own module so handlers that need no table do not run `shared.dal`'s "
                "`__init__`"
            )
        parts.append(
            "`aws_lambda_powertools.event_handler` imports every resolver (AppSync, "
            "Bedrock, VPC Lattice...) and asyncio; that is the library's price"
        )
        body += (
            "\nWhy the import goal is missed (from the importtime trees): "
            + "; ".join(f"({i}) {p}" for i, p in enumerate(parts, 1))
            + ".\n"
        )
    return Section("Cold start and size", body, goals, ["img/coldstart_import.png"])
