#!/usr/bin/env bash
# Dry-runs pip's resolution of the GPU job environment, the way a new user on a GPU node installs it.
# NOT part of CI: the index serves no metadata-only files for these packages, so each dry run
# downloads the full wheels (vLLM, CUDA torch, the NVIDIA libraries: several GB).
#
#   benchmarks/gpu_resolve.sh [--python PYTHON] [--workdir DIR] [--keep]
#
# Two resolutions, each with `pip install --dry-run --ignore-installed --report` in a fresh venv:
#   extra: `pip install ".[eval,gpu]"`            (README, "The paper's setup on GPUs")
#   env:   the `pip:` list of envs/gpu.yaml       (snakemake --sdm conda)
# pip runs clean: no pip config files and no find-links / extra index / constraints from the
# environment (PIP_CONFIG_FILE=/dev/null), so a machine's local CPU torch wheel cannot skew the
# result. The venv and the download cache live under a temporary folder (default under /tmp),
# removed at the end unless --keep. Prints the resolved versions of the packages that matter and
# exits non-zero if a resolution fails or a pin of envs/gpu.yaml resolves to another version.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=python3
WORK=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYTHON=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_resolve.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/rspo-gpu-resolve.XXXXXX")
fi
mkdir -p "$WORK"
if [ "$KEEP" = 0 ]; then
  trap 'rm -rf "$WORK"' EXIT
fi

# a clean pip: keep only the TLS certificate setting and the timeout
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_NO_INDEX PIP_REQUIRE_VIRTUALENV \
  PIP_REQUIREMENT PIP_USER PIP_TARGET PIP_PREFIX
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CACHE_DIR="$WORK/cache"

[ -x "$WORK/venv/bin/python" ] || "$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
echo "== $(date -u +%Y-%m-%dT%H:%MZ) $("$PY" --version) $("$PY" -m pip --version | cut -d' ' -f1-2) on $(uname -m)"

# envs/gpu.yaml's pip entries (the lines "- pkg==version" under "- pip:"), index options dropped
"$PY" - "$ROOT/envs/gpu.yaml" > "$WORK/env-requirements.txt" <<'EOF'
import sys

inside, indent = False, None
for line in open(sys.argv[1]):
    text = line.split("#", 1)[0].rstrip()
    stripped = text.lstrip()
    if stripped == "- pip:":
        inside, indent = True, len(text) - len(stripped)
        continue
    if inside and stripped:
        if len(text) - len(stripped) <= indent:
            inside = False
        elif stripped.startswith("- ") and not stripped[2:].startswith("-"):
            print(stripped[2:].strip())
EOF

status=0
resolve() {  # name, pip arguments...
  local name=$1; shift
  echo "== resolving $name: pip install --dry-run --ignore-installed $*"
  if "$PY" -m pip install -q --dry-run --ignore-installed --report "$WORK/$name.json" "$@" \
      > "$WORK/$name.log" 2>&1; then
    echo "   resolved"
  else
    echo "   FAILED (last lines of the log):"; tail -n 25 "$WORK/$name.log" | sed 's/^/   /'
    status=1
  fi
}
resolve extra "$ROOT[eval,gpu]"
resolve env -r "$WORK/env-requirements.txt"

"$PY" - "$WORK" <<'EOF' || status=1
import json, re, sys
from pathlib import Path

work = Path(sys.argv[1])
key = ["vllm", "torch", "transformers", "tokenizers", "accelerate", "deepspeed", "numpy", "huggingface-hub",
       "safetensors", "datasets", "pandas", "pyarrow", "sentence-transformers", "mistral-common", "xformers",
       "flashinfer-python", "alpaca-eval", "setuptools", "scikit-learn", "nvidia-cuda-runtime", "nvidia-cuda-runtime-cu12"]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
resolved = {}
for name in ("extra", "env"):
    report = work / f"{name}.json"
    if report.exists():
        items = json.loads(report.read_text())["install"]
        resolved[name] = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
if not resolved:
    sys.exit(1)
print("== resolved versions" + "".join(f" | {n}" for n in resolved))
for k in key:
    if any(k in r for r in resolved.values()):
        print(f"   {k:26s}" + "".join(f" {r.get(k, '-'):>12s}" for r in resolved.values()))
print("   (packages in all: " + ", ".join(f"{n} {len(r)}" for n, r in resolved.items()) + ")")
bad = []
if "env" in resolved:
    for line in (work / "env-requirements.txt").read_text().split():
        if "==" in line:
            pkg, ver = line.split("==", 1)
            got = resolved["env"].get(norm(pkg.split("[")[0]))
            if got != ver:
                bad.append(f"{pkg} pinned {ver}, resolved {got}")
    print("   envs/gpu.yaml pins: " + ("all resolved as pinned" if not bad else "; ".join(bad)))
(work / "summary.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
sys.exit(1 if bad else 0)
EOF
if [ "$KEEP" = 1 ]; then echo "== reports, logs and the summary are in $WORK"; fi
exit $status
