"""The training engine: one stacked ensemble of runs trained together on one device.

Every family trains here. Runs whose shapes agree (same model, dataset shape and step budget)
become members of one ensemble: their weights share a leading axis and each step is one set of
batched kernels. Members may differ in seed, training set (per-member masks), learning rate,
weight decay, early-stopping threshold, batch size (masked slots) and per-layer schedules.

The hot loop never synchronises with the host: batches come from a counter-based hash
(`sampling`), the step counter lives on the device, evaluations write into a preallocated
history buffer, and on CUDA the step and the evaluation are each captured once as CUDA graphs
(optionally after torch.compile) and replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.func import functional_call
from torch.fx.experimental import _config as fx_config

from grokpipe.config.experiment import RunConfig
from grokpipe.models import MODELS, build_model
from grokpipe.tasks.base import TaskData, stack_padded
from grokpipe.train import checkpoint as ckpt
from grokpipe.train import precompiled
from grokpipe.train.gradients import allow_compiled_gradients, gradient_anchor, loss_gradients
from grokpipe.train.losses import LOSSES, correct
from grokpipe.train.optim import Hyper, apply_updates, init_state
from grokpipe.train.prefix import plan_prefix
from grokpipe.train.sampling import sample_positions, stream_keys
from grokpipe.train.schedules import resolve_layer_periods

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm", "med")


@dataclass
class Member:
    """One run as the engine sees it: its config, its dataset and its split."""

    run_id: str
    config: RunConfig
    data: TaskData
    train_idx: np.ndarray
    val_idx: np.ndarray
    init_params: dict[str, torch.Tensor] | None = None  # fine-tuning starts from these

    def identity(self) -> tuple:
        """What a checkpoint of this member must match: run, config and starting weights."""
        init = ""
        if self.init_params is not None:
            blob = b"".join(self.init_params[k].numpy().tobytes() for k in sorted(self.init_params))
            init = hashlib.sha1(blob).hexdigest()[:12]
        return (self.run_id, self.config.fingerprint(), init)


# On a GPU a small ensemble's step is bound by its kernel count, not its work, and the shared-
# prefix forward has ~30 more kernels than the plain one. H100, x/y mod 97, bf16 (thirteenth
# session, BENCHMARKS.md), steps/s plain vs shared: 3 718 vs 2 617 at 1 member, 2 105 vs 1 875
# at 6, 1 523 vs 1 519 at 9; 1 253 vs 1 305 at 12, 1 000 vs 1 109 at 16, 345 vs 421 at 51.
CUDA_PREFIX_MIN_MEMBERS = 10


@dataclass(frozen=True)
class EngineOptions:
    device: str = "cpu"
    compile: bool = False
    # inductor generates the kernels; the tests trace with "aot_eager" to check on a CPU, in
    # seconds, that the step compiles as one graph without recompiling
    compile_backend: str = "inductor"
    cuda_graph: bool = False
    eval_chunk_rows: int = 1024  # dataset rows per evaluation forward (memory only)
    progress: bool = True
    progress_position: int = 0
    stop_check_every: int = 8  # evaluations between host checks for "every member stopped"
    share_prefixes: bool = True  # compute shared sequence prefixes once (same function)
    # ...in ensembles of at least this many runs; None: `CUDA_PREFIX_MIN_MEMBERS` on a GPU,
    # every ensemble elsewhere
    prefix_min_members: int | None = None
    dynamic_sizes: bool = True  # compile ensemble and task sizes as dynamic (cache reuse)
    # load the compiled step saved by an earlier process instead of tracing it (`precompiled`)
    precompiled: bool = True
    # inductor's horizontal fusion (CUDA): independent small kernels of the step merged into
    # one launch. Measured on an H100 (eleventh session, x/y mod 97, bf16): +21 % steps/s at
    # 6 members, +12 % at 51 and 189. Never for an ensemble of one run (`combo_kernels_on`):
    # on torch 2.11 that one compiled a combined kernel that failed with an unspecified launch
    # failure (eighth session, p 31, d 64, its sizes of 1 specialised)
    combo_kernels: bool = False
    # fixed summation orders: gathers whose backward is a one-hot product, not atomic adds
    # (`EnsembleModel.take`), and, where the step compiles, no kernel configured by timing in
    # a process that loads a saved step (`_configure_compiler`). Reduction kernels are still
    # configured by timing once, where the step is compiled, and the choice is kept in the
    # compile cache: a fresh compile may sum in other orders (docs/REPRODUCIBILITY.md)
    deterministic: bool = False
    # inductor's deterministic mode passed to torch.compile itself, so that it holds for
    # every graph (a process-wide setting does not: see `_configure_compiler`): reduction
    # configurations by heuristic, never timed, and a fresh compile repeats the last one's
    # bits (two fresh compiles and two H100s agreed, twenty-third session). Opt-in
    # (`engine.deterministic: strict`): the transformer's pipeline training took 25-50 %
    # longer under it on an H100, all of it from the heuristic reduction configurations (a
    # 9-run step lost 35 % with only those; twenty-fourth session)
    inductor_deterministic: bool = False


def options_for_ensemble(opts: EngineOptions, members: int) -> EngineOptions:
    """`opts` with the forward an ensemble of `members` runs takes (shared prefixes or not)
    settled. An ensemble built on a part of those runs with these options compiles the same
    step: the precompile stage's sample it reads step keys from, a job resumed with its
    unfinished runs."""
    least = opts.prefix_min_members
    if least is None:
        least = CUDA_PREFIX_MIN_MEMBERS if torch.device(opts.device).type == "cuda" else 1
    share = opts.share_prefixes and members >= least
    return replace(opts, share_prefixes=share, prefix_min_members=1)


def _quiet_compile_advice() -> None:
    """Silence two pieces of inductor advice that every compiled GPU step prints, several
    lines each, once per process (a pipeline log held dozens of them): both describe choices
    made on purpose. TF32 stays off because the float32 products (the logits, the whole step
    under `precision: fp32`) are meant to be float32; and the online softmax is skipped because
    inductor splits a reduction, which it should: with `split_reductions` off the large
    ensembles' step was 11-12 % slower (BENCHMARKS.md, twelfth session)."""
    warnings.filterwarnings("ignore", "TensorFloat32 tensor cores", UserWarning)
    warnings.filterwarnings("ignore", "\\s*Online softmax is disabled", UserWarning)


