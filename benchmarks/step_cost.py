"""Seconds per optimizer step of PLE, of TRL's online trainers doing the same work, and of PLE's own limit.

In one process, on the same model, prompts, completion length, batch and seed, this times N optimizer steps (after
warm-up) of:

- `PLETrainer` (`per_device_train_batch_size` = B pairs, so 2B completions per step);
- `trl.GRPOTrainer` with `num_generations=2` and `per_device_train_batch_size` = 2B completions (the same work:
  2B answers, their rewards, one forward/backward over 2B sequences);
- `trl.experimental.online_dpo.OnlineDPOTrainer` with B prompts (2B answers, the same rewards, plus its reference
  forward);
- PLE's limit: the same calls with no trainer around them: one `model.generate` over the 2B plain and principled
  prompts, the reward function, one forward/backward over the 2B (plain prompt + answer) sequences and the optimizer
  step.

Every peer runs at its fastest settings for the work: gradient checkpointing off, no mixed precision on CPU, no logging
or saving. Every answer is exactly `--completion-length` tokens long (`min_new_tokens`), so each trainer does the same
amount of work whatever it samples.

Two cases (`--case`):

- `short`: today's 5-12 word prompts, 24-token answers, a word-lexicon reward (no model, so it costs the same
  everywhere), and PLE's limit;
- `long`: prompts of `--prompt-length` (256) tokens and `--long-completion-length` (64) token answers, as the paper's
  HH dialogues and TL;DR posts, scored by a small classifier reward model (a 2-layer Llama classifier, hidden size 64,
  loaded by every trainer from the same folder). With `--model tiny` the policy is a 4-layer Llama of hidden size
  `--long-hidden-size` (256): at hidden size 64 the step is all Python overhead, where no trainer does less than
  another. Here both answers of a pair continue the same long plain prompt, which PLE's loss pass runs once.
- `dialogue`: the `long` case with conversational prompts of about the same length, as the HH dialogues are: an
  earlier user turn and assistant turn, then a short last question. The principle rewrites the last user turn only,
  so a pair's two prompts share the earlier turns, which PLE's generation also runs once. The A/B variant
  `ple_unshared_generation` is PLE generating every prompt token of both answers.

The trainers run interleaved (A, B, C, D, A, B, C, D, ...): each runs `train()` in its own thread, and a baton passed
by a callback at every step boundary lets exactly one step run at a time. Timings are medians, robust to a machine
shared with other jobs.

```bash
python benchmarks/step_cost.py                        # both cases, tiny Llamas built on the fly, CPU, a few minutes
python benchmarks/step_cost.py --case long --steps 6 --warmup 1 --write   # the long-prompt case only
python benchmarks/step_cost.py --model smollm2 --steps 6 --write   # SmolLM2-135M from the demo cache
```
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_memory_bytes, reset_peak_memory, synchronize  # noqa: E402
from tiny_model import NEGATIVE_WORDS, POSITIVE_WORDS, WORDS, build_tiny_llama, build_tiny_reward_model  # noqa: E402

PROMPTS = [
    "write a review of the movie :",
    "tell me about your day :",
    "what do you think of the book ?",
    "please write a short story about a city :",
    "how was the food ?",
    "reply to this question : why is the weather so cold ?",
    "tell me a story about a friend :",
    "what is your answer to this question ?",
]
PRINCIPLE = "please be positive and kind ."
POSITIVE = set(POSITIVE_WORDS) | {"love", "wonderful", "lovely", "best", "enjoy", "beautiful", "fun", "glad"}
NEGATIVE = set(NEGATIVE_WORDS) | {"hate", "terrible", "worst", "boring", "poor", "angry", "wrong", "sorry"}
TRAINERS = ("ple", "grpo", "online_dpo", "limit")
CASES = ("short", "long", "dialogue")
# Variants for A/B measurements of PLE's own optimisations (not run by default, but the dialogue case runs the second).
VARIANTS = ("ple_entropy_head", "ple_unshared_generation")
LABELS = {
    "ple": "PLE",
    "grpo": "GRPO (num_generations=2)",
    "online_dpo": "Online DPO",
    "limit": "PLE limit (no trainer)",
    "ple_entropy_head": "PLE with GRPO's entropy head",
    "ple_unshared_generation": "PLE, prefix not shared at generation",
}


def lexicon_reward(prompts=None, completions=None, **kwargs):
    """Positive minus negative word fraction of each answer: no model, microseconds, equal for every trainer."""
    rewards = []
    for completion in completions:
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        words = [w.strip(".,!?:;") for w in text.lower().split()]
        rewards.append((sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / max(1, len(words)))
    return rewards


# --- memory ---------------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one step: `max_memory_allocated` on an accelerator, the peak RSS (VmHWM, reset per step through
    `/proc/self/clear_refs`) on CPU, else the process's lifetime peak RSS from `resource`."""

    def __init__(self, device):
        self.device = device
        self.module = None if device.type == "cpu" else torch.get_device_module(device.type)
        self.can_reset_rss = False
        if self.module is None:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.can_reset_rss = self._vm("VmHWM") is not None
            except OSError:
                pass
        self.kind = "allocated" if self.module is not None else "RSS" if self.can_reset_rss else "RSS (process peak)"

    @staticmethod
    def _vm(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    def reset(self):
        if self.module is not None:
            synchronize(self.device)
            reset_peak_memory(self.device)
        elif self.can_reset_rss:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def current(self):
        """Bytes in use now (allocated on an accelerator, RSS on CPU)."""
        if self.module is not None:
            synchronize(self.device)
            return self.module.memory_allocated()
        return self._vm("VmRSS") or 0

    def peak(self):
        """Peak bytes since `reset` (process-wide on CPU)."""
        if self.module is not None:
            synchronize(self.device)
            return peak_memory_bytes(self.device)
        if self.can_reset_rss:
            return self._vm("VmHWM")
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def sync(self):
        synchronize(self.device)


# --- interleaving ---------------------------------------------------------------------------------------------------


class Baton:
    """Lets one runner step at a time, in a fixed round-robin order, among the runners still alive."""

    def __init__(self, names):
        self.order = list(names)
        self.alive = list(names)
        self.turn = self.order[0]
        self.cond = threading.Condition()
        self.error = None

    def wait(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name or self.error is not None)
            if self.error is not None:
                raise RuntimeError("another runner failed") from self.error

    def pass_on(self, name, finished=False):
        with self.cond:
            index = self.alive.index(name)
            if finished:
                self.alive.remove(name)
                index -= 1
            self.turn = self.alive[(index + 1) % len(self.alive)] if self.alive else None
            self.cond.notify_all()

    def fail(self, error):
        with self.cond:
            self.error = error
            self.cond.notify_all()


class StepRecorder:
    def __init__(self, name, baton, memory, total_steps):
        self.name, self.baton, self.memory, self.total_steps = name, baton, memory, total_steps
        self.times, self.peaks, self.bases, self.start = [], [], [], None
        self.steps_done = 0

    def begin(self):
        self.baton.wait(self.name)
        self.memory.reset()
        self.bases.append(self.memory.current())
        self.start = time.perf_counter()

    def end(self):
        self.memory.sync()
        self.times.append(time.perf_counter() - self.start)
        self.peaks.append(self.memory.peak())
        self.steps_done += 1
        self.baton.pass_on(self.name, finished=self.steps_done >= self.total_steps)


class TimingCallback(TrainerCallback):
    def __init__(self, recorder):
        self.recorder = recorder

    def on_step_begin(self, args, state, control, **kwargs):
        self.recorder.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.end()


# --- the runners ----------------------------------------------------------------------------------------------------


def common_args(opts, output_dir):
    return dict(
        output_dir=output_dir,
        max_steps=opts.warmup + opts.steps + 1,  # + 1 untimed cool-down step (see `main`)
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        seed=opts.seed,
        logging_steps=10**9,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        bf16=opts.bf16,
        fp16=False,
        use_cpu=opts.device.type == "cpu",
        dataloader_num_workers=0,
        temperature=1.0,
        generation_kwargs={"min_new_tokens": opts.completion_length},
    )


def load_model(opts):
    model = AutoModelForCausalLM.from_pretrained(opts.model_path, dtype=torch.float32)
    return model.to(opts.device)


def make_ple(opts, dataset, tokenizer, output_dir):
    from ple_trl import PLEConfig, PLETrainer

    args = PLEConfig(
        **common_args(opts, output_dir),
        per_device_train_batch_size=opts.batch_size,  # pairs
        max_completion_length=opts.completion_length,
        principle=PRINCIPLE,
    )
    return PLETrainer(
        model=load_model(opts),
        reward_funcs=opts.reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def make_ple_entropy_head(opts, dataset, tokenizer, output_dir):
    """PLE with the LM head GRPO patches (log-probs and entropy), as before PLE re-patched it to log-probs only."""
    from trl.trainer.utils import add_fused_lm_head

    trainer = make_ple(opts, dataset, tokenizer, output_dir)
    add_fused_lm_head(trainer.model, temperature=1.0, outputs=("log_probs", "entropy"))
    return trainer


def make_ple_unshared_generation(opts, dataset, tokenizer, output_dir):
    """PLE generating every prompt token of both answers, as before it ran a pair's common prefix once."""
    trainer = make_ple(opts, dataset, tokenizer, output_dir)
    trainer._generation_prefix_plan = lambda *args: (None, "switched off for the A/B comparison")
    return trainer


def make_grpo(opts, dataset, tokenizer, output_dir):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        **common_args(opts, output_dir),
        per_device_train_batch_size=2 * opts.batch_size,  # completions
        num_generations=2,
        max_completion_length=opts.completion_length,
    )
    return GRPOTrainer(
        model=load_model(opts),
        reward_funcs=opts.reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def make_online_dpo(opts, dataset, tokenizer, output_dir):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    kwargs = common_args(opts, output_dir)
    args = OnlineDPOConfig(
        **kwargs,
        per_device_train_batch_size=opts.batch_size,  # prompts, 2 answers each
        max_new_tokens=opts.completion_length,
    )
    return OnlineDPOTrainer(
        model=load_model(opts),
        reward_funcs=opts.reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


class Limit:
    """PLE's unavoidable work with no trainer: generate 2B answers in one call, score them, one forward/backward over
    the 2B (plain prompt + answer) sequences with PLE's loss, one optimizer step."""

    def __init__(self, opts, tokenizer):
        from ple_trl import labeling, losses
        from ple_trl.ple.principles import wrap

        self.opts, self.tokenizer, self.labeling, self.losses, self.wrap = opts, tokenizer, labeling, losses, wrap
        self.model = load_model(opts)
        self.model.train()
        # The trainers' default optimizer (`optim="adamw_torch_fused"`)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6, fused=True)
        self.generation_config = GenerationConfig(
            max_new_tokens=opts.completion_length,
            min_new_tokens=opts.completion_length,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            disable_compile=True,
        )

    def _encode(self, texts):
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        return enc["input_ids"].to(self.opts.device), enc["attention_mask"].to(self.opts.device)

    def step(self, prompts):
        num = len(prompts)
        principled = [self.wrap(p, PRINCIPLE) for p in prompts]
        input_ids, attention_mask = self._encode(prompts + principled)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation_config
            )
        completion_ids = output[:, input_ids.size(1) :]
        is_eos = completion_ids == self.tokenizer.eos_token_id
        after_eos = (is_eos.cumsum(1) - is_eos.int()) > 0
        completion_mask = (~after_eos).long()
        completions = self.tokenizer.batch_decode(completion_ids.masked_fill(after_eos, self.tokenizer.pad_token_id),
                                                  skip_special_tokens=True)  # fmt: skip
        rewards = torch.tensor(lexicon_reward(prompts + prompts, completions), device=self.opts.device).view(2, num)
        labels = self.labeling.enhance(rewards[0], rewards[1], 0.2)

        prompt_ids, prompt_mask = self._encode(prompts)
        ids = torch.cat([prompt_ids.repeat(2, 1), completion_ids], dim=1)
        mask = torch.cat([prompt_mask.repeat(2, 1), completion_mask], dim=1)
        length = completion_ids.size(1)
        with torch.autocast(self.opts.device.type, dtype=torch.bfloat16, enabled=self.opts.bf16):
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=length + 1).logits[:, :-1].float()
        per_token = torch.gather(logits.log_softmax(-1), 2, completion_ids.unsqueeze(-1)).squeeze(-1)
        sums = self.losses.sequence_logps(per_token, completion_mask).view(2, num)
        means = self.losses.sequence_logps(per_token, completion_mask, length_normalize=True).view(2, num)
        loss = self.losses.ple_loss(labels, self.losses.PairLogps(sums, means)).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_trainer(trainer, recorder, baton):
    try:
        trainer.remove_callback(PrinterCallback)  # the end-of-training summary would print into the table
        trainer.add_callback(TimingCallback(recorder))
        trainer.train()
    except BaseException as error:  # noqa: BLE001
        traceback.print_exc()
        baton.fail(error)


def run_limit(limit, recorder, baton, opts):
    try:
        for step in range(recorder.total_steps):
            start = (step * opts.batch_size) % len(PROMPTS)
            prompts = [PROMPTS[(start + i) % len(PROMPTS)] for i in range(opts.batch_size)]
            recorder.begin()
            limit.step(prompts)
            recorder.end()
    except BaseException as error:  # noqa: BLE001
        traceback.print_exc()
        baton.fail(error)


# --- report ---------------------------------------------------------------------------------------------------------


def long_prompts(count, length, seed=0):
    """`count` prompts of `length` words drawn from the tiny tokenizer's vocabulary (one token each there)."""
    generator = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w not in (":", "?")]
    return [
        " ".join(words[i] for i in torch.randint(len(words), (length,), generator=generator).tolist()) + " :"
        for _ in range(count)
    ]


