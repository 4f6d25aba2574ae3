"""Task weights from per-task gradients (PCGrad, CAGrad, MGDA, GradNorm) and from losses alone (RLW, GLS).

Every gradient method here needs only the T x T Gram matrix K of the per-task gradients g_t (K_ij = g_i . g_j)
and returns coefficients a with update d = sum_t a_t g_t. The trainer then minimises sum_t a_t L_t through the
one ordinary backward pass, so the update is the method's exactly on the parameters the gradients were taken on
(a subset: the last decoder block by default) and the same combination of task losses everywhere else. The
coefficients are on mean task losses L_t; "equal" coefficients are 1 for every task.

- PCGrad (Yu et al. 2020): each g_i, in a random order of the others, loses its projection on every g_j it
  conflicts with (g_i . g_j < 0); d = sum_i g_i'. Tracked as coefficients: g_i' = sum_k C_ik g_k.
- MGDA (Sener & Koltun 2018, after Desideri): the min-norm point of the convex hull of the g_t; a = T * alpha.
- CAGrad (Liu et al. 2021): d = g0 + (c |g0| / |g_w|) g_w, g0 the mean gradient and w on the simplex
  minimising g_w . g0 + c |g0| |g_w|; divided by 1 + c^2 (the official code's default rescaling); a = T * that.
- GradNorm (Chen et al. 2018): learnt weights w (sum T) pulled so that each |w_t g_t| approaches the mean norm
  times (r_t) ** alpha, r_t the task's loss ratio to its first loss over the mean ratio.
- RLW (Lin et al. 2021): a = T * softmax(z), z ~ N(0, 1), drawn from (seed, step, micro-batch).
- GLS (Chennupati et al. 2019): minimising the geometric mean of the task losses gives a_t proportional to 1 / L_t
  (normalised to sum T).
- FAMO (Liu et al. 2023): the gradient of sum_t z_t log L_t / c, z = softmax(xi), c = sum_t z_t / L_t, so
  a_t = T z_t / (c L_t); after each optimizer step xi takes an Adam step (lr 0.025, weight decay 1e-3, as the
  official code) along -J' delta, J the softmax's Jacobian and delta_t = log L_t(previous step) - log L_t(this
  step), from the mean task losses of all processes: the tasks whose losses fall least gain weight.
"""

from __future__ import annotations

import numpy as np

from t2t.rng import keyed_rng

GRADIENT_METHODS = ("pcgrad", "cagrad", "mgda", "gradnorm")
LOSS_METHODS = ("rlw", "gls", "famo")


