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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from t2t.modeling import loss_sums
from t2t.train_config import BalancingSpec


class ModelWithBalancing(nn.Module):
    """The seq2seq model and the per-task log-variances of uncertainty weighting, as one trainable module.

    Its forward computes the balanced loss itself, so the engine that wraps it (DDP, DeepSpeed ZeRO-1/2/3) sees
    every parameter it uses, the log-variances included: ZeRO-3 gathers them for the forward like any other.
    """

    def __init__(self, model: nn.Module, n_tasks: int, learn_log_vars: bool) -> None:
        super().__init__()
        self.model = model
        self.n_tasks = n_tasks
        self.learn_log_vars = learn_log_vars
        self.log_vars = nn.Parameter(torch.zeros(n_tasks), requires_grad=learn_log_vars)

    def forward(self, tensors: dict[str, torch.Tensor], weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(objective, task_loss, task_tokens, weights used): the objective is the weighted sum over tasks of the
        micro-batch's summed token losses (before dividing by G); `weights` serve `equal` and `dwa`."""
        sums = loss_sums(self.model, tensors, self.n_tasks)
        if self.learn_log_vars:
            log_vars = self.log_vars.float()
            objective = (torch.exp(-log_vars) * sums.task_loss + log_vars * sums.task_tokens).sum()
            used = torch.exp(-log_vars.detach())
        else:
            objective = (weights * sums.task_loss).sum()
            used = weights
        return objective, sums.task_loss.detach(), sums.task_tokens, used


class Balancer:
    """Turns per-task token-loss sums into the loss to minimise; state is saved with the run."""

    def __init__(self, spec: BalancingSpec, n_tasks: int) -> None:
        self.spec, self.n_tasks = spec, n_tasks
        self.history: list[list[float]] = []  # DWA: mean task losses of finished windows
        self._window_loss = [0.0] * n_tasks
        self._window_tokens = [0.0] * n_tasks
        self._window_steps = 0

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
        """Record one optimizer step's summed task losses (all processes) for DWA."""
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
                "window_steps": self._window_steps}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.history = [list(h) for h in state["history"]]
        self._window_loss, self._window_tokens = list(state["window_loss"]), list(state["window_tokens"])
        self._window_steps = state["window_steps"]
