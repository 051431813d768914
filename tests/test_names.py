from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelyard.registry.kernel.names import InvalidName, ModelRef, check_alias, check_model_name, check_tag_key, parse_model_ref


@pytest.mark.parametrize("name", ["a", "digits", "digits-cnn", "m3", "9lives", "a" * 63])
def test_valid_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a_b", "a.b", "../x", "a/b", "a" * 64, "é", "a b", "a\n"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName):
        check_model_name(name)


def test_alias_must_start_with_a_letter() -> None:
    assert check_alias("production") == "production"
    with pytest.raises(InvalidName):
        check_alias("3")
    with pytest.raises(InvalidName):  # `$` alone matches before a final newline
        check_alias("production\n")
    with pytest.raises(InvalidName):
        check_tag_key("team\n")


def test_model_refs() -> None:
    assert parse_model_ref("digits@production") == ModelRef("digits", alias="production")
    assert parse_model_ref("digits:7") == ModelRef("digits", version=7)
    assert str(parse_model_ref("digits:7")) == "digits:7"
    for bad in ["digits", "digits:0", "digits:x", "Digits@prod", "digits@", "digits:-1"]:
        with pytest.raises(InvalidName):
            parse_model_ref(bad)


@given(st.text(max_size=80))
def test_any_accepted_name_is_a_safe_single_path_segment(text: str) -> None:
    try:
        check_model_name(text)
    except InvalidName:
        return
    assert "/" not in text and "\\" not in text and text not in (".", "..") and text == text.strip()
