"""Tests of `refine.data`: exact JSON round-trips of every model, loss marking, refinement episodes, verdicts."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine.data import ActionSpec, Provenance, RunRecord, Script, Trajectory, Turn, Verdict, content_id

text = st.text(max_size=30)
ident = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)

action_specs = st.builds(
    ActionSpec,
    name=ident,
    description=text,
    pattern=st.sampled_from([r"^go to (?P<place>.+)$", r"^look$", r"^take (?P<obj>\w+) from (?P<src>\w+)$"]),
    parameters=st.dictionaries(ident, st.lists(text, max_size=3), max_size=3),
)
scripts = st.builds(
    Script,
    persona=text,
    environment=text,
    tasks=st.lists(text, min_size=1, max_size=3),
    completion_conditions=st.lists(text, max_size=2),
    actions=st.lists(action_specs, min_size=1, max_size=3),
)
turns = st.builds(
    Turn,
    role=st.sampled_from(["player", "dm"]),
    thought=text,
    action=st.none() | text,
    observation=st.none() | text,
    parameter_error=st.booleans(),
    place_error=st.booleans(),
    logic_error=st.booleans(),
    task_completed=st.booleans(),
    loss=st.booleans(),
)
provenances = st.builds(
    Provenance,
    persona=text,
    seed=st.none() | st.integers(-(2**40), 2**40),
    models=st.dictionaries(ident, text, max_size=3),
    program_hash=text,
    usage=st.dictionaries(text, st.dictionaries(ident, st.integers(0, 10**9), max_size=3), max_size=2),
)
reason_lists = st.lists(st.text(min_size=1, max_size=20).filter(lambda r: r.strip()), min_size=1, max_size=4)
verdicts = st.one_of(
    st.builds(
        Verdict, ok=st.just(True), stage=st.sampled_from(["script", "trajectory", "parse"]), checks=st.integers(0, 50)
    ),
    st.builds(
        Verdict,
        ok=st.just(False),
        reasons=reason_lists,
        stage=st.sampled_from(["script", "trajectory", "parse"]),
        checks=st.integers(0, 50),
    ),
)
trajectories = st.builds(
    Trajectory,
    id=st.just("") | ident,
    script=scripts,
    turns=st.lists(turns, max_size=6),
    provenance=provenances,
    verdict=st.none() | verdicts,
)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        action_specs.map(lambda m: (ActionSpec, m)),
        scripts.map(lambda m: (Script, m)),
        turns.map(lambda m: (Turn, m)),
        provenances.map(lambda m: (Provenance, m)),
        verdicts.map(lambda m: (Verdict, m)),
        trajectories.map(lambda m: (Trajectory, m)),
    )
)
def test_json_round_trip_is_exact(pair):
    cls, model = pair
    back = cls.model_validate_json(model.model_dump_json())
    assert back == model
    assert back.model_dump() == model.model_dump()


def _script() -> Script:
    return Script(
        persona="a gardener",
        environment="A garden with a shed.",
        tasks=["water the roses", "lock the shed"],
        actions=[
            ActionSpec(name="go", description="move", pattern=r"^go to (?P<place>.+)$", parameters={"place": ["shed"]}),
            ActionSpec(name="look", description="look around", pattern=r"^look$"),
        ],
    )


def P(action: str = "go to shed") -> Turn:  # noqa: N802 - reads like the paper's notation
    return Turn(role="player", thought="t", action=action)


def D(*, err: bool = False, done: bool = False) -> Turn:  # noqa: N802
    return Turn(role="dm", thought="t", observation="o", parameter_error=err, task_completed=done)


class TestScript:
    def test_helpers(self):
        s = _script()
        assert s.goal == "water the roses; lock the shed"
        assert s.action_named("look").pattern == "^look$"
        assert s.action_named("fly") is None
        assert s.describe_actions() == "- go: move (place in ['shed'])\n- look: look around"
        assert s.actions[0].parameter_names() == ["place"]
        assert ActionSpec(name="t", pattern=r"^take (?P<o>\w+) from (?P<s>\w+)$").parameter_names() == ["o", "s"]

    def test_extra_fields_are_rejected(self):
        with pytest.raises(pydantic.ValidationError, match="extra_forbidden"):
            Script(environment="e", tasks=["t"], actions=[], colour="red")

    def test_assignment_is_validated(self):
        t = Turn(role="player")
        with pytest.raises(pydantic.ValidationError, match="role"):
            t.role = "narrator"


class TestContentId:
    def test_stable_and_key_order_independent(self):
        assert content_id({"a": 1, "b": [1, 2]}) == content_id({"b": [1, 2], "a": 1})
        assert content_id({"a": 1}) != content_id({"a": 2})
        assert len(content_id("x")) == 16
        assert len(content_id("x", length=8)) == 8


class TestTrajectory:
    def test_id_is_derived_from_content_and_kept(self):
        a = Trajectory(script=_script(), turns=[P(), D()])
        b = Trajectory(script=_script(), turns=[P(), D()])
        c = Trajectory(script=_script(), turns=[P(), D(err=True)])
        assert a.id == b.id != c.id
        assert Trajectory(id="mine", script=_script()).id == "mine"
        assert Trajectory.model_validate_json(a.model_dump_json()).id == a.id

    def test_mark_losses_masks_erroneous_player_turns(self):
        traj = Trajectory(script=_script(), turns=[P("go to x"), D(err=True), P(), D(), P("look"), D(done=True)])
        marked = traj.mark_losses()
        assert [t.loss for t in marked.turns] == [False, True, True, True, True, True]
        assert [t.loss for t in traj.turns] == [True] * 6  # the original is untouched
        assert marked.id == traj.id

    def test_mark_losses_unjudged_player_turn_is_trained(self):
        # Regression: a player turn followed by another player turn was judged by the *next* player's DM turn.
        traj = Trajectory(script=_script(), turns=[P("look"), P("go to x"), D(err=True), P()])
        assert [t.loss for t in traj.mark_losses().turns] == [True, False, True, True]
        assert traj.judging_turn(0) is None
        assert traj.judging_turn(1) is traj.turns[2]
        assert traj.judging_turn(3) is None

    @pytest.mark.parametrize(
        ("turns", "episodes"),
        [
            ([P(), D(done=True)], 0),
            ([P(), D(err=True), P(), D(done=True)], 1),
            ([P(), D(err=True), P(), D(err=True), P(), D()], 1),  # one episode: repeated errors, then the fix
            ([P(), D(err=True), P(), D(), P(), D(err=True), P(), D(done=True)], 2),
            ([P(), D(), P(), D(err=True)], 0),  # an error never fixed
            ([P(), P(), D(err=True), P(), D()], 1),
            ([P(), D(err=True), P()], 1),  # a final unjudged action counts as the fix
        ],
    )
    def test_refinement_episodes(self, turns, episodes):
        assert Trajectory(script=_script(), turns=turns).refinement_episodes() == episodes

    def test_player_turns(self):
        traj = Trajectory(script=_script(), turns=[P(), D(), P("look")])
        assert [t.action for t in traj.player_turns()] == ["go to shed", "look"]


class TestTurn:
    def test_error_flags(self):
        t = Turn(role="dm", place_error=True)
        assert t.has_error
        assert t.error_flags() == {"parameter_error": False, "place_error": True, "logic_error": False}
        assert not Turn(role="dm").has_error


class TestVerdict:
    def test_score_and_feedback(self):
        ok = Verdict(ok=True, stage="script", checks=5)
        assert ok.score == 1.0
        assert ok.feedback() == "The script passed every check."
        bad = Verdict(ok=False, reasons=["  action 'fly' unknown  ", "  "], checks=4)
        assert bad.reasons == ["action 'fly' unknown"]
        assert bad.score == 0.75
        assert bad.feedback() == "The trajectory was rejected:\n- action 'fly' unknown"
        assert Verdict(ok=False, reasons=["x"], checks=1).score == 0.0
        assert Verdict(ok=False, reasons=["x"], checks=0).score == 0.0
        assert Verdict(ok=False, reasons=["x"], checks=1000).score == 0.99  # a rejection never scores 1.0

    def test_ok_iff_no_reasons(self):
        with pytest.raises(pydantic.ValidationError, match=r"Verdict\(ok=False\) needs at least one reason"):
            Verdict(ok=False, reasons=["   "])
        with pytest.raises(pydantic.ValidationError, match=r"Verdict\(ok=True\) must have no reasons"):
            Verdict(ok=True, reasons=["x"])


class TestProvenance:
    def test_total_tokens(self):
        p = Provenance(usage={"m1": {"prompt_tokens": 3, "completion_tokens": 4, "calls": 1}, "m2": {"calls": 2}})
        assert p.total_tokens() == 7
        assert p.created_at.endswith("+00:00")


class TestRunRecord:
    def _traj(self):
        return Trajectory(
            script=Script(environment="A room.", tasks=["leave"], actions=[]),
            turns=[Turn(role="player", thought="t", action="go door"), Turn(role="dm", observation="Out.")],
            verdict=Verdict(ok=True, checks=3),
        )

    def test_json_round_trip_keeps_writer_fields(self):
        rec = RunRecord(key="k1", accepted=True, trajectory=self._traj(), usage={"m": {"calls": 2}}, index=3, env="x")
        back = RunRecord.model_validate_json(rec.model_dump_json())
        assert back == rec and back.to_json()["index"] == 3 and back.to_json()["env"] == "x"
        assert back.verdict is not None and back.verdict.ok and back.attempts == [] and back.error is None

    def test_a_bare_trajectory_is_not_a_record(self):
        with pytest.raises(pydantic.ValidationError, match="key"):
            RunRecord.model_validate(self._traj().model_dump(mode="json"))
        with pytest.raises(pydantic.ValidationError, match="trajectory"):
            RunRecord.model_validate({"key": "k", "accepted": True})
