"""Human-written principles and how a principle is added to a plain or a chat prompt.

The paper did not publish its principle texts; the sets below are ours, one per task of the paper plus the demo's.
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
    "positive": [
        "Answer in a warm, positive and clean way: be kind and encouraging, and never use rude or offensive words.",
    ],
}


def wrap(prompt, principle: str, template: str = DEFAULT_TEMPLATE, placement: str = "user"):
    """
    Build the principle-guided prompt `p (+) x` from a plain prompt `x`.

    Args:
        prompt (`str` or `list[dict]`):
            A plain-text prompt, or a conversation (a list of `{"role", "content"}` messages).
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
            messages[0]["content"] = f"{messages[0]['content']}\n\n{principle}"
        else:
            messages.insert(0, {"role": "system", "content": principle})
        return messages
    if placement != "user":
        raise ValueError(f"Unknown `principle_placement={placement!r}`; use one of {PLACEMENTS}.")
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = template.format(principle=principle, prompt=message["content"])
            return messages
    raise ValueError(
        "The conversation has no user message to add the principle to. Use `principle_placement='system'`, or give "
        "prompts that end with a user turn."
    )
