"""tasks/base.py: prompt construction (lower-cased fields joined in order)."""

from __future__ import annotations

import pytest

from armada_ray.tasks import Example, build_prompt, example_prompt, get_task


def test_build_prompt_lower_cases_and_joins_in_field_order():
    fields = {"premise": "The Cat SAT.", "hypothesis": "  A cat sat  ", "extra": "IGNORED"}
    assert build_prompt(fields, ["premise", "hypothesis"]) == "the cat sat. a cat sat"
    assert build_prompt(fields, ["hypothesis", "premise"]) == "a cat sat the cat sat."
    assert build_prompt({"instruction": "Say HI", "context": ""}, ["instruction", "context"]) == "say hi"
    with pytest.raises(KeyError):
        build_prompt(fields, ["missing"])
    spec = get_task("rte")
    assert example_prompt(spec, Example("u", {"sentence1": "A B", "sentence2": "C"}, 0)) == "a b c"