MIN_DIALOGUE_LENGTH = 20  # a question, the template's 7 tokens, and at least a word in each turn of history


def dialogue_prompts(count, length, seed=0):
    """`count` conversations of `length` tokens with the tiny tokenizer's chat template (`<role> content </s>` per
    turn, then `<assistant>`): a user turn and an assistant turn of words drawn from its vocabulary, then an 8-word
    question."""
    generator = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w not in (":", "?")]

    def text(n):
        return " ".join(words[i] for i in torch.randint(len(words), (n,), generator=generator).tolist())

    question = 9  # 8 words and "?"
    history = length - question - 7  # each turn adds its role token and `</s>`, the template a last `<assistant>`
    return [
        [
            {"role": "user", "content": text(history - history // 3)},
            {"role": "assistant", "content": text(history // 3)},
            {"role": "user", "content": text(question - 1) + " ?"},
        ]
        for _ in range(count)
    ]


def format_table(results, opts, memory_kind):
    medians = {name: statistics.median(r["times"]) for name, r in results.items()}

    def ratio(name, ref):
        return f"{medians[name] / medians[ref]:.2f}x" if ref in medians and name != ref else "-"

    lines = [
        "| trainer | s/step (median) | min | max | vs GRPO | vs Online DPO | vs PLE limit | "
        f"peak {memory_kind} (MiB) | "
        "step +MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TRAINERS + VARIANTS:
        if name not in results:
            continue
        times, peaks, bases = results[name]["times"], results[name]["peaks"], results[name]["bases"]
        lines.append(
            f"| {LABELS[name]} | {medians[name]:.3f} | {min(times):.3f} | {max(times):.3f} | {ratio(name, 'grpo')} | "
            f"{ratio(name, 'online_dpo')} | {ratio(name, 'limit')} | {max(peaks) / 2**20:.0f} | "
            f"{max(max(0, p - b) for p, b in zip(peaks, bases)) / 2**20:.0f} |"
        )
    prompts = "short prompts (5-12 words), a word-lexicon reward"
    if opts.case == "long":
        prompts = f"{opts.prompt_length}-token prompts, a tiny classifier reward model (2 layers, hidden 64)"
    elif opts.case == "dialogue":
        prompts = (
            f"{opts.prompt_length}-token dialogues (two turns of history, a short last question), a tiny classifier "
            "reward model (2 layers, hidden 64)"
        )
    setup = (
        f"{opts.case} case: model `{opts.model_name}`, device `{opts.device}` ({torch.get_num_threads()} threads), "
        f"{prompts}, {opts.batch_size} pairs = {2 * opts.batch_size} completions/step, "
        f"{opts.completion_length} tokens per answer, "
        f"{opts.steps} timed steps each after {opts.warmup} warm-up, interleaved, seed {opts.seed}, "
        f"{'bf16 mixed precision' if opts.bf16 else 'fp32'}; "
        f"torch {torch.__version__}"
    )
    return setup, "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="`tiny` (4-layer Llama built on the fly), `smollm2` (SmolLM2-135M from the demo cache), "
                             "or a local path")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per trainer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per trainer first")
    parser.add_argument("--case", default="both", choices=CASES + ("both", "all"),
                        help="which case(s) to time: `both` is short and long, `all` adds dialogue")  # fmt: skip
    parser.add_argument("--completion-length", type=int, default=24, help="answer tokens in the short case")
    parser.add_argument("--prompt-length", type=int, default=256, help="prompt tokens in the long and dialogue cases")
    parser.add_argument("--long-completion-length", type=int, default=64,
                        help="answer tokens in the long and dialogue cases")  # fmt: skip
    parser.add_argument("--long-hidden-size", type=int, default=256,
                        help="hidden size of the tiny Llama, long and dialogue cases")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4, help="pairs (prompts) per step; 2x completions")
    parser.add_argument("--device", default=None, help="cpu, cuda, npu, ... (default: the accelerator if any)")
    parser.add_argument("--trainers", default=None,
                        help=f"comma-separated subset of {TRAINERS} (or the A/B variants {VARIANTS}); default: "
                             "all, but the limit (lexicon reward only) outside the short case")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: min(2, cores))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (fp32 weights) in every runner")
    parser.add_argument("--write", action="store_true", help="write the table to benchmarks/results/<device>.md")
    parser.add_argument("--output", default=None, help="with --write: the Markdown file to write (default: "
                        "benchmarks/results/<device>.md)")
    return parser.parse_args(argv)


def resolve_model(name, workdir, case="short", hidden_size=256):
    if name == "tiny" and case != "short":
        path = Path(workdir) / "tiny-llama-long"
        path = build_tiny_llama(path, hidden_size=hidden_size, max_position_embeddings=1024)
        return f"tiny-llama-4l-h{hidden_size}", path
    if name == "tiny":
        return "tiny-llama-4l", build_tiny_llama(Path(workdir) / "tiny-llama")
    if name in ("smollm2", "demo"):
        from ple_trl.demo_model import resolve_demo_model  # the cached folder, or a one-off conversion

        return "SmolLM2-135M-Instruct", resolve_demo_model(None)
    return Path(name).name, name


def main(argv=None):
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads or max(1, min(2, os.cpu_count() or 1)))
    hf_logging.set_verbosity_error()
    if opts.device is None:
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        opts.device = accelerator or torch.device("cpu")
    opts.device = torch.device(opts.device)
    results = {}
    cases = {"both": ("short", "long"), "all": CASES}.get(opts.case, (opts.case,))
    for case in cases:
        results[case] = run_case(argparse.Namespace(**vars(opts)), case)
    return results if len(cases) > 1 else results[opts.case]


def run_case(opts, case):
    opts.case = case
    default = [n for n in TRAINERS if case == "short" or n != "limit"]
    if case == "dialogue":
        default.insert(1, "ple_unshared_generation")
    names = [n.strip() for n in opts.trainers.split(",") if n.strip()] if opts.trainers else default
    unknown = set(names) - set(TRAINERS + VARIANTS)
    if unknown:
        raise SystemExit(f"unknown trainers {sorted(unknown)}; choose among {TRAINERS + VARIANTS}")
    if case != "short" and "limit" in names:
        raise SystemExit("the PLE limit runs the short case only (its reward is the word lexicon)")
    if case == "dialogue" and opts.prompt_length < MIN_DIALOGUE_LENGTH:
        raise SystemExit(
            f"--prompt-length {opts.prompt_length} is too short for a dialogue (two turns of history and a question, "
            f"with the chat template's tokens); use at least {MIN_DIALOGUE_LENGTH}"
        )

    with tempfile.TemporaryDirectory() as workdir:
        opts.model_name, opts.model_path = resolve_model(opts.model, workdir, case, opts.long_hidden_size)
        tokenizer = AutoTokenizer.from_pretrained(opts.model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        rows = (opts.warmup + opts.steps + 2) * opts.batch_size
        if case != "short":
            opts.completion_length = opts.long_completion_length
            opts.reward = build_tiny_reward_model(Path(workdir) / "reward")
            make_prompts = long_prompts if case == "long" else dialogue_prompts
            prompts = make_prompts(len(PROMPTS), opts.prompt_length, opts.seed)
        else:
            opts.reward = lexicon_reward
            prompts = PROMPTS
        dataset = Dataset.from_dict({"prompt": [prompts[i % len(prompts)] for i in range(rows)]})

        memory = PeakMemory(opts.device)
        baton = Baton(names)
        # Warm-up steps absorb every runner's set-up (which runs while another one steps); a last untimed step
        # absorbs their tear-down, so no timed step overlaps anything but the dataloader's next fetch.
        total = opts.warmup + opts.steps + 1
        makers = {"ple": make_ple, "grpo": make_grpo, "online_dpo": make_online_dpo,
                  "ple_entropy_head": make_ple_entropy_head,
                  "ple_unshared_generation": make_ple_unshared_generation}  # fmt: skip
        recorders, threads = {}, []
        for name in names:
            recorders[name] = StepRecorder(name, baton, memory, total)
            if name == "limit":
                target = (run_limit, (Limit(opts, tokenizer), recorders[name], baton, opts))
            else:
                trainer = makers[name](opts, dataset, tokenizer, os.path.join(workdir, name))
                target = (run_trainer, (trainer, recorders[name], baton))
            threads.append(threading.Thread(target=target[0], args=target[1], name=name, daemon=True))
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if baton.error is not None:
            raise SystemExit(f"a runner failed: {baton.error!r}")
        elapsed = time.perf_counter() - started

    results = {}
    for name, recorder in recorders.items():
        timed = slice(opts.warmup, opts.warmup + opts.steps)
        results[name] = {key: getattr(recorder, key)[timed] for key in ("times", "peaks", "bases")}
    setup, table = format_table(results, opts, memory.kind)
    print(setup)
    print(table)
    print(f"(total {elapsed:.0f} s; per-step times: " + "; ".join(
        f"{name} " + " ".join(f"{t:.3f}" for t in r["times"]) for name, r in results.items()) + ")")  # fmt: skip
    if opts.write:
        default_out = Path(__file__).resolve().parent / "results" / f"{opts.device.type}.md"
        out = Path(opts.output) if opts.output else default_out
        out.parent.mkdir(parents=True, exist_ok=True)
        title = {"short": opts.model_name, "long": f"{opts.model_name}, long prompts",
                 "dialogue": f"{opts.model_name}, dialogues"}[case]  # fmt: skip
        section = f"## {title}\n\n{setup}\n\n{table}\n"
        text = out.read_text() if out.exists() else f"# Step cost on `{opts.device.type}`\n\n"
        marker = f"## {title}\n"
        if marker in text:  # replace this model's section, keep the others
            head, _, rest = text.partition(marker)
            tail = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
            text = head + section + ("\n" + tail if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        out.write_text(text)
        print(f"written to {out}")
    return results


if __name__ == "__main__":
    main()
