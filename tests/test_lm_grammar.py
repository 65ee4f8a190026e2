"""Grammar building from signatures, schema bounding, and how GrammarChatAdapter ships grammars (no model needed)."""

from __future__ import annotations

import json
from typing import Literal

import dspy
import pydantic
import pytest

from refine.errors import ConfigError, LMError
from refine.lm.adapter import GrammarChatAdapter, default_adapter, engine_accepts_grammar, react_tool_args
from refine.lm.decoding import grammar_for_request
from refine.lm.grammar import (
    COMPACT_JSON,
    MAX_ABS_INT,
    GrammarBounds,
    bound_schema,
    bounds_for_budget,
    lark_for_signature,
)

llguidance = pytest.importorskip("llguidance")


class Step(pydantic.BaseModel):
    thought: str
    tags: list[str]
    done: bool


class Typed(dspy.Signature):
    """Answer with every kind of field."""

    task: str = dspy.InputField()
    answer: str = dspy.OutputField()
    ok: bool = dspy.OutputField()
    count: int = dspy.OutputField()
    level: Literal["easy", "hard"] = dspy.OutputField()
    step: Step = dspy.OutputField()
    names: list[str] = dspy.OutputField()


GOOD = (
    "[[ ## answer ## ]]\nOpen the fridge.\n\n"
    "[[ ## ok ## ]]\ntrue\n\n"
    "[[ ## count ## ]]\n3\n\n"
    "[[ ## level ## ]]\nhard\n\n"
    '[[ ## step ## ]]\n{"thought": "look", "tags": ["a", "b"], "done": false}\n\n'
    '[[ ## names ## ]]\n["x", "y"]\n\n'
    "[[ ## completed ## ]]"
)


