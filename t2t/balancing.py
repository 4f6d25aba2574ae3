"""Multi-task loss balancing: equal, uncertainty (Kendall et al. 2018) and DWA (Liu et al. 2019).

Every method weights the summed token losses of each task, so the loss stays a sum over tokens and decomposes
exactly over micro-batches and processes:

    equal        loss = sum_t S_t / G
    uncertainty  loss = sum_t (exp(-s_t) * S_t + s_t * N_t) / G     s_t = log sigma_t^2, learnt with the model
    dwa          loss = sum_t w_t * S_t / G                         w_t = T_count * softmax_t(r_t / temperature)

S_t is the summed token loss of task t, N_t its label tokens and G all label tokens of the optimizer step (all
processes). Uncertainty applies the homoscedastic-uncertainty weighting per token. DWA's r_t is the ratio of
the task's mean loss over the last two windows of `dwa_window_steps` steps; weights are 1 until two windows
have passed. The uncertainty parameters live in `ModelWithBalancing`, whose forward computes the balanced loss, so
DeepSpeed gathers, shards and trains them like the model's own.

The gradient methods (pcgrad, cagrad, mgda, gradnorm) and the loss-only ones (rlw, gls, famo) of t2t.gradients weight
the micro-batch's mean task losses L_t = S_t / N_t:

    loss = sum_t a_t * (n / T') * L_t / G        a from the method; T' tasks present, n their tokens

(a_t = 1 for every task gives each present task the same share of the micro-batch). A gradient method takes a
from the Gram matrix of the per-task gradients dL_t/dtheta on a parameter subset, computed in the forward with
`torch.autograd.grad` (which leaves `.grad` alone, so no DDP or ZeRO hook fires), then the ordinary backward
applies the weighted loss: the update is the method's exactly on the subset, and the same weighting of the task
losses on every other parameter.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from t2t.adapters import batch_routes, router_of
from t2t.errors import T2TError
from t2t.gradients import FAMO, GRADIENT_METHODS, LOSS_METHODS, GradNorm, cagrad, gls, mgda, pcgrad, rlw
from t2t.modeling import loss_sums
from t2t.rng import keyed_rng
from t2t.train_config import BalancingSpec

# (gram or None, mean task losses, indices of the present tasks) -> coefficients a on those tasks
Weigher = Callable[[np.ndarray | None, np.ndarray, np.ndarray], np.ndarray]


def gradient_parameters(model: nn.Module, patterns: list[str] | None,
                        exact: bool = False) -> list[tuple[str, nn.Parameter]]:  # fmt: skip
    """The parameters whose per-task gradients a gradient method compares: every trainable one when `exact`;
    else those matching `patterns`, else the last decoder block and the decoder's final layer norm; never one tied
    to the input embeddings unless `exact`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if exact:
        return named
    if patterns is None:
        blocks = [
            int(m.group(2)) for n, _ in named if (m := re.search(r"decoder\.(block|layers)\.(\d+)\.", n))
        ]
        if not blocks:
            raise T2TError("balancing: the model has no decoder blocks to take gradients on; set "
                           "balancing.gradient_params to parameter name patterns")  # fmt: skip
        last = max(blocks)
        patterns = [f"*decoder.block.{last}.*", f"*decoder.layers.{last}.*", "*decoder.final_layer_norm.*",
                    "*decoder.layer_norm.*"]  # fmt: skip
    embedding = model.get_input_embeddings().weight
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatch(n, pat) for pat in patterns)
              and p.data_ptr() != embedding.data_ptr()]  # fmt: skip
    if not chosen:
        raise T2TError(f"balancing.gradient_params {patterns} match no trainable parameter of the model")
    return chosen


