"""The `agentboard` suite: BabyAI, ScienceWorld and PDDL in AgentBoard's configuration, as far as it can be
reproduced offline (hkust-nlp/AgentBoard, `agentboard/environment/*`, `eval_configs/main_results_all_tasks.yaml`).

What is reproduced, per environment (the README's "agentboard suite" section lists what still differs, and why):

* **BabyAI** (`AgentBoardBabyAI`): AgentBoard's 28 test levels x seeds 1234-1237 (112 episodes; episode i plays level
  i // 4 with seed 1234 + i % 4, reset with that seed directly), its high-level actions (`go to red ball 1`,
  `pickup red ball 1`, `go through blue open door 1`, `toggle and go through grey locked door 1`, `toggle`, `drop`,
  `turn left/right`, `move forward`, `check available actions`) compiled to primitive steps by breadth-first search
  over the cells in view and executed until one has no effect; the valid-action list; observations numbered by
  object ("There is a red ball 1 ..."). Progress: one subgoal credited per step; a `done` (the mission complete) is
  cancelled while progress <= 0.5, and the episode ends when progress reaches 1. Subgoals are AgentBoard's annotation
  patterns when `annotations=DIR` holds `DIR/babyai/test.jsonl`, else derived from the BabyAI bot's solution (rooms
  entered, doors opened, objects carried) plus the mission; with derived subgoals the step that completes the
  mission also credits the subgoals reached on it (the bot's route is one of many, so a different route is not
  penalised).
* **PDDL** (`AgentBoardPDDL`): facts and goals in plain English ("b is on a."), AgentBoard's action wording
  ("unstack b from a", "pick up b", "move from rooma to roomb") next to this project's, a `check valid actions`
  action, progress = fraction of goal facts that hold, success = all of them. Domains: AgentBoard's blockworld and
  gripper map to pddlgym's `blocks` and `gripper` test problems; barman and tyreworld are not shipped by pddlgym
  0.0.7 and are absent.
* **ScienceWorld** (`AgentBoardScienceWorld`): the simplification string
  `selfWateringFlowerPots,openContainers,openDoors,noElectricalAction`, no early stop on ScienceWorld's `done`
  (a failed task keeps its best progress and the agent plays on to the step bound), progress from ScienceWorld's own
  sequential subgoals (`get_goal_progress`) when it reports them, else score / 100 (the record's `progress_source`
  says which), or AgentBoard's annotated subgoals with `annotations=DIR`. Success = the task's score reaches 100.

Every reset flags the episode: `info["solvable"]` is whether the environment's expert reaches the goal within the
step bound, `info["expert_steps"]` its number of steps (BabyAI: the bot's plan, searched up to bound + 1 steps;
PDDL: a shortest plan, breadth-first for blocks and gripper's optimal strategy, 3n - 1 steps for n balls; ScienceWorld:
the gold path). Summaries count them and give the success rate over the solvable episodes beside the plain one.
In BabyAI a level that terminates with reward 0 plays on (AgentBoard cancels that `done`; it matters for
OpenDoorsOrderN4Debug, whose strict verifier fails the first right toggle of a two-door mission), and `go to` the
object in front is one step without effect, which lets the level verify a mission such as "go to a blue door".

The modules: `common` (pattern match, annotation files), `babyai`, `pddl`, `scienceworld`.
All three run at AgentBoard's 30-step bound by default. Every observation of the suite is labelled in its records
(`info["suite"] == "agentboard"`), and summaries carry `suite: agentboard`.
"""

from refine.envs.agentboard.babyai import BABYAI_LEVELS, BABYAI_SEEDS, CHECK_ACTIONS, AgentBoardBabyAI
from refine.envs.agentboard.common import SCIENCEWORLD_SIMPLIFICATION, _PatternProgress, load_annotations, match_pattern
from refine.envs.agentboard.pddl import AGENTBOARD_PDDL_DOMAINS, MISSING_PDDL_DOMAINS, AgentBoardPDDL
from refine.envs.agentboard.scienceworld import AgentBoardScienceWorld

__all__ = [
    "AGENTBOARD_PDDL_DOMAINS",
    "BABYAI_LEVELS",
    "BABYAI_SEEDS",
    "CHECK_ACTIONS",
    "MISSING_PDDL_DOMAINS",
    "SCIENCEWORLD_SIMPLIFICATION",
    "AgentBoardBabyAI",
    "AgentBoardPDDL",
    "AgentBoardScienceWorld",
    "_PatternProgress",
    "load_annotations",
    "match_pattern",
]