@pytest.fixture(scope="module")
def ll_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from refine.lm.tiny_chat_model import make_tiny_chat_model

    folder = make_tiny_chat_model(tmp_path_factory.mktemp("tiny"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    import llguidance.hf

    return tokenizer, llguidance.hf.from_tokenizer(tokenizer)


def accepts(ll_tokenizer, grammar: str, text: str) -> bool:
    """Whether the grammar accepts `text` completely (feeding its tokens one by one)."""
    tokenizer, lltok = ll_tokenizer
    matcher = llguidance.LLMatcher(lltok, grammar)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


class TestBoundSchema:
    def test_bounds_free_strings_arrays_objects_and_integers(self):
        schema = {
            "type": "object",
            "properties": {
                "s": {"type": "string"},
                "e": {"type": "string", "enum": ["a"]},
                "p": {"type": "string", "pattern": "^a+$"},
                "keep": {"type": "string", "maxLength": 999},
                "items": {"type": "array", "items": {"type": "string"}},
                "i": {"type": "integer"},
                "ranged": {"type": "integer", "minimum": 0},
            },
        }
        bounded = bound_schema(schema, max_string=10, max_items=3)
        props = bounded["properties"]
        assert props["s"]["maxLength"] == 10
        assert "maxLength" not in props["e"] and "maxLength" not in props["p"]
        assert props["keep"]["maxLength"] == 999
        assert props["items"]["maxItems"] == 3 and props["items"]["items"]["maxLength"] == 10
        assert (props["i"]["minimum"], props["i"]["maximum"]) == (-MAX_ABS_INT, MAX_ABS_INT)
        assert props["ranged"] == {"type": "integer", "minimum": 0}
        assert bounded["additionalProperties"] is False
        assert "maxLength" not in schema["properties"]["s"], "the input schema must not be modified"

    def test_bounds_nested_defs_and_any_of(self):
        schema = pydantic.TypeAdapter(list[Step] | None).json_schema()
        bounded = bound_schema(schema, max_string=5, max_items=2)
        step = bounded["$defs"]["Step"]
        assert step["additionalProperties"] is False
        assert step["properties"]["thought"]["maxLength"] == 5
        array = next(option for option in bounded["anyOf"] if option.get("type") == "array")
        assert array["maxItems"] == 2

    def test_min_items_above_cap_is_respected(self):
        bounded = bound_schema({"type": "array", "minItems": 5}, max_items=2)
        assert bounded["maxItems"] == 5

    def test_rejects_non_positive_caps(self):
        with pytest.raises(ConfigError, match="max_string >= 1"):
            bound_schema({"type": "string"}, max_string=0)
        with pytest.raises(ConfigError, match=r"GrammarBounds.max_items must be >= 1"):
            GrammarBounds(max_items=0)


class TestBudget:
    def test_shrinks_caps_to_fit_max_tokens(self):
        bounds = bounds_for_budget(Typed, 200)
        fixed = sum(len(f"[[ ## {n} ## ]]\n") + 2 for n in Typed.output_fields) + len("[[ ## completed ## ]]") + 1
        share = (200 - fixed) // len(Typed.output_fields)
        assert bounds.max_text == share - 2
        assert bounds.max_string <= share // 4
        assert bounds.max_text * len(Typed.output_fields) + fixed <= 200

    def test_no_budget_keeps_caps(self):
        assert bounds_for_budget(Typed, None) == GrammarBounds()
        assert bounds_for_budget(Typed, 100_000) == GrammarBounds()


class TestLarkForSignature:
    def test_valid_for_llguidance(self):
        grammar = llguidance.LLMatcher.grammar_from_lark(lark_for_signature(Typed))
        assert llguidance.LLMatcher.validate_grammar(grammar) == ""

    def test_accepts_a_correct_answer(self, ll_tokenizer):
        grammar = llguidance.LLMatcher.grammar_from_lark(lark_for_signature(Typed))
        assert accepts(ll_tokenizer, grammar, GOOD)
        parsed = dspy.ChatAdapter().parse(Typed, GOOD)
        assert parsed["step"] == Step(thought="look", tags=["a", "b"], done=False)
        assert parsed["ok"] is True and parsed["count"] == 3 and parsed["level"] == "hard"

    @pytest.mark.parametrize(
        ("old", "new", "why"),
        [
            ("hard", "medium", "value outside the Literal"),
            ("[[ ## count ## ]]\n3", "[[ ## count ## ]]\nthree", "int field with words"),
            ("true", "yes", "bool field with a word"),
            ('"done": false}', '"done": false, "extra": 1}', "extra key in a pydantic object"),
            ('"tags": ["a", "b"]', '"tags": ["a", "b", "c"]', "array longer than max_items"),
            ("Open the fridge.", "{task}", "free text starting with a placeholder"),
            ("Open the fridge.", " ", "blank free text"),
            ("[[ ## ok ## ]]\ntrue\n\n[[ ## count", "[[ ## count", "a missing field"),
            ('{"thought": "look", ', '{"thought":"look",', "non-compact JSON"),
        ],
    )
    def test_rejects_wrong_answers(self, ll_tokenizer, old, new, why):
        grammar = llguidance.LLMatcher.grammar_from_lark(
            lark_for_signature(Typed, GrammarBounds(max_text=50, max_string=20, max_items=2))
        )
        assert not accepts(ll_tokenizer, grammar, GOOD.replace(old, new, 1)), why

    def test_free_text_cap(self, ll_tokenizer):
        class One(dspy.Signature):
            question: str = dspy.InputField()
            answer: str = dspy.OutputField()

        grammar = llguidance.LLMatcher.grammar_from_lark(lark_for_signature(One, GrammarBounds(max_text=10)))
        assert accepts(ll_tokenizer, grammar, "[[ ## answer ## ]]\n0123456789\n\n[[ ## completed ## ]]")
        assert not accepts(ll_tokenizer, grammar, "[[ ## answer ## ]]\n0123456789A\n\n[[ ## completed ## ]]")

    def test_react_couples_tool_names_with_their_args(self, ll_tokenizer):
        def search(query: str) -> str:
            """Search the web."""
            return query

        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        react = dspy.ReAct("question -> answer", tools=[search, add], max_iters=2)
        tool_args = react_tool_args(react)
        assert tool_args["add"]["required"] == ["a", "b"]
        sig = react.react.signature
        grammar = llguidance.LLMatcher.grammar_from_lark(lark_for_signature(sig, tool_args=tool_args))
        head = "[[ ## next_thought ## ]]\nAdd them.\n\n[[ ## next_tool_name ## ]]\nadd\n\n[[ ## next_tool_args ## ]]\n"
        assert accepts(ll_tokenizer, grammar, head + '{"a": 1, "b": 2}\n\n[[ ## completed ## ]]')
        assert not accepts(ll_tokenizer, grammar, head + '{"query": "x"}\n\n[[ ## completed ## ]]')
        with pytest.raises(ConfigError, match=r"needs a dspy\.ReAct module"):
            react_tool_args(dspy.Predict("q -> a"))


class _GrammarEngine:
    """Records requests; answers a fixed ChatAdapter text."""

    accepts_lark_grammar = True

    def __init__(self, text="[[ ## answer ## ]]\nhi\n\n[[ ## completed ## ]]"):
        self.text = text
        self.requests = []

    def complete(self, request):
        from dspy.lm15 import Message, Response, Usage

        self.requests.append(request)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant(self.text),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )


class _PlainEngine(_GrammarEngine):
    accepts_lark_grammar = False


class TestGrammarChatAdapter:
    def test_ships_lark_in_metadata_for_grammar_engines(self):
        engine = _GrammarEngine()
        lm = dspy.LM("embedded", engine=engine, cache=False, max_tokens=300)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
            assert dspy.Predict("question -> answer")(question="q").answer == "hi"
        lark = engine.requests[0].config.extensions["metadata"]["lark"]
        assert lark.startswith('start: "[[ ## answer ## ]]\\n" v0 "[[ ## completed ## ]]"')
        expected_cap = bounds_for_budget(dspy.Predict("question -> answer").signature, 300).max_text
        assert f"{{0,{expected_cap - 1}}}" in lark

    def test_keeps_user_metadata_and_plain_engines_get_none(self):
        engine = _PlainEngine()
        lm = dspy.LM("openai/x", engine=engine, cache=False)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
            dspy.Predict("question -> answer")(question="q")
        extensions = engine.requests[0].config.extensions or {}
        assert "lark" not in (extensions.get("metadata") or {})
        grammar_engine = _GrammarEngine()
        lm = dspy.LM("embedded", engine=grammar_engine, cache=False)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
            dspy.Predict("question -> answer")(question="q", config={"metadata": {"run": "r1"}})
        metadata = grammar_engine.requests[0].config.extensions["metadata"]
        assert metadata["run"] == "r1" and "lark" in metadata

    def test_no_json_fallback(self):
        engine = _GrammarEngine(text="garbage")
        lm = dspy.LM("embedded", engine=engine, cache=False)
        with dspy.context(lm=lm, adapter=GrammarChatAdapter()), pytest.raises(dspy.utils.exceptions.AdapterParseError):
            dspy.Predict("question -> answer")(question="q")
        assert len(engine.requests) == 1

    def test_default_adapter(self):
        assert isinstance(default_adapter(dspy.LM("embedded", engine=_GrammarEngine())), GrammarChatAdapter)
        plain = default_adapter(dspy.LM("openai/x", engine=_PlainEngine()))
        assert type(plain) is dspy.ChatAdapter
        assert not engine_accepts_grammar(dspy.LM("openai/gpt-4o-mini"))


def _request(response_format=None, lark=None):
    from dspy.lm15 import Config, Message, Request

    extensions = {"metadata": {"lark": lark}} if lark else None
    return Request(
        model="embedded",
        messages=(Message.user("hi"),),
        config=Config(response_format=response_format, extensions=extensions),
    )


class TestGrammarForRequest:
    def test_free_request_has_no_grammar(self):
        assert grammar_for_request(_request()) is None

    def test_response_format_wins_over_metadata(self, ll_tokenizer):
        schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        grammar = grammar_for_request(
            _request({"type": "json_schema", "schema": schema}, lark='start: "[[ ## answer ## ]]"\n')
        )
        assert accepts(ll_tokenizer, grammar, '{"a": "x"}')
        assert not accepts(ll_tokenizer, grammar, "[[ ## answer ## ]]")
        assert not accepts(ll_tokenizer, grammar, '{"a": "x", "b": 1}'), "bounding adds additionalProperties false"
        assert not accepts(ll_tokenizer, grammar, json.dumps({"a": "x" * 300})), "bounding adds maxLength"

    def test_json_object(self, ll_tokenizer):
        grammar = grammar_for_request(_request({"type": "json_object"}))
        assert accepts(ll_tokenizer, grammar, '{"k": [1, 2]}')
        assert not accepts(ll_tokenizer, grammar, "[1]")

    def test_lark_from_metadata(self, ll_tokenizer):
        grammar = grammar_for_request(_request(lark='start: "yes" | "no"\n'))
        assert accepts(ll_tokenizer, grammar, "no")
        assert not accepts(ll_tokenizer, grammar, "maybe")

    def test_invalid_grammar_is_an_lm_error(self):
        with pytest.raises(LMError, match="Invalid grammar for constrained decoding"):
            grammar_for_request(_request(lark="start: undefined_rule\n"))
        from types import SimpleNamespace

        odd = SimpleNamespace(config=SimpleNamespace(response_format={"type": "text"}, extensions=None))
        with pytest.raises(LMError, match="Unsupported response_format type 'text'"):
            grammar_for_request(odd)


class TestFreeFormObjects:
    def test_dict_any_gets_bounded_values_and_size(self, ll_tokenizer):
        from typing import Any

        schema = bound_schema(pydantic.TypeAdapter(dict[str, Any]).json_schema(), max_string=5, max_items=2)
        assert schema["maxProperties"] == 2
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=dict(COMPACT_JSON))
        assert accepts(ll_tokenizer, grammar, '{"query": "abc", "n": 3}')
        assert accepts(ll_tokenizer, grammar, '{"xs": [1, "a"]}')
        assert not accepts(ll_tokenizer, grammar, '{"a": 1, "b": 2, "c": 3}'), "more keys than max_items"
        assert not accepts(ll_tokenizer, grammar, '{"a": "abcdefgh"}'), "value longer than max_string"
        assert not accepts(ll_tokenizer, grammar, '{"a": {"nested": 1}}'), "free values are scalars or lists"

    def test_typed_dict_values_keep_their_type(self):
        schema = bound_schema(pydantic.TypeAdapter(dict[str, int]).json_schema(), max_items=3)
        assert schema["additionalProperties"]["type"] == "integer"
        assert schema["maxProperties"] == 3