class ModelWithBalancing(nn.Module):
    """The seq2seq model and the per-task log-variances of uncertainty weighting, as one trainable module.

    Its forward computes the balanced loss itself, so the engine that wraps it (DDP, DeepSpeed ZeRO-1/2/3) sees
    every parameter it uses, the log-variances included: ZeRO-3 gathers them for the forward like any other.
    """

    def __init__(self, model: nn.Module, n_tasks: int, learn_log_vars: bool,
                 gradient_params: list[nn.Parameter] | None = None, task_slots: list[int] | None = None,
                 pull: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        self.n_tasks = n_tasks
        self.learn_log_vars = learn_log_vars
        self.log_vars = nn.Parameter(torch.zeros(n_tasks), requires_grad=learn_log_vars)
        self.gradient_params = gradient_params  # set for the gradient methods (kept out of the module tree)
        # adapters (t2t.adapters): each task's adapter slot (-1: none), and the weight of their pull to the mean
        self.register_buffer("task_slots", torch.tensor(task_slots or [], dtype=torch.long), persistent=False)
        self.pull = pull

    def forward(self, tensors: dict[str, torch.Tensor], weights: torch.Tensor,
                weigher: Weigher | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """(objective, task_loss, task_tokens, weights used, penalty): the objective is the weighted sum over tasks
        of the micro-batch's summed token losses (before dividing by G); `weights` serve `equal` and `dwa`,
        `weigher` the methods of t2t.gradients. `penalty` is the adapters' pull toward their mean (0 without),
        counted once per optimizer step by the caller."""
        sums, penalty = self._sums(tensors)
        if weigher is not None:
            return (*self._weighed(sums, weigher), penalty)
        if self.learn_log_vars:
            log_vars = self.log_vars.float()
            objective = (torch.exp(-log_vars) * sums.task_loss + log_vars * sums.task_tokens).sum()
            used = torch.exp(-log_vars.detach())
        else:
            objective = (weights * sums.task_loss).sum()
            used = weights
        return objective, sums.task_loss.detach(), sums.task_tokens, used, penalty

    def _sums(self, tensors: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """The loss sums, every token through its task's adapter where the model has adapters; the pull penalty
        is summed by the adapter layers during the forward, where ZeRO-3 has their weights gathered."""
        router = router_of(self.model)
        if router is None:
            sums = loss_sums(self.model, tensors, self.n_tasks)
            return sums, torch.zeros((), device=sums.loss.device)
        encoder, decoder = batch_routes(tensors, self.task_slots)
        router.collect_penalty, router.penalty = self.pull > 0, None
        try:
            with router.use(encoder, decoder):
                sums = loss_sums(self.model, tensors, self.n_tasks)
        finally:
            router.collect_penalty = False
        penalty = (
            router.penalty * self.pull
            if router.penalty is not None
            else torch.zeros((), device=sums.loss.device)
        )
        router.penalty = None
        return sums, penalty

    def _weighed(self, sums, weigher: Weigher) -> tuple[torch.Tensor, ...]:
        present = torch.nonzero(sums.task_tokens > 0).flatten()
        means = sums.task_loss[present] / sums.task_tokens[present]
        gram = None
        if self.gradient_params is not None:
            rows = []
            for mean in means:
                grads = torch.autograd.grad(mean, self.gradient_params, retain_graph=True, allow_unused=True)
                rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().double()
                                       for g, p in zip(grads, self.gradient_params, strict=True)]))  # fmt: skip
            flat = torch.stack(rows)
            gram = (flat @ flat.T).cpu().numpy()
        coefficients = weigher(gram, means.detach().double().cpu().numpy(), present.cpu().numpy())
        a = torch.tensor(coefficients, dtype=sums.task_loss.dtype, device=sums.task_loss.device)
        share = sums.task_tokens[present].sum() / max(len(present), 1)
        objective = (a * share * means).sum()
        used = torch.zeros(self.n_tasks, device=a.device, dtype=a.dtype).index_put((present,), a)
        return objective, sums.task_loss.detach(), sums.task_tokens, used