def pcgrad(gram: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PCGrad's update as coefficients on the task gradients."""
    n = len(gram)
    coefficients = np.eye(n)
    for i in range(n):
        for j in rng.permutation(n).tolist():  # all tasks, i too (a no-op unless g_i' turned against g_i)
            dot = coefficients[i] @ gram[:, j]  # g_i' . g_j
            if dot < 0 and gram[j, j] > 0:
                coefficients[i, j] -= dot / gram[j, j]
    return coefficients.sum(axis=0)


def min_norm_simplex(gram: np.ndarray, iterations: int = 2000) -> np.ndarray:
    """alpha on the simplex minimising |sum_t alpha_t g_t|^2 = alpha' K alpha: two tasks in closed form, more by
    accelerated projected gradient descent (FISTA, step 1 / the largest eigenvalue of K)."""
    n = len(gram)
    if n == 1:
        return np.ones(1)
    if n == 2:
        a, b, c = gram[0, 0], gram[0, 1], gram[1, 1]
        denominator = a - 2 * b + c
        x = 0.5 if denominator <= 0 else float(np.clip((c - b) / denominator, 0.0, 1.0))
        return np.array([x, 1.0 - x])
    largest = float(np.linalg.eigvalsh(gram)[-1])
    if largest <= 0:
        return np.full(n, 1.0 / n)
    alpha = np.full(n, 1.0 / n)
    y, momentum = alpha.copy(), 1.0
    for _ in range(iterations):
        following = _project_simplex(y - (gram @ y) / largest)
        next_momentum = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
        y = following + ((momentum - 1) / next_momentum) * (following - alpha)
        if np.abs(following - alpha).max() < 1e-12:
            alpha = following
            break
        alpha, momentum = following, next_momentum
    return alpha


def mgda(gram: np.ndarray) -> np.ndarray:
    return len(gram) * min_norm_simplex(gram)


def cagrad(gram: np.ndarray, c: float = 0.5, iterations: int = 300) -> np.ndarray:
    """CAGrad's update as coefficients (projected gradient descent on the simplex for w), with the official code's
    radius c |g0| and its default rescaling by 1 / (1 + c^2)."""
    n = len(gram)
    mean = np.full(n, 1.0 / n)
    g0_norm = float(np.sqrt(max(mean @ gram @ mean, 0.0)))
    if g0_norm == 0 or c == 0:
        return np.ones(n)
    w = mean.copy()
    scale = c * g0_norm

    def objective_grad(w: np.ndarray) -> np.ndarray:
        gw_norm = float(np.sqrt(max(w @ gram @ w, 1e-20)))
        return gram @ mean + scale * (gram @ w) / gw_norm

    step = 1.0 / max(float(np.abs(gram).sum()), 1e-12)
    for _ in range(iterations):
        w = _project_simplex(w - step * objective_grad(w))
    gw_norm = float(np.sqrt(max(w @ gram @ w, 1e-20)))
    update = mean + (scale / gw_norm) * w
    return n * update / (1.0 + c**2)


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x >= 0, sum x = 1} (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    index = np.arange(1, len(v) + 1)
    rho = index[u - cumulative / index > 0][-1]
    return np.maximum(v - cumulative[rho - 1] / rho, 0.0)


class GradNorm:
    """GradNorm's learnt task weights; state travels with the checkpoint."""

    def __init__(self, n_tasks: int, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.n_tasks, self.alpha, self.lr = n_tasks, alpha, lr
        self.weights = np.ones(n_tasks)
        self.first_loss = np.full(n_tasks, np.nan)

    def observe_first(self, task_loss: list[float], task_tokens: list[float]) -> None:
        """Each task's first mean loss over all processes (the L_t(0) of the loss ratios)."""
        for t, (loss, tokens) in enumerate(zip(task_loss, task_tokens, strict=True)):
            if np.isnan(self.first_loss[t]) and tokens > 0:
                self.first_loss[t] = loss / tokens

    def coefficients(self, gram: np.ndarray, losses: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """The weights of the present `tasks` (indices into all tasks), then one GradNorm update of them. A task
        without a first loss yet (its first step) counts with ratio 1."""
        w = self.weights[tasks]
        first = np.where(np.isnan(self.first_loss[tasks]), losses, self.first_loss[tasks])
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        weighted = w * norms
        ratios = losses / np.where(first > 0, first, 1.0)
        relative = ratios / ratios.mean() if ratios.mean() > 0 else np.ones_like(ratios)
        target = weighted.mean() * relative**self.alpha
        step = np.sign(weighted - target) * norms  # d/dw_t of sum_t |w_t |g_t| - target_t|, target held fixed
        updated = np.clip(w - self.lr * step, 1e-3, None)
        self.weights[tasks] = updated * len(tasks) / updated.sum()
        return w

    def state_dict(self) -> dict:
        return {
            "weights": self.weights.tolist(),
            "first_loss": [None if np.isnan(x) else float(x) for x in self.first_loss],
        }

    def load_state_dict(self, state: dict) -> None:
        self.weights = np.array(state["weights"], dtype=float)
        self.first_loss = np.array([np.nan if x is None else x for x in state["first_loss"]], dtype=float)


def rlw(n_tasks: int, seed: int, step: int, micro: int) -> np.ndarray:
    z = keyed_rng("rlw", seed, step, micro).standard_normal(n_tasks)
    e = np.exp(z - z.max())
    return n_tasks * e / e.sum()


def gls(losses: np.ndarray) -> np.ndarray:
    inverse = 1.0 / np.maximum(losses, 1e-12)
    return len(losses) * inverse / inverse.sum()


class FAMO:
    """FAMO's task logits and their Adam state (host side, the same on every process); in the checkpoint."""

    def __init__(self, n_tasks: int, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        self.lr, self.weight_decay = lr, weight_decay
        self.logits = np.zeros(n_tasks)
        self.m, self.v, self.t = np.zeros(n_tasks), np.zeros(n_tasks), 0
        self.previous = np.full(n_tasks, np.nan)  # the last step's mean task losses

    def coefficients(self, losses: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        z = np.exp(self.logits[tasks] - self.logits[tasks].max())
        z /= z.sum()
        inverse = z / np.maximum(losses, 1e-8)
        return len(tasks) * inverse / inverse.sum()

    def observe(self, losses: np.ndarray) -> None:
        """One optimizer step's mean task losses (nan for a task not drawn): Adam on the logits."""
        known = ~np.isnan(self.previous) & ~np.isnan(losses)
        if known.any():
            delta = np.zeros_like(self.logits)
            delta[known] = np.log(self.previous[known] + 1e-8) - np.log(losses[known] + 1e-8)
            z = np.exp(self.logits - self.logits.max())
            z /= z.sum()
            grad = z * (delta - z @ delta) + self.weight_decay * self.logits  # J' delta, J = diag(z) - z z'
            self.t += 1
            self.m = 0.9 * self.m + 0.1 * grad
            self.v = 0.999 * self.v + 0.001 * grad**2
            m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
            self.logits = self.logits - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.previous = np.where(np.isnan(losses), self.previous, losses)

    def state_dict(self) -> dict:
        def plain(a):
            return [None if np.isnan(x) else float(x) for x in a]

        return {"logits": plain(self.logits), "m": plain(self.m), "v": plain(self.v), "t": self.t,
                "previous": plain(self.previous)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        def array(values):
            return np.array([np.nan if x is None else x for x in values], dtype=float)

        self.logits, self.m, self.v = array(state["logits"]), array(state["m"]), array(state["v"])
        self.t, self.previous = state["t"], array(state["previous"])
