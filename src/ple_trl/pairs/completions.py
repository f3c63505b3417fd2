"""
The completions table of a pair trainer (`log_completions=True`): one row per pair of the latest generation round(s),
in place of GRPO's one row per completion, printed with rich, written to `{output_dir}/completions/*.parquet` and sent
to wandb/trackio.
"""

import os

from transformers.utils import is_rich_available


def as_text(value) -> str:
    """A cell's text: a conversation as `role: content` lines, anything else as `str`."""
    if isinstance(value, list):
        return "\n".join(f"{message.get('role', '')}: {message.get('content', '')}" for message in value)
    return str(value)


def write(rows: list[dict], step: int, args, first_columns: tuple[str, ...]):
    """
    Print the rows (up to `args.num_completions_to_print`), write them to `completions_{step}.parquet` and send them
    to the trackers of `args.report_to` (the first row of each prompt when `args.log_unique_prompts`).

    Args:
        rows (`list[dict]`): the table's rows.
        step (`int`): the global step they are logged at.
        args ([`~trl.GRPOConfig`]): the run's configuration.
        first_columns (`tuple[str, ...]`): the columns printed first, in order; the others follow.
    """
    import pandas as pd

    shown = rows if args.num_completions_to_print is None else rows[: args.num_completions_to_print]
    if is_rich_available() and shown:
        print_table(shown, step, first_columns)
    frame = pd.DataFrame(rows)
    folder = os.path.join(args.output_dir, "completions")
    os.makedirs(folder, exist_ok=True)
    frame.to_parquet(os.path.join(folder, f"completions_{step:05d}.parquet"))

    report_to = args.report_to or []
    backends = []
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            backends.append(wandb)
    if "trackio" in report_to:
        import trackio

        backends.append(trackio)
    if args.log_unique_prompts:
        frame = frame[~frame["prompt"].astype(str).duplicated()]
    for backend in backends:
        backend.log({"completions": backend.Table(dataframe=frame)})


def print_table(rows: list[dict], step: int, first_columns: tuple[str, ...]):
    """Print the rows as a rich table titled with the step: numbers right-aligned to 3 decimals."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    table = Table(show_header=True, header_style="bold white", expand=True)
    extra = [key for key in rows[0] if key not in first_columns and key != "step"]
    for column in (*first_columns, *extra):
        numeric = column.startswith(("reward", "weight")) or column == "tau"
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        cells = []
        for column in (*first_columns, *extra):
            value = row.get(column)
            cells.append(f"{value:.3f}" if isinstance(value, float) else as_text(value))
        table.add_row(*cells)
        table.add_section()
    Console().print(Panel(table, expand=False, title=f"Step {step}", border_style="bold white"))