class Balancer:
    """Turns per-task token-loss sums into the loss to minimise; state is saved with the run."""

    def __init__(self, spec: BalancingSpec, n_tasks: int, seed: int = 0) -> None:
        self.spec, self.n_tasks, self.seed = spec, n_tasks, seed
        self.history: list[list[float]] = []  # DWA: mean task losses of finished windows
        self._window_loss = [0.0] * n_tasks
        self._window_tokens = [0.0] * n_tasks
        self._window_steps = 0
        self.gradnorm = GradNorm(n_tasks, spec.gradnorm_alpha, spec.gradnorm_lr)
        self.famo = FAMO(n_tasks)
        self._reset_gradient_stats()

    @property
    def uses_gradients(self) -> bool:
        return self.spec.method in GRADIENT_METHODS

    @property
    def weighs(self) -> bool:
        return self.spec.method in GRADIENT_METHODS + LOSS_METHODS

    def weigher(self, step: int, micro: int, rank: int) -> Weigher | None:
        """The coefficients of micro-batch `micro` of optimizer step `step` on process `rank`, for the methods of
        t2t.gradients (None for the others). Seeded by (seed, step, micro, rank): the same on a resume."""
        if not self.weighs:
            return None
        method = self.spec.method

        def weigh(gram: np.ndarray | None, losses: np.ndarray, tasks: np.ndarray) -> np.ndarray:
            if gram is not None:
                self._observe_gram(gram, tasks)
            if method == "pcgrad":
                return pcgrad(gram, keyed_rng("pcgrad", self.seed, step, micro, rank))
            if method == "cagrad":
                return cagrad(gram, self.spec.cagrad_c)
            if method == "mgda":
                return mgda(gram)
            if method == "gradnorm":
                return self.gradnorm.coefficients(gram, losses, tasks)
            if method == "rlw":
                return rlw(len(tasks), self.seed, step, micro * 1000 + rank)
            if method == "famo":
                return self.famo.coefficients(losses, tasks)
            return gls(losses)

        return weigh

    def _reset_gradient_stats(self) -> None:
        self._norms = np.zeros(self.n_tasks)
        self._norm_counts = np.zeros(self.n_tasks)
        self._cosines = np.zeros((self.n_tasks, self.n_tasks))
        self._cosine_counts = np.zeros((self.n_tasks, self.n_tasks))

    def _observe_gram(self, gram: np.ndarray, tasks: np.ndarray) -> None:
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        self._norms[tasks] += norms
        self._norm_counts[tasks] += 1
        outer = np.outer(norms, norms)
        cosines = np.divide(gram, outer, out=np.zeros_like(gram), where=outer > 0)
        self._cosines[np.ix_(tasks, tasks)] += cosines
        self._cosine_counts[np.ix_(tasks, tasks)] += 1

    def gradient_stats(self, tasks: list[str]) -> dict:
        """Per-task gradient norms on the subset and the pairwise cosine matrix, averaged since the last call
        (this process's micro-batches); empty for the methods that take no gradients."""
        if not self.uses_gradients or not self._norm_counts.any():
            return {}
        record: dict = {"grad_tasks": list(tasks)}
        for t, name in enumerate(tasks):
            if self._norm_counts[t]:
                record[f"grad_norm/{name}"] = float(self._norms[t] / self._norm_counts[t])
        cosine = np.divide(self._cosines, self._cosine_counts, out=np.full_like(self._cosines, np.nan),
                           where=self._cosine_counts > 0)  # fmt: skip
        record["grad_cosine"] = [[None if np.isnan(x) else round(float(x), 6) for x in row] for row in cosine]
        self._reset_gradient_stats()
        return record

    def weights(self) -> torch.Tensor:
        """The per-task weights on S_t for `equal` and `dwa` (uncertainty learns its own in the model)."""
        if self.spec.method == "dwa" and len(self.history) >= 2:
            previous, last = self.history[-2], self.history[-1]
            ratios = torch.tensor(
                [b / a if a > 0 and b > 0 else 1.0 for a, b in zip(previous, last, strict=True)]
            )
            return self.n_tasks * torch.softmax(ratios / self.spec.dwa_temperature, dim=0)
        return torch.ones(self.n_tasks)

    def observe(self, task_loss: list[float], task_tokens: list[float]) -> None:
        """Record one optimizer step's summed task losses (all processes): DWA's windows, GradNorm's first losses."""
        if self.spec.method == "gradnorm":
            self.gradnorm.observe_first(task_loss, task_tokens)
        if self.spec.method == "famo":
            self.famo.observe(np.array([loss / tokens if tokens else np.nan
                                        for loss, tokens in zip(task_loss, task_tokens, strict=True)]))  # fmt: skip
        if self.spec.method != "dwa":
            return
        for t in range(self.n_tasks):
            self._window_loss[t] += task_loss[t]
            self._window_tokens[t] += task_tokens[t]
        self._window_steps += 1
        if self._window_steps == self.spec.dwa_window_steps:
            means = [
                loss / tokens if tokens else math.nan
                for loss, tokens in zip(self._window_loss, self._window_tokens, strict=True)
            ]
            last = self.history[-1] if self.history else [math.nan] * self.n_tasks
            # A task not drawn in this window keeps its last mean, so its ratio stays defined.
            self.history.append([m if not math.isnan(m) else p for m, p in zip(means, last, strict=True)])
            self.history = self.history[-2:]
            self._window_loss, self._window_tokens = [0.0] * self.n_tasks, [0.0] * self.n_tasks
            self._window_steps = 0

    def state_dict(self) -> dict:
        return {"history": self.history, "window_loss": self._window_loss, "window_tokens": self._window_tokens,
                "window_steps": self._window_steps, "gradnorm": self.gradnorm.state_dict(),
                "famo": self.famo.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(h) for h in state["history"]]
        self._window_loss, self._window_tokens = list(state["window_loss"]), list(state["window_tokens"])
        self._window_steps = state["window_steps"]
        if "gradnorm" in state:
            self.gradnorm.load_state_dict(state["gradnorm"])
        if "famo" in state:
            self.famo.load_state_dict(state["famo"])
