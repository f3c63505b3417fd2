"""How a principle wraps a prompt (text, chat, system message, multimodal content), the shipped principle sets, and
how a pair's prompts are truncated without losing the principle (`ple_trl.ple.principles`)."""

import pytest
from PIL import Image

from ple_trl.ple.principles import PRINCIPLES, truncate_pair, wrap


def test_wrap_plain_prompt_with_template():
    assert wrap("Hi", "Be kind.") == "Be kind.\n\nHi"
    assert wrap("Hi", "Be kind.", template="{prompt} ({principle})") == "Hi (Be kind.)"


def test_wrap_chat_prompt_rewrites_only_the_last_user_turn():
    chat = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    wrapped = wrap(chat, "Be kind.")
    assert wrapped[0]["content"] == "first"
    assert wrapped[2]["content"] == "Be kind.\n\nsecond"
    assert chat[2]["content"] == "second"  # the input is not modified


def test_wrap_chat_prompt_in_a_system_message():
    chat = [{"role": "user", "content": "q"}]
    assert wrap(chat, "Be kind.", placement="system") == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "q"},
    ]
    with_system = [{"role": "system", "content": "You help."}, {"role": "user", "content": "q"}]
    assert wrap(with_system, "Be kind.", placement="system")[0]["content"] == "You help.\n\nBe kind."


def test_wrap_multimodal_content():
    image = Image.new("RGB", (2, 2))
    prompt = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what ?"}]}]
    principled = wrap(prompt, "be kind")
    assert principled == [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "be kind\n\nwhat ?"}]}
    ]
    assert prompt[0]["content"][1]["text"] == "what ?"  # the input is not modified
    # Several text parts: the template's text before the prompt goes first, after it goes last.
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    two_texts = [{"role": "user", "content": parts}]
    assert wrap(two_texts, "P", "<{principle}> {prompt} </{principle}>")[0]["content"] == [
        {"type": "text", "text": "<P> a"},
        {"type": "image"},
        {"type": "text", "text": "b </P>"},
    ]
    image_only = [{"role": "user", "content": [{"type": "image"}]}]
    assert wrap(image_only, "be kind")[0]["content"] == [{"type": "image"}, {"type": "text", "text": "be kind"}]
    # System placement: a typed system message gets a typed text part, an existing one gets the principle appended.
    assert wrap(prompt, "be kind", placement="system")[0] == {
        "role": "system",
        "content": [{"type": "text", "text": "be kind"}],
    }
    with_system = [{"role": "system", "content": [{"type": "text", "text": "you help"}]}, *prompt]
    assert wrap(with_system, "be kind", placement="system")[0]["content"] == [
        {"type": "text", "text": "you help\n\nbe kind"}
    ]
    # String content is unchanged behaviour.
    assert wrap([{"role": "user", "content": "hi"}], "P") == [{"role": "user", "content": "P\n\nhi"}]


def test_wrap_without_user_turn_is_a_clear_error():
    with pytest.raises(ValueError, match="principle_placement='system'"):
        wrap([{"role": "system", "content": "x"}], "Be kind.")


def test_principle_sets_for_the_paper_tasks():
    assert {"hh", "imdb", "tldr"} <= set(PRINCIPLES)
    assert all(PRINCIPLES[task] for task in PRINCIPLES)


def test_truncate_pair_keeps_the_principle_prepended_to_a_text_prompt():
    plain, principled = [1, 2, 3, 4, 5, 6], [90, 91, 1, 2, 3, 4, 5, 6]
    assert truncate_pair(plain, principled, 4) == ([3, 4, 5, 6], [90, 91, 3, 4, 5, 6])
    assert truncate_pair(plain, principled, 6) == (plain, principled)  # short enough: untouched


def test_truncate_pair_in_a_chat_template_cuts_the_same_query_tokens():
    # <user> q1 q2 q3 q4 </s> <assistant>  vs  <user> p1 p2 q1 q2 q3 q4 </s> <assistant>
    plain, principled = [7, 1, 2, 3, 4, 8, 9], [7, 90, 91, 1, 2, 3, 4, 8, 9]
    assert truncate_pair(plain, principled, 6) == ([1, 2, 3, 4, 8, 9], [90, 91, 1, 2, 3, 4, 8, 9])
    assert truncate_pair(plain, principled, 4) == ([3, 4, 8, 9], [90, 91, 3, 4, 8, 9])
    # a principle placed after the query survives too
    assert truncate_pair([1, 2, 3], [1, 2, 3, 90], 2) == ([2, 3], [2, 3, 90])
