"""Human-written principles and how a principle is added to a plain or a chat prompt.

The paper did not publish its principle texts; the sets below are ours, one per task of the paper plus the demo's
(`positive`) and the comparison's (`positive` and `polite`, `benchmarks/compare.py`).
"""

DEFAULT_TEMPLATE = "{principle}\n\n{prompt}"
PLACEMENTS = ("user", "system")

PRINCIPLES = {
    "hh": [
        "Please give a helpful, honest and harmless answer. Be polite, refuse clearly dangerous requests and "
        "explain why, and never include offensive content.",
        "Answer as a kind and knowledgeable assistant: address the user's actual need, stay truthful, and avoid "
        "anything that could cause harm.",
    ],
    "imdb": [
        "Continue the movie review in a clearly positive tone: praise the acting, the story or the direction.",
        "Write the rest of this review as an enthusiastic fan of the film who loved it.",
    ],
    "tldr": [
        "Write a concise summary that keeps only the main point of the post, stays faithful to it and adds "
        "nothing that is not in the text.",
        "Summarize in one or two short sentences, accurately and without opinions of your own.",
    ],
    # The demo's and benchmarks/compare.py's `warm` task. An earlier text ("Answer in a warm, positive and clean way:
    # be kind and encouraging, ...") made SmolLM2-135M open with warm filler ("I'm so glad ...") that ignored the
    # question, and PLE distilled that filler: asking for a direct answer keeps the tone and the topic.
    "positive": [
        "Answer the question directly and helpfully, in a warm and positive tone.",
    ],
    # benchmarks/compare.py's `polite` task (prompts that invite insults or swearing). "Answer politely ..., even if
    # asked" made the base model refuse ("as a chatbot designed to assist users, I don't have the capability ..."):
    # asking for a kind remark in place of the insult keeps it answering.
    "polite": [
        "Respond to the request with warmth and good humour: replace any insult with a kind, honest remark, and keep "
        "every word clean.",
    ],
}


def wrap(prompt, principle: str, template: str = DEFAULT_TEMPLATE, placement: str = "user"):
    """
    Build the principle-guided prompt `p (+) x` from a plain prompt `x`.

    Args:
        prompt (`str` or `list[dict]`):
            A plain-text prompt, or a conversation (a list of `{"role", "content"}` messages). A message's content
            may be a list of typed parts (multimodal conversations): the template then rewrites its text, and the
            images stay in place.
        principle (`str`):
            The principle text.
        template (`str`, *optional*, defaults to `"{principle}\\n\\n{prompt}"`):
            How the principle and the prompt are combined; must contain `{prompt}` (and normally `{principle}`).
            For a conversation it rewrites the content of the last user message.
        placement (`str`, *optional*, defaults to `"user"`):
            For a conversation: `"user"` rewrites the last user message with `template`; `"system"` puts the principle
            in a system message instead (prepended, or appended to an existing first system message). Plain-text
            prompts always use `template`.

    Returns:
        `str` or `list[dict]`: the principle-guided prompt, a new object (the input is not modified).
    """
    if isinstance(prompt, str):
        return template.format(principle=principle, prompt=prompt)
    messages = [dict(message) for message in prompt]
    if placement == "system":
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = _wrap_content(messages[0]["content"], principle, "{prompt}\n\n{principle}")
        elif any(isinstance(message.get("content"), list) for message in messages):  # typed (multimodal) content
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": principle}]})
        else:
            messages.insert(0, {"role": "system", "content": principle})
        return messages
    if placement != "user":
        raise ValueError(f"Unknown `principle_placement={placement!r}`; use one of {PLACEMENTS}.")
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = _wrap_content(message["content"], principle, template)
            return messages
    raise ValueError(
        "The conversation has no user message to add the principle to. Use `principle_placement='system'`, or give "
        "prompts that end with a user turn."
    )


def _wrap_content(content, principle, template):
    # A message's content is a string, or a list of typed parts (`{"type": "text", "text": ...}`, image parts, ...) in
    # multimodal conversations. The template applies to the text; the other parts stay where they are.
    if isinstance(content, str):
        return template.format(principle=principle, prompt=content)
    parts = [dict(part) for part in content]
    texts = [i for i, part in enumerate(parts) if part.get("type") == "text"]
    if len(texts) == 1:
        parts[texts[0]]["text"] = template.format(principle=principle, prompt=parts[texts[0]]["text"])
        return parts
    # No text part (an image-only turn) or several: what the template puts before the prompt goes in front of the
    # first text, what it puts after goes behind the last one.
    marker = "\x00prompt\x00"
    before, _, after = template.format(principle=principle, prompt=marker).partition(marker)
    after = after.replace(marker, "")
    if not texts:
        return parts + [{"type": "text", "text": (before + after).strip()}]
    parts[texts[0]]["text"] = before + parts[texts[0]]["text"]
    parts[texts[-1]]["text"] = parts[texts[-1]]["text"] + after
    return parts


def truncate_pair(plain_ids: list[int], principled_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """
    Truncate a plain prompt and its principle-guided version the same way, keeping the principle.

    The plain prompt loses its first `len(plain_ids) - max_length` tokens (left truncation, as TRL does). The
    principled prompt loses the *same* query tokens, not its own first tokens, which would cut the principle: the
    tokens both prompts share at their start and at their end (the chat template's header, the query and the generation
    prompt) are matched, and the principle in between is kept whole.

    Args:
        plain_ids (`list[int]`): token ids of the plain prompt.
        principled_ids (`list[int]`): token ids of the principle-guided prompt.
        max_length (`int`): the plain prompt's maximum length.

    Returns:
        `tuple[list[int], list[int]]`: the truncated plain and principled token ids.
    """
    plain_ids, principled_ids = list(plain_ids), list(principled_ids)
    cut = len(plain_ids) - max_length
    if cut <= 0:
        return plain_ids, principled_ids
    shortest = min(len(plain_ids), len(principled_ids))
    prefix = 0
    while prefix < shortest and plain_ids[prefix] == principled_ids[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and plain_ids[-1 - suffix] == principled_ids[-1 - suffix]:
        suffix += 1
    if cut <= prefix:  # only the shared start goes
        return plain_ids[cut:], principled_ids[cut:]
    tail = len(principled_ids) - suffix  # where the shared end starts in the principled prompt
    dropped_from_end = max(0, cut - (len(plain_ids) - suffix))  # query tokens cut inside the shared end
    return plain_ids[cut:], principled_ids[prefix:tail] + principled_ids[tail + dropped_from_end :]
