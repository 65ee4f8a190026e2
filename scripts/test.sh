#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite offline. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not slow"        # the fast tests only
#   bash scripts/test.sh tests/test_graph.py
# Before the tests: `ruff check` and `ruff format --check` (pyproject's [tool.ruff]), then `mypy` over the public API
# modules (pyproject's [tool.mypy] files); any of them failing fails the script. REFINE_LINT=0 skips them (e.g. while
# iterating on one test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

# Offline and deterministic: no hub downloads, no remote LiteLLM cost map, one tokenizer thread pool.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false LITELLM_LOCAL_MODEL_COST_MAP=True
export DSPY_CACHEDIR="${DSPY_CACHEDIR:-${TMPDIR:-/tmp}/refine-test-dspy-cache-$$}"
export PYTHONDONTWRITEBYTECODE=1

if [ "${REFINE_LINT:-1}" != 0 ]; then
    echo "[test] ruff check" >&2
    ".venv/bin/ruff" check .
    echo "[test] ruff format --check" >&2
    ".venv/bin/ruff" format --check .
    echo "[test] mypy (public API modules)" >&2
    ".venv/bin/mypy"
fi

".venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
