"""Model names as users give them: a local folder or a Hub id."""

import os

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def check_model_path(value: str, argument: str):
    """Refuse a model given as a string that is neither an existing local path nor a valid Hub id, saying that the path
    does not exist (a string that cannot be a Hub id is meant as a local path), not that it is a bad repo id."""
    if os.path.exists(value):
        return
    try:
        validate_repo_id(value)
    except HFValidationError:
        hint = " (`~` is not expanded: give the full path)" if value.startswith("~") else ""
        raise ValueError(
            f"`{argument}`: the path {value!r} does not exist{hint}. Give an existing local model folder, or a Hub id "
            "such as 'org/name'."
        ) from None