@dataclass
class MemberResult:
    run_id: str
    steps: np.ndarray  # evaluated steps
    metrics: dict[str, np.ndarray]  # METRICS -> values at those steps
    final_params: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Timing:
    setup_s: float = 0.0
    compile_s: float = 0.0
    train_s: float = 0.0
    steps: int = 0
    model_steps: int = 0
    # of train_s, the seconds training stood still for checkpoints: the snapshot, and the
    # previous write if it is still going (not the steps queued before it: see `run`)
    checkpoint_s: float = 0.0
    # per compiled function: "traced" here, or loaded from "disk" / "memory" (`precompiled`)
    compiled_from: dict[str, str] = field(default_factory=dict)


def _shared_settings(cfg: RunConfig) -> dict:
    """The settings every member of an ensemble shares (what may differ per member removed)."""
    d = cfg.as_dict()
    d.pop("seed")
    d.pop("data")
    d["model"].pop("init_scale", None)
    for k in ("lr", "weight_decay", "early_stop", "layers", "batch_size", "init_from", "loss_on"):
        d["train"].pop(k)
    d["batch_full"] = cfg.train.batch_size == "full"
    return d


def padded_sizes(cfg: RunConfig) -> frozenset[str]:
    """Task sizes (vocabulary, classes) in which runs may differ and still share an ensemble:
    the model pads them to the largest member's, and masks each member's extra classes out of
    its logits. Only under cross-entropy, which masked logits leave exact; the other losses
    average over the classes."""
    if cfg.train.loss != "cross_entropy":
        return frozenset()
    sizes = MODELS[cfg.model_name].cls.TASK_SIZES
    return frozenset(key for dims in sizes.values() for key in dims.values())


def group_key(cfg: RunConfig, data: TaskData, pad_task_sizes: bool = True) -> str:
    """Runs with equal keys can be members of one ensemble."""
    d = _shared_settings(cfg)
    padded = padded_sizes(cfg) if pad_task_sizes else frozenset()
    d["shape"] = repr(data.shape_signature(padded))
    return repr(sorted(d.items()))


# Setting up an ensemble (allocating it on the device, compiling, capturing its CUDA graphs)
# happens for one ensemble at a time in a process: dynamo and inductor are not thread-safe, and
# `torch.cuda.graph` captures on one shared side stream. Training, the long part, runs outside
# it, so ensembles set up in turn train side by side (`runner`, `jobs_per_device`).
setup_lock = threading.RLock()

# what the engine compiles for an ensemble: one optimiser step, and the evaluation of one chunk
# of dataset rows; each is saved and loaded on its own (`precompiled`)
COMPILED_FUNCTIONS = ("train_step", "eval_chunk")


class JobAborted(RuntimeError):
    """Raised in a training loop that stops because a job beside it failed."""


# The key of the step and evaluation graphs dynamo holds in this process (see `prepare`).
_compiled_key: str | None = None


