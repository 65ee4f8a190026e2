"""ScienceWorld as a text environment: the task's score / 100 is the progress; train/dev/test variations stay apart.

ScienceWorld runs in a JVM (the jar ships in the `scienceworld` wheel; Java 17+ must be on the PATH). One adapter
holds one JVM and reloads tasks into it, so an evaluation worker reuses its adapter across episodes.
Unknown commands return ScienceWorld's own "No known action matches that input." and count as invalid; an
ambiguous command is resolved to its first reading, as AgentBoard does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from typing import Any, Literal

from refine.envs._common import normalize_action, require
from refine.envs.base import DEFAULT_MAX_STEPS, EnvObservation, EnvStep
from refine.errors import EnvError

__all__ = ["ACTION_TEMPLATES", "DEFAULT_JVM_OPTIONS", "DEFAULT_TASKS", "ScienceWorldEnv", "check_java"]

Split = Literal["train", "dev", "test"]

ACTION_TEMPLATES: dict[str, str] = {
    "open <obj>": "open a container or door",
    "close <obj>": "close a container or door",
    "activate <obj>": "turn on a device",
    "deactivate <obj>": "turn off a device",
    "connect <obj> to <obj>": "connect electrical components",
    "disconnect <obj>": "disconnect electrical components",
    "use <obj> on <obj>": "use a device or item on another object",
    "look around": "describe the current room",
    "look at <obj>": "describe an object in detail",
    "look in <obj>": "describe a container's contents",
    "read <obj>": "read a note or book",
    "move <obj> to <obj>": "move an object into a container",
    "pick up <obj>": "move an object to the inventory",
    "put down <obj>": "drop an inventory item",
    "pour <obj> in <obj>": "pour a liquid into a container",
    "dunk <obj> in <obj>": "dunk a container into a liquid",
    "mix <obj>": "chemically mix a container",
    "go to <location>": "move to a new location (through an open door)",
    "teleport to <location>": "teleport to a specific room",
    "eat <obj>": "eat a food",
    "flush <obj>": "flush a toilet",
    "focus on <obj>": "signal intent on a task object (focusing on a wrong object ends the task)",
    "wait": "take no action for 10 iterations",
    "wait1": "take no action for 1 iteration",
    "inventory": "list your inventory",
}

# Tasks whose gold paths fit inside 30 steps (easy simplification); the long ones exceed AgentBoard's bound.
DEFAULT_TASKS = (
    "find-non-living-thing",
    "find-living-thing",
    "find-plant",
    "find-animal",
    "lifespan-longest-lived",
    "lifespan-shortest-lived",
    "chemistry-mix-paint-secondary-color",
    "power-component",
    "identify-life-stages-2",
    "use-thermometer",
    "test-conductivity",
)

DESCRIPTION = (
    "You are an agent in ScienceWorld, a simulated house with a kitchen, a workshop, a greenhouse and other rooms, "
    "where you do elementary science experiments. Act with one command per turn, written like the templates below "
    "with <obj> replaced by an object you have seen."
)

# A lean JVM: one GC thread, C1-only JIT, sized for one core. The default JVM starts many compiler and GC threads,
# and with several evaluation workers (one JVM each) they take the CPU that batched LM inference needs.
DEFAULT_JVM_OPTIONS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:ActiveProcessorCount=1"

_NO_MATCH = "No known action matches that input."
_JVM_LOCK = threading.Lock()
_AMBIGUOUS = re.compile(r"^Ambiguous request", re.I)


def check_java() -> str:
    """Return `java -version` output, or raise EnvError with how to install a JRE."""
    java = shutil.which("java")
    if java is None:
        raise EnvError(
            "ScienceWorld needs Java 11+ on the PATH, and none was found. Install a headless JRE, e.g. "
            "`sudo apt-get install -y default-jre-headless` (Debian/Ubuntu) or `conda install -c conda-forge openjdk`."
        )
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvError(
            f"`java -version` failed ({exc}); reinstall Java: `sudo apt-get install -y default-jre-headless`."
        ) from exc
    return (out.stderr or out.stdout).strip()


class ScienceWorldEnv:
    """A ScienceWorld task variation as a `TextEnv`.

    Args:
        max_steps: Episode bound (AgentBoard uses 30).
        split: Which variations `reset` draws from: "test" (default for evaluation), "dev" or "train".
        simplification: ScienceWorld simplification string ("easy" opens doors, allows teleport, ...).
        tasks: Task names used when `reset(task=None)`.
        jvm_options: JVM flags for this adapter's JVM (given through JAVA_TOOL_OPTIONS at start-up); "" for none.
        gold: Compute each episode's gold action sequence at reset (`gold_path`; costs JVM time, off for evaluation).

    `reset(task, seed)` loads variation number `seed % len(variations of split)` of the task.
    """

    name = "scienceworld"
    description = DESCRIPTION

    def __init__(
        self,
        max_steps: int = DEFAULT_MAX_STEPS,
        split: Split = "test",
        simplification: str = "easy",
        tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
        jvm_options: str = DEFAULT_JVM_OPTIONS,
        gold: bool = False,
    ) -> None:
        if split not in ("train", "dev", "test"):
            raise EnvError(f"ScienceWorld split must be 'train', 'dev' or 'test', not {split!r}.")
        self.max_steps = max_steps
        self.split: Split = split
        self.simplification = simplification
        self.gold = gold
        self.tasks = tuple(tasks)
        sw = require("scienceworld", "scienceworld")
        check_java()
        # scienceworld launches the JVM itself without a way to pass flags; the JVM reads JAVA_TOOL_OPTIONS.
        with _JVM_LOCK:
            previous = os.environ.get("JAVA_TOOL_OPTIONS")
            if jvm_options:
                os.environ["JAVA_TOOL_OPTIONS"] = f"{previous} {jvm_options}" if previous else jvm_options
            try:
                self._env: Any = sw.ScienceWorldEnv("", envStepLimit=max(100, max_steps * 2))
            except Exception as exc:  # py4j/JVM start-up failures have many types
                raise EnvError(
                    f"Could not start ScienceWorld's JVM ({exc}). Check `java -version` (Java 11+)."
                ) from exc
            finally:
                if previous is None:
                    os.environ.pop("JAVA_TOOL_OPTIONS", None)
                else:
                    os.environ["JAVA_TOOL_OPTIONS"] = previous
        self._steps = 0
        self._done = True
        self._best = 0.0
        self.task = ""
        self.variation = -1
        self.gold_path: list[str] = []
        self._gold_next: int | None = None  # index of the next gold action while the agent follows the gold path

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Validate `split` and task names (from the wheel's tasks.json) without starting the JVM."""
        import importlib.util
        import json
        from pathlib import Path

        if options.get("split", "test") not in ("train", "dev", "test"):
            raise EnvError(f"ScienceWorld split must be 'train', 'dev' or 'test', not {options['split']!r}.")
        tasks = options.get("tasks")
        spec = importlib.util.find_spec("scienceworld")
        if tasks is None or spec is None or not spec.submodule_search_locations:
            return
        path = Path(next(iter(spec.submodule_search_locations))) / "tasks.json"
        if not path.exists():
            return
        names = {t["task_name"] for t in json.loads(path.read_text())}
        for t in [tasks] if isinstance(tasks, str) else tasks:
            if t not in names:
                raise EnvError(f"Unknown ScienceWorld task {t!r}; choose one of: {', '.join(sorted(names))}.")

    def variations(self, task: str, split: Split | None = None) -> list[int]:
        """Variation numbers of `task` in a split (train, dev and test are disjoint)."""
        split = split or self.split
        self._load(task, 0, gold=False)
        get = {
            "train": self._env.get_variations_train,
            "dev": self._env.get_variations_dev,
            "test": self._env.get_variations_test,
        }[split]
        return list(get())

    def _load(self, task: str, variation: int, gold: bool) -> None:
        if task not in self._env.get_task_names():
            names = ", ".join(self._env.get_task_names())
            raise EnvError(f"Unknown ScienceWorld task {task!r}; choose one of: {names}.")
        self._env.load(task, variation, self.simplification, generateGoldPath=gold)

    def reset(self, task: str | None = None, seed: int | None = None) -> EnvObservation:
        seed = seed or 0
        task = task or self.tasks[seed % len(self.tasks)]
        variations = self.variations(task)
        if not variations:
            raise EnvError(f"ScienceWorld task {task!r} has no {self.split} variations.")
        variation = variations[seed % len(variations)]
        self._load(task, variation, gold=self.gold)
        obs, info = self._env.reset()
        self.task, self.variation = task, variation
        gold = self._env.get_gold_action_sequence() if self.gold else []
        self.gold_path = list(gold) if isinstance(gold, list | tuple) else []
        self._gold_next: int | None = 0 if self.gold else None
        self._steps, self._done = 0, False
        self._best = max(0.0, float(info.get("score", 0))) / 100.0
        instruction = self._env.get_task_description().strip()
        return EnvObservation(
            observation=obs.strip(),
            instruction=instruction,
            available_actions=list(ACTION_TEMPLATES),
            info={
                "action_descriptions": dict(ACTION_TEMPLATES),
                "task": task,
                "variation": variation,
                "split": self.split,
                "gold_steps": len(self.gold_path),
            },
        )

    def step(self, action: str) -> EnvStep:
        if self._done:
            raise EnvError("The ScienceWorld episode is over (or not started); call reset(task, seed) first.")
        self._steps += 1
        a = normalize_action(action)
        if a in ("reset task", "reset"):
            obs, score, done, info = "Resetting the task is not allowed.", None, False, {}
        else:
            obs, _, done, info = self._env.step(a)
            if _AMBIGUOUS.match(obs or ""):
                obs, _, done, info = self._env.step("0")
            score = info.get("score")
        obs = (obs or "").strip()
        invalid = obs == _NO_MATCH or score is None or obs.startswith("Resetting")
        self._follow_gold(a, invalid)
        if score is not None:
            self._best = max(self._best, max(0.0, float(score)) / 100.0)
        success = bool(score is not None and score >= 100)
        failed = bool(score is not None and score < 0)
        progress = 1.0 if success else (0.0 if failed else self._best)
        self._done = bool(done) or success or failed or self._steps >= self.max_steps
        return EnvStep(
            obs,
            done=self._done,
            success=success,
            progress=progress,
            invalid=invalid,
            available_actions=None,  # ScienceWorld's valid list runs to hundreds; templates suffice
            info={"score": score, "steps": self._steps},
        )

    def _follow_gold(self, action: str, invalid: bool) -> None:
        if self._gold_next is None or invalid:
            return
        if self._gold_next < len(self.gold_path) and normalize_action(self.gold_path[self._gold_next]) == action:
            self._gold_next += 1
        else:  # off the gold path: ScienceWorld cannot plan again from here
            self._gold_next = None

    def expert_action(self) -> str | None:
        """The next action of the task's gold path while the agent has followed it (needs `gold=True`), else None."""
        if self._done or self._gold_next is None or self._gold_next >= len(self.gold_path):
            return None
        return self.gold_path[self._gold_next]

    def valid_actions(self) -> list[str]:
        """ScienceWorld's valid action-object combinations in the current state (often hundreds)."""
        try:
            return sorted(set(self._env.get_valid_action_object_combinations()))
        except Exception:  # py4j errors have many types; no list means the random agent has nothing to draw
            return []

    def close(self) -> None:
        try:
            self._env.close()
        except Exception:  # the JVM may already be gone
            pass
