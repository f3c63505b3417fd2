"""[`PLETrainer`]: PLE's generation round (plain and principle-guided prompts, rewards, label enhancement) and its
routed loss, on the pair machinery of [`PairTrainer`]."""

import logging
import random
import textwrap

import torch
from accelerate.utils import gather_object
from torch import nn
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import selective_log_softmax, strip_images_from_messages

from ..data import prompt_is_empty
from ..hub import check_model_path
from ..pairs.logps import sequence_logps
from ..pairs.trainer import PairTrainer
from ..rewards.implicit import implicit_reward_column
from ..rewards.model import LeftTruncatingRewardModel, reward_model_max_length
from ..rewards.validation import checked_reward_function
from . import labeling, losses
from .config import PLEConfig
from .principles import truncate_pair, wrap

logger = logging.getLogger(__name__)

ROUTE_NAMES = {True: "rank", False: "wsft"}


class PLETrainer(PairTrainer):
    """
    Trainer for Progressively Label Enhancement (PLE), from [Progressively Label Enhancement for Large Language Model
    Alignment](https://huggingface.co/papers/2408.02599) (Liu, Xu & Geng, ICML 2025).

    For each prompt the model answers twice, to the plain prompt and to the prompt guided by a principle. The reward
    scores both answers against the plain prompt. A pair whose principled answer beats the plain one by more than the
    threshold `tau` is trained with a ranking loss (principled preferred); the others are trained with an SFT loss
    weighted by their rewards. Both answers are conditioned on the plain prompt, so the principle is distilled into
    the model's unguided behaviour. `tau` starts at `tau0` and decays by `alpha` every PLE iteration.

    `PLETrainer` is a [`PairTrainer`], itself a [`~trl.GRPOTrainer`]: model loading, PEFT, reward models and functions,
    generation (transformers or vLLM), buffering across gradient accumulation, DeepSpeed/FSDP and NPU support are
    inherited; the pair machinery (one forward over both answers, prompt sharing, reference, audit log, resume) is the
    pair trainer's. This class builds the round (the principled prompts, the rewards, the labels) and the loss.

    Logged metrics: PLE's `ple/*` (means over the logging window, except `ple/tau`, the threshold at the logged step)
    and GRPO's reward metrics for pairs (`reward`, `reward_std`, `rewards/<function>/mean` and `/std`,
    `frac_reward_zero_std`, reward functions' `log_metric` values). `log_completions=True` writes one row per pair.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from ple_trl import PLEConfig, PLETrainer

    >>> def positivity(completions, **kwargs):
    ...     return [float("good" in c) for c in completions]

    >>> dataset = Dataset.from_dict({"prompt": ["Write a review of the movie:", "Tell me about your day:"]})
    >>> args = PLEConfig(output_dir="ple-out", principle="Be positive.", per_device_train_batch_size=2, max_steps=2)
    >>> trainer = PLETrainer(model="path/to/model", reward_funcs=positivity, args=args, train_dataset=dataset)
    >>> trainer.train()
    ```

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The policy, as for [`~trl.GRPOTrainer`]: a path or hub id, or a causal language model.
        reward_funcs (`RewardFunc` or `list[RewardFunc]`, *optional*):
            Reward functions and/or reward models, as for [`~trl.GRPOTrainer`]; summed with `args.reward_weights`.
            `args.reward_model_name_or_path` adds a reward model. At least one reward is required, unless
            `args.reward_source="implicit"`: then none may be given, and the model's own implicit reward scores the
            answers (logged as the reward `implicit_reward`; see [`PLEConfig`]).
        args ([`PLEConfig`], *optional*):
            Configuration. `per_device_train_batch_size` counts pairs (prompts).
        train_dataset ([`~datasets.Dataset`], [`~datasets.IterableDataset`] or `list[dict]`):
            Prompt-only (`prompt`), SFT (`messages`) or preference (`prompt`/`chosen`/`rejected`, or implicit prompt)
            data; only the prompts are used. An optional `principle` column overrides the configured principle (its
            empty rows use the configured one). Every row is checked at construction (a stream's rows as they come):
            empty prompts, and a dataset smaller than one generation round, are errors. For a vision-language policy,
            an `image` or `images` column (with conversational prompts) reaches generation and the loss as in
            [`~trl.GRPOTrainer`]; both answers of a pair see the same images.
        eval_dataset ([`~datasets.Dataset`], `list[dict]` or `dict[str, Dataset]`, *optional*):
            Same formats as `train_dataset`, here and in [`~PLETrainer.evaluate`].
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            The policy's tokenizer; loaded from the model when `None`.
        reward_processing_classes ([`~transformers.PreTrainedTokenizerBase`] or `list`, *optional*):
            Tokenizers of the reward models, as for [`~trl.GRPOTrainer`]. For chat prompts they need a chat template.
        callbacks (`list[TrainerCallback]`, *optional*):
            Extra callbacks.
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            Optimizer and scheduler.
        peft_config ([`~peft.PeftConfig`], *optional*):
            Trains an adapter; the adapter-disabled model is then the reference when `beta > 0`.
        ref_model (`str` or [`~transformers.PreTrainedModel`], *optional*):
            Reference model for the `"dpo"`/`"ipo"` ranking losses (`beta > 0`), as for [`~trl.DPOTrainer`] (default:
            the adapter-disabled model under PEFT, else a frozen copy of the initial policy), and `pi_init` of the
            implicit reward (`reward_source="implicit"`: required unless the policy is a `PeftModel` with its trained
            adapter).
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            Quantization of a model loaded from a path (QLoRA with `peft_config`).
    """

    _tag_names = ["trl", "ple"]
    _name = "PLE"
    _completion_columns = ("prompt", "principle", "plain", "principled", "reward_plain", "reward_principled", "route",
                           "weight_principled", "tau")  # fmt: skip
    _metrics_at_step = ("ple/tau",)
    _paper = {
        "title": "Progressively Label Enhancement for Large Language Model Alignment",
        "id": "2408.02599",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{liu2025progressively,
                title        = {{Progressively Label Enhancement for Large Language Model Alignment}},
                author       = {Biao Liu and Ning Xu and Xin Geng},
                year         = 2025,
                booktitle    = {Proceedings of the 42nd International Conference on Machine Learning},
                eprint       = {arXiv:2408.02599},
            }"""),
    }

    _config_class = PLEConfig
    _config_hint = (
        "PLETrainer needs a `PLEConfig`. Build one with the same fields, e.g. `PLEConfig(**your_args.to_dict())` "
        "minus the fields of your former method."
    )

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: PLEConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        ref_model=None,
        quantization_config=None,
    ):
        args = self._resolve_args(model, args)
        reward_funcs = (
            [] if reward_funcs is None else list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
        )
        for func in reward_funcs:
            if isinstance(func, str):
                check_model_path(func, "reward_funcs")
        if args.reward_model_name_or_path is not None:
            check_model_path(args.reward_model_name_or_path, "reward_model_name_or_path")
            reward_funcs.append(args.reward_model_name_or_path)
            if reward_processing_classes is not None and not isinstance(reward_processing_classes, list):
                reward_processing_classes = [reward_processing_classes]
            if reward_processing_classes is not None:
                reward_processing_classes = [*reward_processing_classes, None]
        implicit = args.reward_source == "implicit"
        if implicit and reward_funcs:
            raise ValueError(
                f"`reward_source='implicit'` labels the pairs with the model's own implicit reward, but "
                f"{len(reward_funcs)} reward function(s)/model(s) were passed too. Drop `reward_funcs`, or set "
                "`reward_source='reward_funcs'` to use them."
            )
        if implicit:
            # GRPO wants one reward source; this one only names the reward column, `_score` is never called with it.
            reward_funcs = [implicit_reward_column]
        if not reward_funcs:
            raise ValueError(
                "PLE needs a reward to compare the plain and principled answers, and none was given. Pass "
                "`reward_funcs=` (reward functions, reward models or their paths), set "
                "`PLEConfig(reward_model_name_or_path=...)`, or use the model's own implicit reward with "
                "`PLEConfig(reward_source='implicit')`."
            )
        if ref_model is not None and not self._needs_reference(args):
            raise ValueError(
                "A `ref_model` was passed but `beta=0`, so it would never be used. Set `beta > 0` with "
                "`ranking_loss_type='dpo'` or `'ipo'` (or `distill_coef > 0`: it is then the teacher), or drop "
                "`ref_model`."
            )
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            ref_model=ref_model,
            quantization_config=quantization_config,
        )
        conversational = is_conversational({"prompt": next(iter(self.train_dataset))["prompt"]})
        for i, (reward_func, reward_tokenizer) in enumerate(zip(self.reward_funcs, self.reward_processing_classes)):
            if not isinstance(reward_func, nn.Module):
                self.reward_funcs[i] = checked_reward_function(reward_func, self.reward_func_names[i])
                continue
            if conversational and getattr(reward_tokenizer, "chat_template", None) is None:
                name = self.reward_func_names[i]
                raise ValueError(
                    f"The reward model {name!r} has a tokenizer with no chat template, but the prompts are "
                    "conversations, which must be rendered with it. Pass `reward_processing_classes=` with a "
                    "tokenizer that has a `chat_template`, or set `tokenizer.chat_template` before passing it."
                )
            max_length = reward_model_max_length(reward_tokenizer, reward_func)
            if max_length is not None:  # long dialogues lose their start, never overflow the reward model
                self.reward_funcs[i] = LeftTruncatingRewardModel(reward_func, max_length)
        if args.distill_coef > 0:
            self._check_distillation()
        # Each process draws its own principles (independent streams, saved per process in checkpoints).
        self._principle_rng = random.Random(args.seed + self.accelerator.process_index)
        self._skipped_pairs_total = 0

    # --- the pair trainer's hooks -------------------------------------------------------------------------------

    def _principle_configured(self, args) -> bool:
        return args.principle is not None or args.principles is not None

    def _needs_reference(self, args) -> bool:
        # `pi_init`: the reference of `dpo`/`ipo`, the implicit reward's, and the teacher of the distillation.
        return args.beta > 0 or self._uses_implicit_reward(args) or args.distill_coef > 0

    def _uses_implicit_reward(self, args) -> bool:
        return args.reward_source == "implicit"

    def _check_first_row(self, row, args):
        if not self._principle_configured(args) and not row.get("principle"):
            raise ValueError(
                "No principle: PLE needs one to build the principle-guided prompt. Set `PLEConfig(principle=...)`, "
                "`PLEConfig(principles=[...])`, or add a `principle` column to the dataset."
            )

    def _extra_rank_state(self) -> dict:
        return {"principle_rng_state": self._principle_rng.getstate()}

    def _load_extra_rank_state(self, state: dict):
        self._principle_rng.setstate(state["principle_rng_state"])

    # --- threshold schedule -------------------------------------------------------------------------------------

    @property
    def tau(self) -> float:
        """The current threshold `max(tau_min, tau0 * alpha**k)`, k = completed PLE iterations."""
        return labeling.tau_at(self.completed_iterations(), self.args.tau0, self.args.alpha, self.args.tau_min)

    # --- sampling -----------------------------------------------------------------------------------------------

    def _principle_for(self, example):
        # A stream cannot be checked up front (see `data.prepare_prompt_dataset`): its rows are checked here.
        if prompt_is_empty(example.get("prompt")):
            raise ValueError(
                f"A row has an empty or missing `prompt`: {example.get('prompt')!r}. Remove such rows, e.g. "
                "`dataset.filter(lambda row: row['prompt'])`."
            )
        principle = example.get("principle")
        if isinstance(principle, str) and principle.strip():
            return principle
        if self.args.principle is not None:
            return self.args.principle
        if self.args.principles is not None:
            return self._principle_rng.choice(self.args.principles)
        raise ValueError(
            f"A row has an empty `principle` ({principle!r}) and no principle is configured to fall back on; its "
            f"prompt is {example.get('prompt')!r}. Fill the row's `principle`, or set `PLEConfig(principle=...)` or "
            "`PLEConfig(principles=[...])`."
        )

    def _truncate_prompts(self, prompt_ids, images):
        # The round's layout: the plain prompts, then their principled versions, in order. A principled prompt loses
        # the query tokens its plain prompt loses and keeps its principle.
        max_length = self.args.max_prompt_length
        num_pairs = len(prompt_ids) // 2
        longest = max(len(ids) for ids in prompt_ids[:num_pairs])
        if images is not None and longest > max_length:
            # Cutting a multimodal prompt would cut image tokens, which must match the image features.
            raise ValueError(
                f"A prompt with images has {longest} tokens (image tokens included), more than "
                f"`max_prompt_length={max_length}`, and multimodal prompts cannot be truncated without losing image "
                f"tokens. Set `max_prompt_length` to at least {longest}, or to `None`."
            )
        pairs = [
            truncate_pair(plain, principled, max_length)
            for plain, principled in zip(prompt_ids[:num_pairs], prompt_ids[num_pairs:], strict=True)
        ]
        return [plain for plain, _ in pairs] + [principled for _, principled in pairs]

    def _score(self, inputs, prompts, completions, completion_ids):
        """Weighted rewards of every answer of every process, `(num_processes * len(prompts),)`, NaN if unscorable,
        and the rewards of each function."""
        chunk = self.args.reward_batch_size or len(prompts)
        parts = []
        for start in range(0, len(prompts), chunk):
            end = start + chunk
            per_func = self._calculate_rewards(
                inputs[start:end], prompts[start:end], completions[start:end], completion_ids[start:end]
            )
            parts.append(per_func.view(self.accelerator.num_processes, -1, per_func.size(-1)))
        rewards_per_func = torch.cat(parts, dim=1).flatten(0, 1)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        return torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.nan, rewards), rewards_per_func

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        num_pairs = len(inputs)
        plain_prompts, images, model_prompts = self._round_prompts(inputs)
        principles = [self._principle_for(example) for example in inputs]
        # With images, the model sees the plain prompt as GRPO builds it (the images as typed parts of the first user
        # turn); its principled version wraps that, so both answers of a pair see the same images.
        principled_prompts = [
            wrap(prompt, principle, self.args.principle_template, self.args.principle_placement)
            for prompt, principle in zip(model_prompts, principles, strict=True)
        ]
        # One generation call for both halves: plain answers first, principle-guided answers second.
        distill = self.args.distill_coef > 0
        output, completions, completion_ids_list = self._generate_round(
            model_prompts, principled_prompts, images, keep_second_prompts=distill
        )

        # Both answers are scored against the plain prompt: the reward never sees the principle.
        if self.args.reward_source == "implicit":
            if mode == "train" and self._snapshot is not None:
                self._snapshot.refresh(self.completed_iterations())
            rewards = self._gather_pair_rewards(self._implicit_rewards(output))
            rewards_per_func = rewards.unsqueeze(1)
        else:
            rewards, rewards_per_func = self._score(
                inputs + inputs, model_prompts + model_prompts, completions, completion_ids_list
            )
        extra_columns = self._log_rewards(mode, rewards, rewards_per_func, num_pairs)
        rewards = rewards.view(self.accelerator.num_processes, 2, num_pairs)
        reward_plain, reward_principled = rewards[:, 0].flatten(), rewards[:, 1].flatten()

        # Label enhancement on the rewards of every process, so every process takes the same decisions.
        tau = self.tau
        labels = labeling.enhance(
            reward_plain,
            reward_principled,
            tau,
            gap_mode=self.args.gap_mode,
            reward_transform=self.args.reward_transform,
            routing=self.args.routing,
            sft_weighting=self.args.sft_weighting,
            sft_temperature=self.args.sft_temperature,
        )
        self._log_round(mode, tau, reward_plain, reward_principled, labels)
        save_labels = self.args.save_enhanced_labels and mode == "train"
        if save_labels or self.log_completions:
            texts = gather_object(
                [
                    (prompt, principle, completions[i], completions[num_pairs + i])
                    for i, (prompt, principle) in enumerate(zip(plain_prompts, principles, strict=True))
                ]
            )
            records = self._round_records(texts, reward_plain, reward_principled, labels, tau)
            if save_labels:
                self._audit(records)
            if self.log_completions:
                self._add_completion_rows(self._table_rows(records, rewards_per_func, extra_columns))

        output.update(labels.select(self._local(num_pairs))._asdict())
        if distill:
            distilled = labeling.distill_mask(labels, self.args.distill_pairs)
            self._metrics[mode]["ple/distill_fraction"].append(
                (distilled.sum() / labels.valid.sum().clamp(min=1)).item()
            )
            output["distill_mask"] = distilled[self._local(num_pairs)]
        if self.beta > 0:
            with torch.no_grad():
                output["ref_logps"] = self._reference_logps(output)
        return output

    def _round_records(self, texts, reward_plain, reward_principled, labels, tau) -> list[dict]:
        """One record per pair of every process (the audit log's, and the completions table's first columns):
        `texts` holds `(prompt, principle, plain answer, principled answer)`."""
        columns = torch.stack(
            [
                reward_plain,
                reward_principled,
                labels.rank_mask.float(),
                labels.principled_preferred.float(),
                labels.weight_principled,
                labels.valid.float(),
            ]  # fmt: skip
        ).T.tolist()
        records = []
        for (prompt, principle, plain, principled), (r, r_p, rank, preferred, w_p, ok) in zip(texts, columns):
            route = "skipped" if not ok else ROUTE_NAMES[bool(rank)]
            records.append(
                {
                    "step": self.state.global_step,
                    "tau": tau,
                    "prompt": strip_images_from_messages(prompt),
                    "principle": principle,
                    "plain": strip_images_from_messages(plain),
                    "principled": strip_images_from_messages(principled),
                    "reward_plain": r if ok else None,
                    "reward_principled": r_p if ok else None,
                    "route": route,
                    "preferred": ("principled" if preferred else "plain") if route == "rank" else None,
                    "weight_principled": w_p if ok else None,
                    "weight_plain": 1 - w_p if ok else None,
                }
            )
        return records

    def _table_rows(self, records, rewards_per_func, extra_columns) -> list[dict]:
        """The completions table's rows: each record's columns, each reward function's rewards when there are
        several, and the columns reward functions added with `log_extra`."""
        per_func = rewards_per_func.view(self.accelerator.num_processes, 2, -1, rewards_per_func.size(-1))
        per_func_plain = per_func[:, 0].flatten(0, 1).tolist()
        per_func_principled = per_func[:, 1].flatten(0, 1).tolist()
        rows = []
        for j, record in enumerate(records):
            row = {key: record[key] for key in ("step", *self._completion_columns)}
            if len(self.reward_func_names) > 1:
                for i, name in enumerate(self.reward_func_names):
                    row[f"{name}_plain"] = per_func_plain[j][i]
                    row[f"{name}_principled"] = per_func_principled[j][i]
            for column, values in extra_columns.items():
                row[f"{column}_plain"], row[f"{column}_principled"] = values[j]
            rows.append(row)
        return rows

    def _log_round(self, mode, tau, reward_plain, reward_principled, labels):
        metrics = self._metrics[mode]
        rank_mask, valid = labels.rank_mask, labels.valid
        num_valid = valid.sum()
        skipped = int((~valid).sum())
        metrics["ple/tau"].append(tau)
        metrics["ple/skipped_pairs"].append(float(skipped))
        if skipped:
            self._skipped_pairs_total += skipped
            logger.warning(
                f"{skipped} pair(s) had a NaN/None reward and are skipped this round ({self._skipped_pairs_total} so "
                "far); they are not trained on."
            )
        if num_valid == 0:
            return
        wsft = valid & ~rank_mask
        stats = torch.stack(
            [
                rank_mask.sum() / num_valid,
                reward_plain[valid].mean(),
                reward_principled[valid].mean(),
                labels.gap[valid].mean(),
                labels.weight_principled[wsft].mean() if wsft.any() else torch.tensor(torch.nan, device=valid.device),
            ]
        ).tolist()  # one device sync for all of them
        for name, value in zip(
            ("rank_fraction", "reward_plain", "reward_principled", "reward_gap", "sft_weight_principled"), stats
        ):
            metrics[f"ple/{name}"].append(value)

    def _reference_logps(self, inputs):
        sums, means = self._frozen_pair_logps("init", inputs)
        ranked_on = losses.ranking_logps(
            losses.PairLogps(sums, means), self.args.ranking_loss_type, self.args.length_normalize
        )
        return ranked_on.transpose(0, 1)  # (pairs, 2): a pair's two values travel together, like its answers

    # --- loss ---------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        # The MoE load-balancing loss only in the policy's trained forward, as GRPO (not in the reference pass).
        distill_losses = None
        if self.args.distill_coef > 0:
            (sums, means, distill_losses), aux_loss = self._distilled_pair_logps(model, inputs), None
        else:
            sums, means, aux_loss = self._pair_logps(model, inputs, compute_aux_loss=self.aux_loss_enabled)
        ref_logps = inputs.get("ref_logps")
        result = losses.ple_loss(
            labeling.EnhancedLabels(*(inputs[name] for name in labeling.EnhancedLabels._fields)),
            losses.PairLogps(sums, means, None if ref_logps is None else ref_logps.transpose(0, 1)),
            ranking_loss_type=self.args.ranking_loss_type,
            length_normalize=self.args.length_normalize,
            rank_coef=self.args.rank_coef,
            wsft_coef=self.args.wsft_coef,
            rank_sft_coef=self.args.rank_sft_coef,
            beta=self.beta,
            plain_sft_coef=self.args.plain_sft_coef,
            distill_losses=distill_losses,
            distill_coef=self.args.distill_coef,
        )
        # Global means of each branch's loss over the pairs it applies to (one reduction for all the numbers).
        branches = {"rank": (result.rank_losses, result.rank_mask), "wsft": (result.wsft_losses, result.wsft_mask)}
        if distill_losses is not None:
            distilled = inputs["distill_mask"] & inputs["valid"].bool()
            branches["distill"] = (torch.where(distilled, distill_losses, 0.0), distilled)
        totals = self.accelerator.reduce(
            torch.stack([x for value, mask in branches.values() for x in (value.sum(), mask.sum())]).detach().float(),
            reduction="sum",
        ).tolist()
        for i, name in enumerate(branches):
            if totals[2 * i + 1]:
                self._metrics[mode][f"ple/loss_{name}"].append(totals[2 * i] / totals[2 * i + 1])
        return self._scaled_loss(result.loss, aux_loss, mode)

    def _check_distillation(self):
        # The distillation's forward runs the plain-prompt rows with full logits and a teacher on text prompts.
        if self.aux_loss_enabled:
            raise ValueError(
                "`distill_coef > 0` runs the pair forward with full logits, which does not compute an MoE "
                "load-balancing loss: set `router_aux_loss_coef=0` (or `distill_coef=0`)."
            )
        if self._is_vlm:
            raise ValueError(
                "`distill_coef > 0` distils text prompts: its teacher forward takes no images. Set `distill_coef=0` "
                "for a vision-language policy."
            )

    def _distilled_pair_logps(self, model, inputs):
        """
        The pair forward with full logits (GRPO's layout, not the fused LM head), for the distillation: the sums and
        means of both answers' log-probs, `(2, pairs)`, and each pair's distillation loss, `(pairs,)` (0 where
        `distill_mask` is off): the policy shown the plain prompt against the frozen initial model shown the
        principle-guided prompt, on the plain answer.
        """
        num_pairs, length = inputs["prompt_ids"].size(0), inputs["completion_ids"].size(2)
        completion_ids = inputs["completion_ids"].transpose(0, 1).flatten(0, 1)
        completion_mask = inputs["completion_mask"].transpose(0, 1).flatten(0, 1)
        input_ids = torch.cat([inputs["prompt_ids"].repeat(2, 1), completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"].repeat(2, 1), completion_mask], dim=1)
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -length - 1 : -1]
        per_token = selective_log_softmax(logits.float(), completion_ids)
        sums = sequence_logps(per_token, completion_mask).view(2, num_pairs)
        means = sequence_logps(per_token, completion_mask, length_normalize=True).view(2, num_pairs)
        distill_losses = torch.zeros(num_pairs, device=logits.device)
        rows = inputs["distill_mask"].nonzero().squeeze(-1)
        if rows.numel():
            plain_ids, plain_mask = inputs["completion_ids"][rows, 0], inputs["completion_mask"][rows, 0]
            teacher_ids = torch.cat([inputs["second_prompt_ids"][rows], plain_ids], dim=1)
            teacher_mask = torch.cat([inputs["second_prompt_mask"][rows], plain_mask], dim=1)
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                with self._frozen_initial_model() as teacher, self.accelerator.autocast():
                    teacher_logits = teacher(input_ids=teacher_ids, attention_mask=teacher_mask).logits
            distilled = losses.distillation_loss(
                logits[rows], teacher_logits[:, -length - 1 : -1], plain_mask, self.args.distill_topk,
                self.args.distill_alpha,
            )  # fmt: skip
            distill_losses = distill_losses.index_put((rows,), distilled)
        return sums, means, distill_losses

    def _settings_section(self) -> str:
        args = self.args

        def short(text, width=80):
            return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder="...")

        if args.principles is not None:
            principles = "; ".join(f'"{short(p, 60)}"' for p in args.principles[:5])
            if len(args.principles) > 5:
                principles += f" (and {len(args.principles) - 5} more)"
            principles = f"{len(args.principles)}, one drawn per prompt: {principles}"
        elif args.principle is not None:
            principles = f'"{short(args.principle)}"'
        else:
            principles = "from the dataset's `principle` column"
        if args.iteration_unit == "steps":
            iteration = f"{args.steps_per_iteration} optimizer step(s)"
        else:
            iteration = "one epoch"
        reference = f", beta={args.beta}" if self.beta > 0 else " (no reference model)"
        weights = zip(self.reward_func_names, self.reward_weights.tolist(), strict=True)
        rewards = ", ".join(f"`{name}` (weight {weight:g})" for name, weight in weights)
        lines = [
            "### PLE settings",
            "",
            f"- Principle(s): {principles}",
            f"- Threshold: tau0={args.tau0}, alpha={args.alpha}, tau_min={args.tau_min}; one PLE iteration = "
            f"{iteration}",
            f"- Routing: {args.routing} (gap_mode={args.gap_mode}, reward_transform={args.reward_transform})",
            f"- Ranking loss: {args.ranking_loss_type}{reference}, length_normalize={args.length_normalize}, "
            f"rank_coef={args.rank_coef}, rank_sft_coef={args.rank_sft_coef}",
            f"- Weighted SFT: sft_weighting={args.sft_weighting}, sft_temperature={args.sft_temperature}, "
            f"wsft_coef={args.wsft_coef}",
            f"- Rewards: {rewards}",
            "",
        ]
        return "\n".join(lines)
