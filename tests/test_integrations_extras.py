"""The integrations are optional: the base install imports none of their libraries, and each adapter
without its library fails naming the extra to install."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

LIBRARIES = {  # adapter module -> (its library's modules, the extra)
    "pyterrier": (["pyterrier"], "pyterrier"),
    "langchain": (["langchain_core", "langchain_classic"], "langchain"),
    "llama_index": (["llama_index"], "llama-index"),
    "mcp": (["mcp"], "mcp"),
}
ALL = [m for modules, _ in LIBRARIES.values() for m in modules]


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_base_imports_none_of_the_libraries():
    code = ("import sys, reasonrank.cli, reasonrank.integrations, reasonrank.integrations.mcp, reasonrank.validation; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ALL!r}))")
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_integration_is_a_required_dependency():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    packages = {r.split(">")[0].split("[")[0] for extra in ("pyterrier", "langchain", "llama-index", "mcp") for r in extras[extra]}
    assert packages == {"pyterrier", "langchain-core", "langchain-classic", "llama-index-core", "mcp"}
    assert not packages & {r.split(">")[0].split("[")[0].split("<")[0] for r in project["dependencies"]}


@pytest.mark.parametrize("adapter", LIBRARIES)
def test_a_missing_library_names_its_extra(adapter):
    modules, extra = LIBRARIES[adapter]
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    # the CLI imports the MCP module, so that one asks for its library only when a server is built
    use = "from reasonrank.integrations.mcp import build_server; build_server(None)" if adapter == "mcp" \
        else f"import reasonrank.integrations.{adapter}"
    proc = python(f"import sys; {blocked}; {use}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("reasonrank.errors.MissingExtra: ") and last.endswith(f"Install it with: pip install 'reasonrank[{extra}]'")
