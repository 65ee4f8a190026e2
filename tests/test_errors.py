"""refine.errors: one hierarchy under RefineError; our LMError and DSPy 3.4's LMError are different classes."""

from __future__ import annotations

import dspy
import pytest

from refine import errors


def test_every_public_error_is_a_refine_error():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.RefineError), name


def test_our_lm_error_is_not_dspys_and_its_docstring_says_so():
    """DSPy 3.4 defines `dspy.LMError` too; ours keeps its name (users catch it) and says how to catch both."""
    assert errors.LMError is not dspy.LMError
    assert not issubclass(errors.LMError, dspy.LMError) and not issubclass(dspy.LMError, errors.LMError)
    assert "except (refine.errors.LMError, dspy.LMError)" in (errors.LMError.__doc__ or "")
    with pytest.raises(errors.RefineError):
        raise errors.LMError("no model")
