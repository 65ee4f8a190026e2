"""Artifacts written next to a distilled checkpoint: the model card (data provenance + config) and the loss curve."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["data_provenance", "length_summary", "write_loss_curve", "write_model_card"]


def data_provenance(rows: Sequence[Mapping[str, Any]], source: str) -> dict[str, Any]:
    """Summarize where the training rows came from (models, personas, program hashes, turn counts)."""
    models: Counter[str] = Counter()
    programs: Counter[str] = Counter()
    personas = set()
    masked = trained = 0
    from refine.codec import provenance_from_hf

    for r in rows:
        prov = provenance_from_hf(r.get("provenance"))  # an hf export's lists of records read back as dicts
        for role, model in (prov.get("models") or {}).items():
            models[f"{role}={model}"] += 1
        if prov.get("program_hash"):
            programs[prov["program_hash"]] += 1
        if prov.get("persona"):
            personas.add(prov["persona"])
        for m in r["messages"]:
            if m["role"] == "assistant":
                if m.get("loss", True) is False:
                    masked += 1
                else:
                    trained += 1
    return {
        "source": source,
        "rows": len(rows),
        "assistant_turns_trained": trained,
        "assistant_turns_masked": masked,
        "models": dict(models.most_common()),
        "program_hashes": dict(programs.most_common()),
        "personas": len(personas),
        "row_ids_sample": [r.get("id") for r in rows[:5]],
    }


def length_summary(stats: Mapping[str, Any]) -> str:
    """One line: how many trajectories were longer than the max length, and what happened to each (never silent)."""
    requested = stats.get("max_length_requested")
    refused = list(stats.get("refused_too_long") or [])
    kept, cut = int(stats.get("kept_whole_over_max_length") or 0), int(stats.get("truncated") or 0)
    dropped = int(stats.get("dropped_no_trained_tokens") or 0)
    total = int(stats.get("examples") or 0) + len(refused) + dropped
    over = kept + cut + len(refused)
    if requested is None:
        return "not recorded"
    line = f"{over} of {total} trajectories longer than max_length {requested}"
    if over:
        parts = []
        if kept:
            parts.append(
                f"{kept} kept whole (max_length raised to {stats.get('max_length')}: a trained turn would be cut)"
            )
        if cut:
            parts.append(f"{cut} truncated in masked tokens only")
        if refused:
            parts.append(f"{len(refused)} refused ({refused[0]['reason']})")
        line += ": " + ", ".join(parts)
    if dropped:
        line += f"; {dropped} dropped (no trained token: every assistant turn has loss false)"
    return line


def write_loss_curve(log_history: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Plot the training loss per step to a PNG (matplotlib, Agg). Returns None when nothing was logged."""
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None, lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (trained tokens)")
    ax.set_title("dspy-refine distillation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(
    out: Path,
    *,
    base: str,
    config: Mapping[str, Any],
    provenance: Mapping[str, Any],
    stats: Mapping[str, Any],
    versions: Mapping[str, str],
    log_history: Sequence[Mapping[str, Any]],
) -> Path:
    """Write README.md (a Hugging Face model card) describing the data, the config and the training run."""
    losses = [h["loss"] for h in log_history if "loss" in h]
    loss_line = f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} logged steps" if losses else "not logged"
    if config.get("lora"):
        method = "LoRA (PEFT), " + ("merged into the weights" if config.get("merge_lora") else "saved as an adapter")
    else:
        method = "full fine-tuning"
    card = f"""---
base_model: {base}
library_name: transformers
tags: [dspy-refine, agentrefine, trl, sft, refinement-tuning]
---

# Student distilled with dspy-refine

Refinement tuning (AgentRefine): multi-turn agent trajectories in which the agent errs and corrects itself from
environment feedback. Ablation **{config.get("ablation")}**: {_ABLATION_TEXT.get(str(config.get("ablation")), "")}

- base model: `{base}`
- method: {method}
- training loss: {loss_line}
- created: {datetime.now(timezone.utc).isoformat(timespec="seconds")}

## Data provenance
```json
{json.dumps(dict(provenance), indent=2, default=str)}
```

## Length and truncation
{length_summary(stats)}

## Token statistics
```json
{json.dumps(dict(stats), indent=2, default=str)}
```

## Configuration
```json
{json.dumps(dict(config), indent=2, default=str)}
```

## Versions
```json
{json.dumps(dict(versions), indent=2)}
```

Load it back as a DSPy LM: `refine.lm.get_lm("local/<this folder>")`.
"""
    path = out / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


_ABLATION_TEXT = {
    "masked": "erroneous assistant turns stay in the context but are masked from the loss (the paper's recipe).",
    "trained": "erroneous assistant turns are trained like the others.",
    "no-refine": "refinement episodes (an erroneous turn and its feedback) were removed from the trajectories.",
}