def test_grammar_budget_falls_back_to_the_engine_default():
    engine = _GrammarEngine()
    engine.default_max_tokens = 120
    lm = dspy.LM("embedded", engine=engine, cache=False)  # no max_tokens on the LM
    with dspy.context(lm=lm, adapter=GrammarChatAdapter()):
        dspy.Predict("question -> answer")(question="q")
    cap = bounds_for_budget(dspy.Predict("question -> answer").signature, 120).max_text
    assert cap < GrammarBounds().max_text
    assert f"{{0,{cap - 1}}}" in engine.requests[0].config.extensions["metadata"]["lark"]


def test_format_reminder_only_without_grammar():
    reminder = "Respond with the corresponding output fields"

    def last_user_text(engine):
        return engine.requests[-1].messages[-1].text

    grammar_engine, plain_engine = _GrammarEngine(), _PlainEngine()
    adapter = GrammarChatAdapter()
    with dspy.context(adapter=adapter):
        dspy.Predict("question -> answer")(question="q", lm=dspy.LM("embedded", engine=grammar_engine, cache=False))
        dspy.Predict("question -> answer")(question="q", lm=dspy.LM("openai/x", engine=plain_engine, cache=False))
    assert reminder not in last_user_text(grammar_engine), "the grammar makes the reminder redundant"
    assert reminder in last_user_text(plain_engine), "without a grammar the model needs the reminder"
    assert adapter._reminder is False, "the shared adapter must not be changed by a call"
    rows = adapter.format_finetune_data(
        dspy.Predict("question -> answer").signature, [], {"question": "q"}, {"answer": "a"}
    )
    assert reminder not in rows["messages"][-2]["content"], "SFT rows match what the local engine is sent"
    forced = GrammarChatAdapter(format_reminder=True)
    with dspy.context(adapter=forced):
        dspy.Predict("question -> answer")(question="q", lm=dspy.LM("embedded", engine=grammar_engine, cache=False))
    assert reminder in last_user_text(grammar_engine)
