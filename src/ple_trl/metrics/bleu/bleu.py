# Copyright 2026 The ple-trl authors. Licensed under the Apache License, Version 2.0.
"""Corpus BLEU computed with `sacrebleu.corpus_bleu`.

This script is a self-contained `evaluate` module: load it with `evaluate.load(<path of this folder>)`, or with
`ple_trl.metrics.load("bleu")`. It never touches the Hugging Face Hub. It needs `sacrebleu` (`pip install sacrebleu`).
"""

import datasets
import evaluate
import sacrebleu

from ple_trl.errors import preview

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU (Papineni et al., 2002) as computed by SacreBLEU (Post, 2018), which tokenizes the raw text
itself so that scores are comparable across papers. Every prediction may have several references, and the number
of references may vary from one prediction to the next (missing ones are passed to SacreBLEU as `None`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        The hypotheses (detokenized text), one per sample.
    references (`list[list[str]]` or `list[str]`):
        The references of every prediction: a list of reference strings per prediction, or one string each.
    tokenize (`str`, *optional*, defaults to `"13a"`):
        SacreBLEU tokenizer: `"none"`, `"13a"`, `"intl"`, `"zh"`, `"ja-mecab"`, `"char"`, `"flores101"`, ...
    lowercase (`bool`, *optional*, defaults to `False`):
        Compute a case-insensitive BLEU.
    smooth_method (`str`, *optional*, defaults to `"exp"`):
        Smoothing: `"none"`, `"floor"`, `"add-k"` or `"exp"`.
    smooth_value (`float`, *optional*):
        Value for `"floor"` (default 0.1) and `"add-k"` (default 1) smoothing.
    force (`bool`, *optional*, defaults to `False`):
        Do not warn about (and do not refuse) input that looks already tokenized.
    use_effective_order (`bool`, *optional*, defaults to `False`):
        Ignore n-gram orders with no match (for sentence-level BLEU).

Returns:
    `dict`:
        - **bleu** (`float`): the BLEU score, in [0, 100].
        - **counts** (`list[int]`): matching n-grams for n = 1..4.
        - **totals** (`list[int]`): n-grams in the predictions for n = 1..4.
        - **precisions** (`list[float]`): n-gram precisions (in %) for n = 1..4.
        - **brevity_penalty** (`float`): the brevity penalty.
        - **length_ratio** (`float`): prediction length / reference length.
        - **translation_length** (`int`): total prediction length in tokens.
        - **reference_length** (`int`): total effective reference length in tokens.

Examples:

    >>> import evaluate
    >>> from ple_trl.metrics import metric_path
    >>> bleu = evaluate.load(metric_path("bleu"))
    >>> results = bleu.compute(
    ...     predictions=["the cat sat on the mat"],
    ...     references=[["the cat sat on the mat", "a cat was sitting on the mat"]],
    ... )
    >>> results["bleu"], results["brevity_penalty"]
    (100.00000000000004, 1.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacrebleu",
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319/"],
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        tokenize=sacrebleu.BLEU.TOKENIZER_DEFAULT,
        lowercase=False,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        use_effective_order=False,
    ):
        if len(predictions) == 0:
            raise ValueError("`predictions` is empty: pass at least one prediction and its references.")
        references = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
        for i, refs in enumerate(references):
            if len(refs) == 0:
                raise ValueError(f"`references[{i}]`=[] is empty: every prediction needs at least one reference.")
        if smooth_method not in sacrebleu.BLEU.SMOOTH_DEFAULTS:
            raise ValueError(
                f"`smooth_method`={preview(smooth_method)} is not supported; use one of "
                f"{sorted(sacrebleu.BLEU.SMOOTH_DEFAULTS)}."
            )
        # sacrebleu wants one stream per reference position; predictions with fewer references get `None` there.
        num_streams = max(len(refs) for refs in references)
        streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(num_streams)]
        score = sacrebleu.corpus_bleu(
            predictions,
            streams,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            tokenize=tokenize,
            use_effective_order=use_effective_order,
        )
        return {
            "bleu": score.score,
            "counts": score.counts,
            "totals": score.totals,
            "precisions": score.precisions,
            "brevity_penalty": score.bp,
            "length_ratio": score.ratio,
            "translation_length": score.sys_len,
            "reference_length": score.ref_len,
        }
