"""What error messages share."""


def preview(value, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters with `...`: a bad value quoted in an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
