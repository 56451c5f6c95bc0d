#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install the project with its test extras; idempotent and quiet: pip's
# output goes to .venv/setup.log, which is printed only when a step fails.
#
# torch is a test-only reference (the parity tests compare against PyTorch / diffusers / transformers). It is
# installed first, as the CPU build: PyPI's Linux torch wheel is the CUDA build, gigabytes the tests never
# use. REHYAT_TORCH_INDEX is the extra index it comes from (default https://download.pytorch.org/whl/cpu,
# next to pip's own indexes); set it empty (REHYAT_TORCH_INDEX=) to use only pip's configured indexes and
# wheel folders, e.g. a local mirror. An index that cannot be reached is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: need Python >= 3.11" >&2; exit 1; }
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
[ ! -f "$stamp" ] || exit 0

[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/setup.log
: >"$log"
# quietly CMD...: runs CMD with its output in the log; on failure prints the log and stops.
quietly() {
  if ! "$@" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: failed: $* (log above, also in $log)" >&2
    exit 1
  fi
}
echo "setup: installing the project and its test extras into .venv (a few minutes the first time) ..."
quietly .venv/bin/python -m pip install -q --upgrade pip

# The torch pin is pyproject.toml's (test extras), so the two cannot disagree.
torch_pin=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
[ -n "$torch_pin" ] || { echo "setup: no torch==VERSION pin in pyproject.toml" >&2; exit 1; }
torch_index=${REHYAT_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
if [ -n "$torch_index" ] && ! .venv/bin/python - "$torch_index" >>"$log" 2>&1 <<'EOF'
import os, ssl, sys, urllib.request
# pip's certificate bundle when one is configured (corporate proxies), else the system's.
context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15, context=context).close()
EOF
then
  echo "setup: note: $torch_index cannot be reached; torch comes from pip's configured indexes (set" \
       "REHYAT_TORCH_INDEX to a reachable CPU-wheel index to avoid the CUDA build)" >&2
  torch_index=
fi
if [ -n "$torch_index" ]; then
  quietly .venv/bin/python -m pip install -q "$torch_pin" --extra-index-url "$torch_index"
else
  quietly .venv/bin/python -m pip install -q "$torch_pin"
fi
quietly .venv/bin/python -m pip install -q -e '.[test]'
rm -f .venv/.installed-*
touch "$stamp"
echo "setup: done"