def _reset_dynamo_unless_reusable(key: str | None) -> None:
    """Keep dynamo's compiled graphs when the next ensemble can reuse them, drop them otherwise.

    The step is compiled with dynamic sizes, so a later ensemble of the same model, settings
    and static sizes (a shrunk ensemble, another job of the experiment) passes the guards of the
    graphs already traced and costs no compile at all. Another model or setting would add
    entries until dynamo's per-function limit, past which it would run eagerly; dropping them
    first keeps one set of graphs alive, and a limit hit is made an error, never a silent
    eager fallback. A key of None: nothing to reuse, now or later."""
    global _compiled_key
    if key is None or key != _compiled_key:
        torch._dynamo.reset()
        _compiled_key = key
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def _med_pairs(member_ranges, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per member [E, K]: the mean embedding difference's token pairs (t, t+1) within each
    operand's token range [lo, hi), with weights that average over each range and then over
    the ranges; padding pairs weigh 0.

    Tensors rather than constants, so that one compiled evaluation serves every task, and per
    member, since members of one ensemble may differ in their operand ranges (x/y beside x+y). A
    task without operand ranges (S5) gets one pair of weight NaN, so its MED is NaN as it
    should be."""
    pairs = []
    for ranges in member_ranges:
        lo, hi, weight = [0], [0], [math.nan]
        if ranges and all(b - a >= 2 for a, b in ranges):
            lo, hi, weight = [], [], []
            for a, b in ranges:
                lo += range(a, b - 1)
                hi += range(a + 1, b)
                weight += [1.0 / ((b - a - 1) * len(ranges))] * (b - a - 1)
        pairs.append((lo, hi, weight))
    K = max(len(lo) for lo, _, _ in pairs)
    pad = [
        (lo + [0] * (K - len(lo)), hi + [0] * (K - len(hi)), w + [0.0] * (K - len(w)))
        for lo, hi, w in pairs
    ]
    return tuple(torch.tensor([p[i] for p in pad], device=device) for i in range(3))


class EnsembleTrainer:
    """Set up on the device, then `run()`; results via `results()`."""

    def __init__(
        self,
        members: list[Member],
        opts: EngineOptions,
        label: str = "ensemble",
        task_sizes: dict[str, int] | None = None,
    ):
        """`task_sizes` (vocabulary, classes) to pad the model to instead of the members'
        largest: a smaller ensemble made from this one (`subset`, a resume) keeps its sizes,
        and with them its compiled step and its sums' order."""
        if not members:
            raise ValueError("an ensemble needs at least one member")
        keys = {group_key(m.config, m.data) for m in members}
        if len(keys) != 1:
            raise ValueError("members of one ensemble must share shapes and shared settings")
        t0 = time.perf_counter()
        self.members = members
        self.opts = opts
        self.label = label
        dev = torch.device(opts.device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = dev
        cfg = members[0].config
        self.cfg = cfg
        tc = cfg.train
        self.E = E = len(members)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            # the setting inductor reads too (allow_tf32 alone leaves it warning that TF32 is off)
            torch.set_float32_matmul_precision("high" if tc.precision == "tf32" else "highest")
            torch.backends.cudnn.allow_tf32 = tc.precision == "tf32"
        # Loss on the answer or on every next token is per member: an ensemble with any
        # sequence-loss member runs the full forward, and answer-loss members weigh only its
        # last position (the same loss as the last-position forward computes).
        self.seq = any(m.config.train.loss_on == "sequence" for m in members)

        # --- data, stacked per member ---------------------------------------------------
        # Datasets may differ in their number of rows: each is padded to the largest with
        # copies of its first row, which is in neither split (masks 0), never sampled (it is not
        # in the training list) and adds no new prefix.
        inputs = stack_padded([m.data.inputs for m in members])  # [E, N, T], on the host
        N = inputs.shape[1]
        self.targets = torch.as_tensor(stack_padded([m.data.targets for m in members])).to(dev)
        self.seq_targets = None
        if self.seq:
            seq_targets = stack_padded([m.data.seq_targets for m in members])
            self.seq_targets = torch.as_tensor(seq_targets).to(dev)
            T_out = self.seq_targets.shape[-1]
            weights = np.zeros((E, T_out), np.float32)
            for i, m in enumerate(members):
                if m.config.train.loss_on == "sequence":
                    weights[i] = 1.0 / T_out
                else:
                    weights[i, -1] = 1.0
            self.position_weights = torch.as_tensor(weights, device=dev)
        train_mask = np.zeros((E, N), np.float32)
        val_mask = np.zeros((E, N), np.float32)
        train_list = np.zeros((E, N), np.int64)
        for i, m in enumerate(members):
            if len(m.train_idx) == 0 or len(m.val_idx) == 0:
                raise ValueError(f"run {m.run_id}: empty training or validation set")
            train_mask[i, m.train_idx] = 1
            val_mask[i, m.val_idx] = 1
            train_list[i, : len(m.train_idx)] = m.train_idx
        self.train_mask = torch.as_tensor(train_mask, device=dev)
        self.val_mask = torch.as_tensor(val_mask, device=dev)
        self.train_list = torch.as_tensor(train_list, device=dev)
        n_train = np.array([len(m.train_idx) for m in members], np.int64)
        self.n_train = torch.as_tensor(n_train, device=dev)
        self.n_val = torch.as_tensor([float(len(m.val_idx)) for m in members], device=dev)
        self.member_idx = torch.arange(E, device=dev).reshape(E, 1)
        self.full_batch = tc.batch_size == "full"
        if self.full_batch:
            # every member's whole training list each step: the rows trained on are the
            # training set, not the table (seed 004 trains on 30 %, so a masked pass over the
            # table would compute 3x the rows)
            sizes = n_train.tolist()
        else:
            # each member's own batch size (members may differ in it, `_shared_settings`)
            sizes = [
                min(m.config.train.batch_size, max(1, n // 2))
                for m, n in zip(members, n_train.tolist())
            ]
        # each member's rows weigh 1/size; the slots past its size (the widest's) weigh 0
        self.batch = max(sizes)
        w = np.zeros((E, self.batch), np.float32)
        for i, b in enumerate(sizes):
            w[i, :b] = 1.0 / b
        self.batch_weights = torch.as_tensor(w, device=dev)
        seeds = torch.as_tensor([m.config.seed for m in members], dtype=torch.int64, device=dev)
        self.stream_keys = stream_keys(seeds)

        # --- model, one generator per member ---------------------------------------------
        # task sizes the members may differ in (`padded_sizes`): the model takes the largest
        info = dict(members[0].data.info)
        self.task_sizes = {
            key: max([m.data.info[key] for m in members] + [(task_sizes or {}).get(key, 0)])
            for key in padded_sizes(cfg)
            if key in info
        }
        info.update(self.task_sizes)
        self.model = build_model(cfg.model_name, cfg.model, info, E).to(dev)
        # bf16: matrix products in bfloat16, the rest in float32 (`EnsembleModel.mm`)
        self.model.matmul_dtype = torch.bfloat16 if tc.precision == "bf16" else None
        self.model.deterministic_gathers = opts.deterministic
        for i, m in enumerate(members):
            gen = torch.Generator().manual_seed(m.config.seed)
            self.model.init_member(i, gen, m.config.model.init_scale, m.data.info)
            if m.init_params is not None:
                with torch.no_grad():
                    for name, p in self.model.named_parameters():
                        own = p[i][self.model.member_slices(name, m.data.info)]
                        src = m.init_params.get(name)
                        if src is None or tuple(src.shape) != tuple(own.shape):
                            got = None if src is None else tuple(src.shape)
                            raise ValueError(
                                f"run {m.run_id}: starting weights do not fit the "
                                f"model ({name}: {got} vs {tuple(own.shape)})"
                            )
                        own.copy_(src.to(dev))
        self.params = {n: p.detach() for n, p in self.model.named_parameters()}
        # [E, classes]: False where a member's task has fewer classes than the model (padded)
        self.class_mask = None
        n_classes = [m.data.info.get("n_classes") for m in members]
        if "n_classes" in self.task_sizes and min(n_classes) < self.task_sizes["n_classes"]:
            classes = torch.arange(self.task_sizes["n_classes"], device=dev)
            self.class_mask = classes < torch.tensor(n_classes, device=dev).unsqueeze(1)

        # --- shared prefixes: the first P tokens' states computed once per distinct prefix -
        plan = None
        sharing = options_for_ensemble(opts, E).share_prefixes
        if sharing and not self.seq and getattr(self.model, "shares_prefixes", False):
            plan = plan_prefix(inputs, self.batch)
        self.prefix_len = 0 if plan is None else plan.length
        self.prefix_table = None if plan is None else torch.as_tensor(plan.table).to(dev)
        self.row_prefix = None if plan is None else torch.as_tensor(plan.row_prefix).to(dev)
        # what the model reads per row: the whole sequence, or the part after the prefix
        self.model_inputs = torch.as_tensor(inputs[:, :, self.prefix_len :]).contiguous().to(dev)
        for p in self.model.parameters():
            p.requires_grad_(False)

        # --- hyperparameters and schedules, per member ------------------------------------
        self.lr = torch.tensor([m.config.train.lr for m in members], device=dev)
        self.wd = torch.tensor([m.config.train.weight_decay for m in members], device=dev)
        thresholds = [m.config.train.early_stop for m in members]
        self.early_stop = any(t is not None for t in thresholds)
        self.compact_due = False  # set at the checkpoint of the step where `run` shrinks
        self.stop_at = torch.tensor(
            [t if t is not None else math.inf for t in thresholds], device=dev
        )
        self.active = torch.ones(E, device=dev)
        # [E, n_params]: each member's update period per parameter (0: frozen), in the order
        # of `params`; with one schedule for every parameter the optimiser takes [E] gates
        periods = [resolve_layer_periods(self.model, m.config.train.layers) for m in members]
        table = [[p[n] for n in self.params] for p in periods]
        self.periods = torch.tensor(table, dtype=torch.int64, device=dev)
        self.uniform_schedule = all(len(set(row)) == 1 for row in table)
        gf = tc.grokfast
        self.hyper = Hyper(
            tc.betas,
            tc.eps,
            tc.momentum,
            tc.warmup_steps,
            gf.alpha if gf else None,
            gf.lamb if gf else 0.0,
        )
        self.state = init_state(self.params, tc.optimizer, tc.momentum, gf is not None)
        self.step = torch.zeros((), dtype=torch.int64, device=dev)

        # --- evaluation buffers ------------------------------------------------------------
        self.eval_steps = cfg.eval.steps(tc.steps)
        self.history = torch.full((len(self.eval_steps), E, len(METRICS)), math.nan, device=dev)
        self.eval_slot = torch.zeros((), dtype=torch.int64, device=dev)
        # Evaluation runs over the whole dataset in fixed-size chunks of rows (padding rows have
        # zero weight), one compiled chunk function called per chunk: the graph is the same for
        # every ensemble size and every dataset size.
        rows = max(1, min(opts.eval_chunk_rows, N))
        n_chunks = -(-N // rows)
        pad = torch.zeros(n_chunks * rows, dtype=torch.int64, device=dev)
        pad[:N] = torch.arange(N, device=dev)
        self.eval_rows = pad.reshape(n_chunks, rows)
        self.eval_chunks = [torch.tensor([c], device=dev) for c in range(n_chunks)]
        real = torch.zeros(n_chunks * rows, device=dev)
        real[:N] = 1.0
        self.eval_train_w = (self.train_mask[:, pad] * real).reshape(E, n_chunks, rows)
        self.eval_val_w = (self.val_mask[:, pad] * real).reshape(E, n_chunks, rows)
        self.eval_sums = torch.zeros(4, E, device=dev)
        self.med_pairs = _med_pairs([self.model.med_ranges(m.data.info) for m in members], dev)
        self._anchor = gradient_anchor(dev)
        self.step_host = 0
        self.evals_done = 0
        self.timing = Timing(setup_s=time.perf_counter() - t0)
        self._train_fn = self._train_step
        self._eval_fn = self._evaluate
        self._prepared = False
        self._host_buffers: dict[str, torch.Tensor] | None = None  # see `state_dict`

    # ---------------------------------------------------------------- the step ----------
    @property
    def combo_kernels_on(self) -> bool:
        """Whether this ensemble's step is compiled with combo kernels: as asked, except for
        an ensemble of one run, whose sizes of 1 are specialised into a graph of its own
        (the size at which a combined kernel once failed to launch; see `EngineOptions`)."""
        return self.opts.combo_kernels and self.E > 1

    def _compile_key(self) -> str:
        """What the compiled graphs bake in as constants: shared settings and static sizes."""
        static = {
            "model": type(self.model).__name__,
            "batch": self.batch,
            "prefix_len": self.prefix_len,
            "seq_len": self.model_inputs.shape[-1],
            "sequence_loss": self.seq,
            "uniform_schedule": self.uniform_schedule,
            "dynamic_sizes": self.opts.dynamic_sizes,
            "combo_kernels": self.combo_kernels_on,
            "deterministic": self.opts.deterministic,
            "inductor_deterministic": self.opts.inductor_deterministic,
            "padded_classes": self.class_mask is not None,
            "device": str(self.device),
        }
        shared = _shared_settings(self.cfg)
        # the step budget, the checkpoint period and the evaluation schedule are not in the
        # graphs (the history's length is a dynamic size): experiments that differ only there
        # share one compiled step
        shared["train"] = {
            k: v for k, v in shared["train"].items() if k not in ("steps", "checkpoint_every")
        }
        shared.pop("eval")
        return repr((sorted(shared.items()), sorted(static.items())))

    def _model_kwargs(self, rows_prefix):
        if self.prefix_table is None:
            return {"last_only": not self.seq}
        return {"last_only": True, "prefix": (self.prefix_table, rows_prefix)}

    def _masked(self, out: torch.Tensor) -> torch.Tensor:
        """Logits [E, B, (T,) C] in float32, with each member's padded classes at -inf: what
        its softmax, loss and argmax would be over its own classes alone."""
        out = out.float()
        if self.class_mask is None:
            return out
        mask = self.class_mask.reshape(out.shape[0], *([1] * (out.dim() - 2)), out.shape[-1])
        return out.masked_fill(~mask, float("-inf"))

    def _loss(self, params, x, y, w, rows_prefix):
        out = functional_call(self.model, params, (x,), self._model_kwargs(rows_prefix))
        per = LOSSES[self.cfg.train.loss](self._masked(out), y)
        if self.seq:
            per = (per * self.position_weights.unsqueeze(1)).sum(-1)
        return (per * w).sum()

    def _batch(self):
        """(inputs, targets, weights, each row's prefix or None) of this step's batch."""
        targets = self.seq_targets if self.seq else self.targets
        if self.full_batch:
            rows = self.train_list[:, : self.batch]
        else:
            pos = sample_positions(self.stream_keys, self.step, self.batch, self.n_train)
            rows = self.train_list.gather(1, pos)
        x = self.model_inputs[self.member_idx, rows]
        prefix = None if self.row_prefix is None else self.row_prefix.gather(1, rows)
        return x, targets[self.member_idx, rows], self.batch_weights, prefix

    def _train_step(self):
        grads = loss_gradients(self._loss, self.params, self._anchor, *self._batch())
        t = self.step + 1
        due = (torch.remainder(t, self.periods.clamp(min=1)) == 0) & (self.periods > 0)
        gates = due.to(self.active.dtype) * self.active.unsqueeze(1)
        if self.uniform_schedule:
            gates = gates[:, 0]
        apply_updates(
            self.cfg.train.optimizer,
            self.params,
            grads,
            self.state,
            self.lr,
            self.wd,
            gates,
            t,
            self.hyper,
        )
        self.step.add_(1)

    # ---------------------------------------------------------------- evaluation -------
    def _eval_chunk(self, c: torch.Tensor) -> None:
        """Add one chunk's train/validation loss and accuracy sums to `eval_sums`."""
        # `no_grad` inside, not as a decorator: a decorated method loses its `self` parameter,
        # and a saved compiled function takes the ensemble as its first argument
        with torch.no_grad():
            self._eval_chunk_sums(c)

    def _eval_chunk_sums(self, c: torch.Tensor) -> None:
        rows = self.eval_rows.index_select(0, c).squeeze(0)
        x = self.model_inputs[:, rows]
        prefix = None if self.row_prefix is None else self.row_prefix[:, rows]
        kwargs = {**self._model_kwargs(prefix), "last_only": True}
        out = self._masked(functional_call(self.model, self.params, (x,), kwargs))
        y = self.targets[:, rows]
        loss, hit = LOSSES[self.cfg.train.loss](out, y), correct(out, y)
        tw = self.eval_train_w.index_select(1, c).squeeze(1)
        vw = self.eval_val_w.index_select(1, c).squeeze(1)
        self.eval_sums += torch.stack(
            [(loss * tw).sum(1), (hit * tw).sum(1), (loss * vw).sum(1), (hit * vw).sum(1)]
        )

    @torch.no_grad()
    def _eval_finish(self) -> None:
        """Turn the sums into this evaluation's history row; stop members that reached their
        early-stopping threshold (a no-op threshold of inf for the others)."""
        sums = self.eval_sums
        n_tr = self.n_train.float()
        norm = torch.zeros_like(self.lr)
        for p in self.params.values():
            norm += p.float().pow(2).flatten(1).sum(1)
        row = torch.stack(
            [
                sums[0] / n_tr,
                sums[1] / n_tr,
                sums[2] / self.n_val,
                sums[3] / self.n_val,
                norm.sqrt(),
                self._med(),
            ],
            dim=1,
        )
        self.history.index_copy_(0, self.eval_slot.reshape(1), row.unsqueeze(0))
        self.eval_slot.add_(1)
        self.active.mul_((row[:, 3] < self.stop_at).to(self.active.dtype))
        sums.zero_()

    def _evaluate(self, chunk_fn=None, finish_fn=None) -> None:
        chunk_fn = chunk_fn or self._eval_chunk
        for c in self.eval_chunks:
            chunk_fn(c)
        (finish_fn or self._eval_finish)()

    def _med(self):
        """Mean embedding difference (seed 004): mean ‖E[t+1] − E[t]‖ over each operand's
        tokens, averaged over the two operands; NaN when the task or model has none."""
        emb = self.model.embedding_for_med(self.params)
        if emb is None:
            return torch.full_like(self.lr, math.nan)
        lo, hi, weight = self.med_pairs
        emb = emb.float()
        diffs = emb[self.member_idx, hi] - emb[self.member_idx, lo]  # [E, K, d]
        return (diffs.norm(dim=-1) * weight).sum(1)

    # ---------------------------------------------------------------- capture ----------
    def _mutable_named(self) -> dict[str, tuple[torch.Tensor, int | None]]:
        """Every tensor the step or the evaluation writes, with its member axis."""
        out = {f"param.{k}": (t, 0) for k, t in self.params.items()}
        out.update({f"opt.{k}": (t, 0) for k, t in self.state.tensors().items()})
        out["step"] = (self.step, None)
        out["history"] = (self.history, 1)
        out["eval_slot"] = (self.eval_slot, None)
        out["active"] = (self.active, 0)
        out["eval_sums"] = (self.eval_sums, 1)
        return out

    def _mutable(self) -> list[torch.Tensor]:
        return [t for t, _ in self._mutable_named().values()]

    def _dynamic_dims(self) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
        """Every tensor the compiled functions read or write, with the dims whose sizes vary
        between ensembles of one model: members, dataset rows, vocabulary and classes,
        distinct prefixes, evaluation chunks and slots. Compiled as dynamic sizes, they let
        every ensemble of a model share one compiled step through inductor's cache."""
        task_dims = self.model.task_sized_dims()
        out = []
        # what the step writes, with its member axis (`_mutable_named`), plus the task-sized
        # dims of parameters and of their optimiser slots, and the history's slot axis
        for key, (t, axis) in self._mutable_named().items():
            if axis is None:
                continue
            param = key.split(".")[1] if key.startswith(("param.", "opt.")) else None
            extra = task_dims.get(param, ()) if t.dim() > 1 else ()
            extra += (0,) if key == "history" else ()
            out.append((t, (axis, *extra)))
        rows_axis = [self.model_inputs, self.targets, self.train_mask, self.val_mask]
        rows_axis += [self.train_list] + ([self.seq_targets] if self.seq else [])
        rows_axis += [] if self.row_prefix is None else [self.row_prefix]
        out += [(t, (0, 1)) for t in rows_axis]
        out += [(self.eval_rows, (0, 1)), (self.eval_train_w, (0, 1, 2))]
        out += [(self.eval_val_w, (0, 1, 2))]
        if self.class_mask is not None:
            out.append((self.class_mask, (0, 1)))
        # the model's own parameters too: functional_call swaps them, so dynamo traces them
        out += [(p, (0, *task_dims.get(n, ()))) for n, p in self.model.named_parameters()]
        if self.prefix_table is not None:
            out.append((self.prefix_table, (0, 1)))
        out += [(t, (0, 1)) for t in self.med_pairs]
        per_member = [self.n_train, self.n_val, self.member_idx, self.batch_weights]
        per_member += [self.stream_keys, self.lr, self.wd, self.stop_at]
        per_member += [self.periods]
        per_member += [self.position_weights] if self.seq else []
        out += [(t, (0,)) for t in per_member]
        return out

    def _mark_dynamic(self) -> None:
        """Sizes that vary between ensembles of one model are compiled as dynamic (see
        `_dynamic_dims`), so one compiled step serves every ensemble of the model."""
        if self.opts.dynamic_sizes:
            for t, dims in self._dynamic_dims():
                for dim in dims:
                    torch._dynamo.maybe_mark_dynamic(t, dim)

    def _compiled_methods(self) -> dict[str, tuple]:
        """The functions compiled for this ensemble (`COMPILED_FUNCTIONS`), each with the
        arguments it is traced and first run with."""
        return {
            "train_step": (self._train_step, ()),
            "eval_chunk": (self._eval_chunk, (self.eval_chunks[0],)),
        }

    def _precompiled_function(self, name: str):
        """One compiled function, loaded from a previous process's compile when one fits this
        ensemble (`precompiled`), else traced, compiled and saved."""
        method, args = self._compiled_methods()[name]
        key = self.saved_step_keys()[name]
        backend = self.opts.compile_backend
        fn, source = precompiled.compiled_method(
            method, args, key, backend, self._mark_dynamic, self._compile_options()
        )
        self.timing.compiled_from[name] = source
        return fn

    def compile_one(self, name: str) -> None:
        """For the precompile stage: compile (or load) one of `COMPILED_FUNCTIONS` and run it
        once, which tunes its kernels at this ensemble's sizes (inductor keeps the choice on
        disk for the processes that load the function). The step's two functions can then
        compile in two processes side by side: for the fraction sweep's 189 runs, 85 s and
        25 s one after the other in one (fifteenth session, H100).

        The ensemble is left one step or one evaluation chunk on: a throw-away."""
        if not (self.opts.compile and precompiled.available()):
            raise ValueError("compile_one needs engine.compile and a torch that saves steps")
        t0 = time.perf_counter()
        with setup_lock:
            self._configure_compiler()
            fn = self._precompiled_function(name)
            fn(*self._compiled_methods()[name][1])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        self.timing.compile_s += time.perf_counter() - t0

    def saved_step_keys(self) -> dict[str, str]:
        """The `precompiled` entry key of each compiled function: ensembles with equal keys
        can share one saved step (if its guards hold for both)."""
        key = self._compile_key()
        return {
            name: precompiled.entry_key(name, key, self.opts.compile_backend, self.device)
            for name in COMPILED_FUNCTIONS
        }

    def _traced_functions(self):
        """The step and the evaluation chunk compiled by dynamo in this process (the path
        when saved functions are off or this torch cannot save them)."""
        # In this process a later ensemble with the same settings (a shrunk one, the next job)
        # reuses the traced graphs outright, thanks to dynamic sizes; graphs of static sizes
        # fit one ensemble only: reusing them would only pile up recompiles, so a static-size
        # compile always starts afresh.
        _reset_dynamo_unless_reusable(self._compile_key() if self.opts.dynamic_sizes else None)
        self._mark_dynamic()
        backend = self.opts.compile_backend
        # fullgraph: a graph break would run eagerly and host-synchronise, silently
        options = self._compile_options() or None
        train_fn = torch.compile(
            self._train_step, backend=backend, dynamic=False, fullgraph=True, options=options
        )
        chunk_fn = torch.compile(
            self._eval_chunk, backend=backend, dynamic=False, fullgraph=True, options=options
        )
        self.timing.compiled_from = dict.fromkeys(COMPILED_FUNCTIONS, "traced")
        return train_fn, chunk_fn

    def _compile_options(self) -> dict:
        """Inductor settings passed to torch.compile with the function, which hold for each of
        its graphs whatever the process-wide settings are by then."""
        if self.opts.inductor_deterministic and self.opts.compile_backend == "inductor":
            return {"deterministic": True}
        return {}

    def _configure_compiler(self) -> None:
        """The process-wide compiler settings this ensemble's functions are traced under."""
        _quiet_compile_advice()
        allow_compiled_gradients()
        import torch._inductor.config as inductor_config

        # Deterministic gathers fix the step's own summation order; what is left is the order
        # inside inductor's reductions. By default inductor picks a reduction kernel's block
        # size and warps by timing candidates on first launch, and those choices sum in
        # different orders: in the eighteenth session three trainings of the same 81 sweep
        # runs on one H100 gave three different histories (differing from the first
        # evaluation on, by an ulp, then diverging chaotically). The choice is made once, at
        # the precompile stage's first run, and kept in the compile cache (data/compile_cache),
        # so the processes that load the step time nothing and repeat bit for bit; a fresh
        # compile may choose other configurations. Inductor's deterministic mode (heuristic
        # configurations, never timed) is not set here: a process-wide setting does not reach
        # the saved steps (once dynamo has traced a frame it restores
        # `torch.use_deterministic_algorithms`, which writes the mode back to off, and a saved
        # step's graph compiles after its trace: twenty-second session,
        # `scripts/inductor_mode_probe.py`). It is held as a compile option under "strict"
        # (`inductor_deterministic`, `_compile_options`): fresh compiles then repeat too, but
        # the pipeline's transformer training took 25-50 % longer (twenty-third session).
        # The processes that load a saved step would still time kernels at their first launch
        # through two holes, found and closed in the twentieth session (docs/REPRODUCIBILITY.md):
        deterministic = self.opts.deterministic
        # - before torch 2.13 inductor leaves "dynamic RBLOCK scaling" on: at a reduction
        #   kernel's first launch it adds a copy with half the block along the reduction (for
        #   occupancy) and times the two. Five looped LayerNorm/softmax kernels of the fraction
        #   sweep's step then summed 128 columns in one block in some processes and in two
        #   blocks of 64 in others. torch 2.13 gates the scaling on the deterministic mode and
        #   has no such setting, so there this hole stays open unless the mode is held
        #   ("strict"; not run on a GPU: the GPU image has torch 2.11);
        # - a combo kernel that holds a persistent reduction beside pointwise parts is tuned as
        #   a pointwise kernel, by timing its warps, which order the reduction.
        if hasattr(inductor_config, "dynamic_scale_rblock"):
            inductor_config.dynamic_scale_rblock = not deterministic
        if self.device.type == "cuda":
            inductor_config.combo_kernels = self.combo_kernels_on
            inductor_config.combo_kernels_pointwise_only = deterministic
        if self.opts.dynamic_sizes:
            # no "duck" sizes: equal sizes that happen to coincide (say members and
            # classes) must not become one symbol, or the graph only fits that coincidence
            fx_config.use_duck_shape = False
            # the model's own parameters are traced too (functional_call swaps them):
            # their member and task dims vary like the other tensors'
            torch._dynamo.config.force_parameter_static_shapes = False

    def prepare(self) -> None:
        """Compile and capture (on CUDA); time spent here is reported as compile time."""
        with setup_lock:
            self._prepare()

    def _prepare(self) -> None:
        if self._prepared:
            return
        t0 = time.perf_counter()
        train_fn, chunk_fn, finish_fn = self._train_step, self._eval_chunk, self._eval_finish
        if self.opts.compile:
            self._configure_compiler()
            if self.opts.precompiled and precompiled.available():
                train_fn, chunk_fn = map(self._precompiled_function, COMPILED_FUNCTIONS)
            else:
                train_fn, chunk_fn = self._traced_functions()
            # `finish_fn` stays eager: a few dozen small ops once per evaluation, replayed from
            # the CUDA graph on a GPU; compiling it cost a third trace (~1-2.6 s a stage)

        def eval_fn():
            self._evaluate(chunk_fn, finish_fn)

        # a saved step's kernels are fetched at its first calls, below (see `precompiled`)
        loaded = (
            bool(self.timing.compiled_from) and "traced" not in self.timing.compiled_from.values()
        )
        with precompiled.kernels_in_process() if loaded else contextlib.nullcontext():
            self._warm_up_and_capture(train_fn, eval_fn)
        self._prepared = True
        self.timing.compile_s = time.perf_counter() - t0

    def _warm_up_and_capture(self, train_fn, eval_fn) -> None:
        if self.device.type == "cuda" and self.opts.cuda_graph:
            saved = [t.clone() for t in self._mutable()]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    train_fn()
                    eval_fn()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            for t, s in zip(self._mutable(), saved):
                t.copy_(s)
            pool = torch.cuda.graph_pool_handle()
            g_train, g_eval = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            # thread_local: other threads' ensembles keep training (and synchronising with
            # their own streams) while this one is captured
            with torch.cuda.graph(g_train, pool=pool, capture_error_mode="thread_local"):
                train_fn()
            with torch.cuda.graph(g_eval, pool=pool, capture_error_mode="thread_local"):
                eval_fn()
            torch.cuda.synchronize()
            self._train_fn, self._eval_fn = g_train.replay, g_eval.replay
        elif self.opts.compile:
            saved = [t.clone() for t in self._mutable()]
            train_fn()
            eval_fn()
            for t, s in zip(self._mutable(), saved):
                t.copy_(s)
            self._train_fn, self._eval_fn = train_fn, eval_fn

    # ---------------------------------------------------------------- checkpoints -------
    def fingerprint(self) -> str:
        return ckpt.fingerprint([m.identity() for m in self.members])

    def state_dict(self, reuse_host_buffers: bool = False) -> dict:
        """Everything a resume needs, on the host.

        With `reuse_host_buffers` the tensors are copied into page-locked buffers that this
        trainer keeps and overwrites at the next such call: a device-to-host copy into
        pageable memory took 0.72 s for the fraction sweep's 779 MiB ensemble on the H100,
        which the GPU spent idle at every checkpoint. The caller must be done with one
        snapshot before asking for the next (`checkpoint.BackgroundWriter` waits for that)."""
        named = self._mutable_named()
        if reuse_host_buffers and self.device.type == "cuda":
            if self._host_buffers is None:
                self._host_buffers = {
                    k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    for k, (t, _) in named.items()
                }
            for k, (t, _) in named.items():
                self._host_buffers[k].copy_(t.detach(), non_blocking=True)
            self._sync_stream()
            tensors = dict(self._host_buffers)
        else:
            # a copy even on the CPU, where `.cpu()` would alias what training goes on changing
            tensors = {k: t.detach().to("cpu", copy=True) for k, (t, _) in named.items()}
        return {
            "fingerprint": self.fingerprint(),
            "step": self.step_host,
            "evals_done": self.evals_done,
            "task_sizes": dict(self.task_sizes),  # a resume builds the same padded model
            # and the same forward: a compacted ensemble keeps its job's choice (`subset`)
            "shares_prefixes": self.prefix_len > 0,
            # taken where the ensemble is about to shrink: a resume shrinks it first
            "compact_due": self.compact_due,
            "tensors": tensors,
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd["fingerprint"] != self.fingerprint():
            raise ValueError("checkpoint belongs to other runs")
        for k, (t, _) in self._mutable_named().items():
            t.copy_(sd["tensors"][k].to(t.device))
        self.step_host = sd["step"]
        self.evals_done = sd["evals_done"]

    def subset(self, keep: list[int]) -> EnsembleTrainer:
        """A new ensemble of members `keep` that continues exactly where this one stands.

        Used to drop members that stopped early: their kernels would otherwise keep running
        (gated off) until the last member stops."""
        # the same forward as this ensemble's, shared prefixes or not, whatever its size: the
        # compiled step carries over
        opts = replace(self.opts, share_prefixes=self.prefix_len > 0, prefix_min_members=1)
        new = EnsembleTrainer(
            [self.members[i] for i in keep],
            opts,
            label=f"{self.label}->{len(keep)}",
            task_sizes=self.task_sizes,
        )
        idx = torch.tensor(keep, device=self.device)
        mine = self._mutable_named()
        with torch.no_grad():
            for k, (t, axis) in new._mutable_named().items():
                src = mine[k][0]
                t.copy_(src if axis is None else src.index_select(axis, idx))
        new.step_host, new.evals_done = self.step_host, self.evals_done
        return new

    def rebuild_compiles(self, members: int) -> bool:
        """Whether continuing in a smaller ensemble (`subset`) of `members` runs needs a
        compile of its own, rather than the compiled step this one holds (dynamic sizes): an
        ensemble of one run specialises its sizes of 1, and a step of static sizes fits one
        ensemble only. Read from the options alone, never from what this process happens to
        hold, so that the decision is the same at every rerun."""
        if not self.opts.compile:
            return False
        return not self.opts.dynamic_sizes or (members == 1 and self.E > 1)

    def active_members(self) -> list[int]:
        return torch.nonzero(self.active > 0).flatten().tolist()

    # ---------------------------------------------------------------- the loop ----------
    def run(self, on_checkpoint=None, should_compact=None, abort=None) -> str:
        """Train to the step budget, evaluating on the schedule. Returns "done" when the
        budget is spent or every member stopped early, "compact" when `should_compact(self)`
        asked to continue in a smaller ensemble (see `subset`). `on_checkpoint(self)` is
        called every `train.checkpoint_every` steps and at the end. When the event `abort`
        is set (a job training beside this one failed), stops at the next evaluation with
        `JobAborted`; its last checkpoint stays for a re-run to resume from."""
        every = self.cfg.train.checkpoint_every
        self.prepare()
        total = self.cfg.train.steps
        bar = None
        if self.opts.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=total,
                initial=self.step_host,
                desc=self.label,
                unit="step",
                position=self.opts.progress_position,
                leave=True,
                mininterval=2.0,
                dynamic_ncols=True,
            )
        last_ckpt = self.step_host
        t0 = time.perf_counter()
        steps_before = self.step_host
        train_fn, eval_fn = self._train_fn, self._eval_fn
        status = "done"
        while self.evals_done < len(self.eval_steps):
            target = self.eval_steps[self.evals_done]
            for _ in range(target - self.step_host):
                train_fn()
            if bar is not None:
                bar.update(target - self.step_host)
            self.step_host = target
            eval_fn()
            self.evals_done += 1
            if abort is not None and abort.is_set():
                if bar is not None:
                    bar.close()
                raise JobAborted(f"{self.label}: stopped at step {target}, another job failed")
            done = self.evals_done == len(self.eval_steps)
            # One host sync every few evaluations: stop once every member has stopped early,
            # or move on in a smaller ensemble once enough members have stopped.
            check_now = self.evals_done % self.opts.stop_check_every == 0 or done
            if self.early_stop and check_now and not done:
                self._account(t0, steps_before)
                t0, steps_before = time.perf_counter(), self.step_host
                if not self.active.any():
                    done = True
                elif should_compact is not None and should_compact(self):
                    status, done = "compact", True
            if on_checkpoint is not None and (done or self.step_host - last_ckpt >= every):
                # the snapshot waits for the queued steps anyway; accounting for them first
                # keeps that (training, not checkpointing) out of checkpoint_s, and puts the
                # training so far into the timing the checkpoint holds
                self._account(t0, steps_before)
                t_ckpt = time.perf_counter()
                self.compact_due = status == "compact"  # in the checkpoint (`state_dict`)
                on_checkpoint(self)
                self.timing.checkpoint_s += time.perf_counter() - t_ckpt
                t0, steps_before = time.perf_counter(), self.step_host
                last_ckpt = self.step_host
            if done:
                break
        self._account(t0, steps_before)
        if bar is not None:
            bar.close()
        return status

    def _sync_stream(self) -> None:
        if self.device.type == "cuda":
            # this thread's stream only: another ensemble may train beside it on the device
            torch.cuda.current_stream(self.device).synchronize()

    def _account(self, t0: float, steps_before: int) -> None:
        self._sync_stream()
        self.timing.train_s += time.perf_counter() - t0
        self.timing.steps += self.step_host - steps_before
        self.timing.model_steps += self.E * (self.step_host - steps_before)

    def results(self, keep_params: bool = False) -> list[MemberResult]:
        hist = self.history[: self.evals_done].cpu().numpy()
        steps = np.array(self.eval_steps[: self.evals_done])
        out = []
        for i, m in enumerate(self.members):
            n = len(steps)
            thr = m.config.train.early_stop
            if thr is not None:
                hit = np.flatnonzero(hist[:, i, 3] >= thr)
                if len(hit):
                    n = hit[0] + 1
            metrics = {name: hist[:n, i, j] for j, name in enumerate(METRICS)}
            params = {}
            if keep_params:  # each at the member's own task sizes
                params = {
                    k: v[i][self.model.member_slices(k, m.data.info)].detach().cpu().clone()
                    for k, v in self.params.items()
                }
            out.append(MemberResult(m.run_id, steps[:n], metrics, params))
        return out
