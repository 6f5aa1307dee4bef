"""The benchmark tasks: small, standard problems, each sized to train in seconds on a CPU.

A ``Task`` fixes everything but the method: the model, the data, the step budget, the
batch size, the metric (and which way is better) and a target value. ``task.build(seed)``
gives a ``TaskInstance``: a freshly initialised ``model``, an endless seeded ``loader`` of
``(inputs, targets)`` batches, the ``loss_fn`` to train on and ``evaluate(model)``, the
metric. Seeds pair methods: the same seed gives the same initial weights and the same
data order whatever the optimizer or schedule; the problem itself (data set, Hessian,
corpus) is the same for every seed. Building leaves the global random generators alone.

    task = get_task("mnist1d_mlp")
    inst = task.build(seed=0)
    lrkit.find_lr(inst.model, torch.optim.Adam(inst.model.parameters()), inst.loader,
                  inst.loss_fn)
    run = lrkit.bench.train(task, lambda params: torch.optim.Adam(params),
                            schedule=lambda steps: S.cosine(3e-3, total=steps), seed=0)

``TASKS`` lists them by name; ``Task.reference`` is a setting known to reach the target.
``HELD_OUT`` lists issue 14's held-out tasks (the last section), which no suite but
"heldout" runs; ``get_task`` finds both.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit._rng import preserved_rng
from lrkit.bench import data as D


# -- the API -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A complete training setting: a torch optimizer, its options, and a peak lr used
    with a linear warmup over ``warmup`` of the steps followed by a cosine decay to 0
    (``S.family("cosine", lr, steps, warmup)``)."""

    optimizer: str
    lr: float
    options: tuple[tuple[str, Any], ...] = ()
    warmup: float = 0.05

    def __post_init__(self) -> None:
        fn = "Recipe()"
        if not isinstance(self.optimizer, str) or not isinstance(
                getattr(torch.optim, self.optimizer, None), type):
            raise (ValueError if isinstance(self.optimizer, str) else TypeError)(
                f"{fn}: optimizer must name a torch.optim class ('SGD', 'Adam'...), got "
                f"{self.optimizer!r}")
        C.nonnegative(fn, "lr", self.lr)
        if not isinstance(self.options, tuple) or not all(
                isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str)
                for o in self.options):
            raise TypeError(f"{fn}: options must be a tuple of (name, value) pairs, got "
                            f"{self.options!r}")
        C.in_range(fn, "warmup", self.warmup, 0.0, 1.0, high_open=True)

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return getattr(torch.optim, self.optimizer)(params, lr=self.lr, **dict(self.options))

    def schedule(self, steps: int, lr: float | None = None) -> S.Schedule:
        return S.family("cosine", self.lr if lr is None else lr, steps, self.warmup)


@dataclass(frozen=True)
class FullBatch:
    """The whole training objective as one batch, for full-batch methods (L-BFGS):
    ``loss_fn(model(inputs), targets)`` is the loss the minibatches estimate, and one
    evaluation of it costs ``cost`` plain minibatch steps (its examples over the batch
    size: the arena charges full-batch methods by it)."""

    inputs: Any
    targets: Any
    cost: float


@dataclass
class TaskInstance:
    """One seeded build of a task: what a training loop needs (``full_batch``: the whole
    objective as one batch, where the task has one; None otherwise)."""

    task: Task
    seed: int
    model: nn.Module
    loader: Batches
    loss_fn: Callable[[Any, Any], torch.Tensor]
    evaluate: Callable[[nn.Module], float]
    full_batch: FullBatch | None = None

    def as_target(self) -> tuple[nn.Module, Batches, Callable[[Any, Any], torch.Tensor]]:
        """``(model, loader, loss_fn)``, what ``lrkit find`` takes."""
        return self.model, self.loader, self.loss_fn


@dataclass(frozen=True)
class Task:
    """A benchmark problem: train ``steps`` steps on batches of ``batch_size``, then score
    ``metric`` (higher is better when ``higher_is_better``) against ``target``.
    ``builder(task, seed)`` returns ``(model, loader, loss_fn, evaluate)``, or with a fifth
    item, the task's ``FullBatch``."""

    name: str
    description: str
    steps: int
    batch_size: int
    metric: str
    higher_is_better: bool
    target: float
    reference: Recipe
    builder: Callable[[Task, int], tuple[nn.Module, Batches, Callable, Callable]] = field(
        repr=False, compare=False)
    #: the slow part of a first build (generated data, a reference optimum), done once
    #: per machine and cached on disk; ``preparer(log)`` calls ``log(line)`` before work
    #: that takes seconds (see ``prepare``)
    preparer: Callable[[Callable[[str], None] | None], Any] | None = field(
        default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        fn = "Task()"
        for name in ("name", "description", "metric"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{fn}: {name} must be a string, got {getattr(self, name)!r}")
        C.positive_int(fn, "steps", self.steps)
        C.positive_int(fn, "batch_size", self.batch_size)
        C.boolean(fn, "higher_is_better", self.higher_is_better)
        C.real(fn, "target", self.target)
        if not isinstance(self.reference, Recipe):
            raise TypeError(f"{fn}: reference must be a Recipe, got {self.reference!r}")
        if not callable(self.builder):
            raise TypeError(f"{fn}: builder must be callable (task, seed) -> (model, loader, "
                            f"loss_fn, evaluate), got {self.builder!r}")

    def prepare(self, log: Callable[[str], None] | None = None) -> None:
        """Make what every build of this task reads from the disk cache (a no-op when it is
        there already); ``log(line)`` hears what is computed, so a command line can say why
        its first build takes seconds. Building calls it too, silently."""
        if self.preparer is not None:
            self.preparer(None if log is None else
                          (lambda line: log(f"preparing task {self.name}: {line}")))

    @property
    def eval_every(self) -> int:
        """How often ``train`` evaluates: 20 times per budget."""
        return max(1, self.steps // 20)

    @property
    def worst(self) -> float:
        """The metric recorded for a run that diverged."""
        return -math.inf if self.higher_is_better else math.inf

    def reached(self, value: float) -> bool:
        """Whether a metric value meets the target."""
        if not math.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def evaluation_steps(self, steps: int) -> set[int]:
        """The steps at which a run of ``steps`` evaluates the metric: 0, every
        ``eval_every``, half the budget and the end."""
        return set(range(0, steps + 1, self.eval_every)) | {steps // 2, steps}

    def build(self, seed: int = 0) -> TaskInstance:
        """A fresh model (initialised from ``seed``), loader, loss and metric."""
        seed = C.nonnegative_int(f"{self.name}.build()", "seed", seed)
        with preserved_rng():
            torch.manual_seed(seed)
            built = self.builder(self, seed)
        return TaskInstance(self, seed, *built)


class Batches:
    """An endless, seeded stream of batches. Every ``iter()`` replays it from the start,
    so a range test and a training run built from the same seed see the same data."""

    def __init__(self, stream: Callable[[torch.Generator], Iterator[Any]], seed: int) -> None:
        if not callable(stream):
            raise TypeError(f"Batches(): stream must be callable (generator -> iterator of "
                            f"batches), got {stream!r}")
        self.stream = stream
        self.seed = C.nonnegative_int("Batches()", "seed", seed)

    def __iter__(self) -> Iterator[Any]:
        return self.stream(torch.Generator().manual_seed(7919 * (self.seed + 1)))

    def split_held(self, n: int, seed: int = 0) -> tuple[list[Any], Batches] | None:
        """``lrkit.loop.split_held``'s protocol: for a stream over fixed tensors
        (:func:`shuffled_epochs`), ``n`` batches of examples drawn at random and the same
        stream over the other examples; None for a stream of fresh samples (its batches
        never come back: any of them is held out already)."""
        if not isinstance(self.stream, ShuffledEpochs):
            return None
        split = self.stream.split(n, seed)
        return None if split is None else (split[0], Batches(split[1], self.seed))


class ShuffledEpochs:
    """A stream of mini-batches over fixed tensors, reshuffled every epoch (last partial
    batch dropped): ``stream(generator)`` iterates it."""

    def __init__(self, batch_size: int, *tensors: torch.Tensor) -> None:
        fn = "shuffled_epochs()"
        self.batch_size = C.positive_int(fn, "batch_size", batch_size)
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"{fn}: tensors must be one or more tensors, got {tensors!r:.60}")
        self.tensors = tensors

    def __call__(self, g: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        n, bs = len(self.tensors[0]), self.batch_size
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - bs + 1, bs):
                idx = perm[i:i + bs]
                yield tuple(t[idx] for t in self.tensors)

    def split(self, n: int, seed: int) -> tuple[list, ShuffledEpochs] | None:
        """``n`` batches of examples drawn at random (``seed``) and the stream over the
        rest, or None where the rest would be too small (``lrkit.loop.held_indices``)."""
        from lrkit.loop import held_indices

        picked = held_indices(len(self.tensors[0]), n, self.batch_size, seed)
        if picked is None:
            return None
        held = [tuple(t[batch] for t in self.tensors) for batch in picked[0]]
        return held, ShuffledEpochs(self.batch_size, *(t[picked[1]] for t in self.tensors))


def shuffled_epochs(batch_size: int, *tensors: torch.Tensor) -> ShuffledEpochs:
    """A stream of mini-batches over fixed tensors, reshuffled every epoch (last partial
    batch dropped)."""
    return ShuffledEpochs(batch_size, *tensors)


TASKS: dict[str, Task] = {}
#: issue 14's held-out tasks (this module's last section): outside the arena's suites,
#: never tuned on; ``get_task`` finds them, the quick and full suites do not
HELD_OUT: dict[str, Task] = {}


def register(task: Task, *, held_out: bool = False) -> Task:
    """Add a task to the arena (``TASKS``), or with ``held_out`` to ``HELD_OUT``."""
    if not isinstance(task, Task):
        raise TypeError(f"register(): task must be a Task, got {type(task).__name__}")
    held_out = C.boolean("register()", "held_out", held_out)
    (HELD_OUT if held_out else TASKS)[task.name] = task
    (TASKS if held_out else HELD_OUT).pop(task.name, None)
    return task


def get_task(name: str) -> Task:
    """The task called ``name``, of ``TASKS`` or ``HELD_OUT``."""
    if not isinstance(name, str) or name not in TASKS and name not in HELD_OUT:
        raise ValueError(f"get_task(): name must be one of "
                         f"{', '.join(map(repr, [*TASKS, *HELD_OUT]))}, got {name!r}")
    return TASKS[name] if name in TASKS else HELD_OUT[name]


# -- synthetic objectives ------------------------------------------------------------------
class Objective(nn.Module):
    """A parameter vector ``theta`` and a per-sample stochastic objective of it:
    ``forward(noise)`` returns one value per sample; the loss is their mean."""

    def __init__(self, theta: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]) -> None:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"Objective(): theta must be a tensor, got {theta!r:.40}")
        if not callable(fn):
            raise TypeError(f"Objective(): fn must be callable (theta, noise) -> values, got "
                            f"{fn!r}")
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.fn = fn

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.fn(self.theta, noise)


def mean_value(values: torch.Tensor, _targets: Any = None) -> torch.Tensor:
    """The loss of an ``Objective``: the mean of its per-sample values."""
    return values.mean()


def _with_dummy_targets(stream):
    def wrapped(g: torch.Generator):
        for (x,) in stream(g):
            yield x, torch.zeros(len(x))
    return wrapped


@functools.lru_cache(maxsize=1)
def _quadratic_problem() -> tuple[torch.Tensor, torch.Tensor]:
    """DeepOBS quadratic_deep: Hessian R^T diag(eigs) R, 90 eigenvalues from U(0, 1) and
    10 from U(30, 60), R a random rotation; 1000 training points from N(0, 0.6^2 I)."""
    rng = np.random.RandomState(42)
    eigs = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    q, r = np.linalg.qr(rng.standard_normal((100, 100)))
    rotation = q * np.sign(np.diag(r))
    hessian = rotation.T @ np.diag(eigs) @ rotation
    points = rng.normal(0.0, 0.6, size=(1000, 100))
    return torch.tensor(hessian, dtype=torch.float32), torch.tensor(points, dtype=torch.float32)


def _build_quadratic(task: Task, seed: int):
    hessian, points = _quadratic_problem()

    def fn(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r = theta - x
        return 0.5 * ((r @ hessian) * r).sum(-1)

    def excess_risk(model: nn.Module) -> float:
        theta = model.theta.detach().double()
        return float(0.5 * theta @ hessian.double() @ theta)

    model = Objective(torch.ones(100), fn)
    loader = Batches(_with_dummy_targets(shuffled_epochs(task.batch_size, points)), seed)
    full = FullBatch(points, torch.zeros(len(points)), len(points) / task.batch_size)
    return model, loader, mean_value, excess_risk, full


NQM_DIM = 100
NQM_CURVATURE = 1.0 / torch.arange(1, NQM_DIM + 1, dtype=torch.float32)


def _build_noisy_quadratic(task: Task, seed: int):
    h = NQM_CURVATURE

    def fn(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # an unbiased estimate of the risk 0.5 sum(h theta^2) whose gradient h (theta - x),
        # x ~ N(0, 1/h), has covariance H per sample (Zhang et al. 2019: C = H)
        return 0.5 * (h * theta * theta).sum() - (h * theta * x).sum(-1)

    def risk(model: nn.Module) -> float:
        theta = model.theta.detach().double()
        return float(0.5 * (h.double() * theta * theta).sum())

    def stream(g: torch.Generator):
        scale = h.rsqrt()
        while True:
            x = torch.randn(task.batch_size, NQM_DIM, generator=g) * scale
            yield x, torch.zeros(task.batch_size)

    return Objective(torch.ones(NQM_DIM), fn), Batches(stream, seed), mean_value, risk


ROSENBROCK_START = (-0.5, 1.5)
ROSENBROCK_NOISE = 1.0


def rosenbrock(theta: torch.Tensor) -> torch.Tensor:
    u, v = theta[..., 0], theta[..., 1]
    return (1 - u) ** 2 + 100 * (v - u * u) ** 2


def _build_rosenbrock(task: Task, seed: int):
    def fn(theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return rosenbrock(theta) + noise @ theta  # additive gradient noise, as in DeepOBS

    def value(model: nn.Module) -> float:
        return float(rosenbrock(model.theta.detach().double()))

    def stream(g: torch.Generator):
        while True:
            noise = ROSENBROCK_NOISE * torch.randn(task.batch_size, 2, generator=g)
            yield noise, torch.zeros(task.batch_size)

    model = Objective(torch.tensor(ROSENBROCK_START), fn)
    # the expected objective (the noise has mean zero): f itself, at a minibatch's cost
    full = FullBatch(torch.zeros(1, 2), torch.zeros(1), 1.0)
    return model, Batches(stream, seed), mean_value, value, full


# -- digits: softmax regression to its exact optimum ----------------------------------------
DIGITS_L2 = 1e-3


def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixel values (0..16, not standardised: the Hessian's condition number is about
    1e4) and labels, float64."""
    x, y = D.digits()
    return torch.tensor(x), torch.tensor(y)


@functools.lru_cache(maxsize=2)
def digits_optimum(log: Callable[[str], None] | None = None) -> torch.Tensor:
    """The exact minimiser of ``cross_entropy(x W' + b, y) + DIGITS_L2 / 2 (|W|^2 + |b|^2)``,
    as ``[W.flatten(), b]`` in float64 (``newton_softmax``), computed once per machine and
    cached on disk (``lrkit.bench.data.cached``, keyed by the data and ``DIGITS_L2``);
    ``log`` hears one line when it must be computed."""
    x, y = _digits_tensors()
    key = b"".join([x.numpy().tobytes(), y.numpy().tobytes(),
                    repr((DIGITS_L2, "newton-decrement-v2")).encode()])
    arrays = D.cached("digits-optimum", key,
                      lambda: {"w": newton_softmax(x, y, DIGITS_L2).numpy()},
                      "computing its exact optimum by Newton's method (about "
                      "15 s)", log)
    return torch.from_numpy(arrays["w"])


def newton_softmax(x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """The minimiser of L2-regularised softmax regression in float64, as ``[W.flatten(),
    b]``: Newton's method with backtracking (Boyd & Vandenberghe, Convex Optimization,
    9.5). It stops when the Newton decrement ``lambda^2 = g' H^-1 g`` (twice the
    predicted gain of the next step) falls to the rounding of the objective,
    ``lambda^2 / 2 <= 4 eps |f|``: the gradient cannot be computed more exactly than its
    own rounding (about 6e-12 here), so a fixed gradient tolerance below that would never
    be met. About a dozen iterations; also stops if a line search finds no decrease."""
    n, k = len(x), int(y.max()) + 1
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1).double()
    onehot = F.one_hot(y, k).double()
    w = torch.zeros(k, xa.shape[1], dtype=torch.float64)
    eps = torch.finfo(torch.float64).eps

    def objective(w: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(xa @ w.T, y) + 0.5 * l2 * w.pow(2).sum()

    for _ in range(50):
        p = torch.softmax(xa @ w.T, 1)
        grad = (p - onehot).T @ xa / n + l2 * w
        # Hessian: mean_i (diag(p_i) - p_i p_i') kron x_i x_i', plus the L2 term
        coupling = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        hess = torch.einsum("iabk,ij->ajbk", coupling[..., None] * xa[:, None, None, :], xa) / n
        size = w.numel()
        hess = hess.reshape(size, size) + l2 * torch.eye(size, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad.reshape(-1)).reshape(w.shape)
        f0, decrement = objective(w), float((grad * step).sum())
        if decrement / 2 <= 4 * eps * abs(float(f0)):
            break
        t = 1.0
        while objective(w - t * step) > f0 - 0.25 * t * decrement:
            t *= 0.5
            if t < 1e-10:  # no decrease left to find: at the rounding floor
                return torch.cat([w[:, :-1].flatten(), w[:, -1]])
        w = w - t * step
    return torch.cat([w[:, :-1].flatten(), w[:, -1]])


def _build_digits(task: Task, seed: int):
    x, y = _digits_tensors()
    optimum = digits_optimum()
    model = nn.Linear(x.shape[1], 10)
    with torch.no_grad():  # the convex problem starts from zero; the seed orders the data
        model.weight.zero_()
        model.bias.zero_()

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reg = 0.5 * DIGITS_L2 * (model.weight.pow(2).sum() + model.bias.pow(2).sum())
        return F.cross_entropy(logits, targets) + reg

    def distance(m: nn.Module) -> float:
        w = torch.cat([m.weight.detach().double().flatten(), m.bias.detach().double()])
        return float((w - optimum).norm() / optimum.norm())

    loader = Batches(shuffled_epochs(task.batch_size, x.float(), y), seed)
    full = FullBatch(x.float(), y, len(x) / task.batch_size)
    return model, loader, loss_fn, distance, full


# -- MNIST-1D ------------------------------------------------------------------------------
def _mnist1d_data(log: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    return D.mnist1d(D.MNIST1D_SAMPLES, log)


def _mnist1d_tensors():
    d = _mnist1d_data()
    return (torch.from_numpy(d["x"]), torch.from_numpy(d["y"]),
            torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"]))


def accuracy_of(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], float]:
    def accuracy(model: nn.Module) -> float:
        training = [(m, m.training) for m in model.modules()]
        model.eval()
        with torch.no_grad():
            value = float((model(x).argmax(-1) == y).float().mean())
        for m, flag in training:
            m.training = flag
        return value

    return accuracy


class ConvNet1d(nn.Module):
    """The small 1-D CNN of the MNIST-1D paper: three strided convolutions, one linear."""

    def __init__(self, channels: int = 25, classes: int = 10) -> None:
        C.positive_int("ConvNet1d()", "channels", channels)
        C.positive_int("ConvNet1d()", "classes", classes)
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, classes)  # length 40 -> 19 -> 10 -> 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return self.linear(h.flatten(1))


def _build_mnist1d(make_model: Callable[[], nn.Module]):
    def build(task: Task, seed: int):
        x, y, x_test, y_test = _mnist1d_tensors()
        loader = Batches(shuffled_epochs(task.batch_size, x, y), seed)
        return make_model(), loader, F.cross_entropy, accuracy_of(x_test, y_test)

    return build


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


# -- a character-level language model --------------------------------------------------------
LM_CONTEXT = 64
LM_VAL_WINDOWS = 128


class CharGRU(nn.Module):
    def __init__(self, vocab: int = len(D.VOCAB), embed: int = 32, hidden: int = 64) -> None:
        for name, v in (("vocab", vocab), ("embed", embed), ("hidden", hidden)):
            C.positive_int("CharGRU()", name, v)
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embed(x))
        return self.head(h)


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _char_stream(task: Task, seed: int, context: int, val_windows: int):
    """The character corpus split 90/10: a batch stream of random windows of ``context``
    characters (inputs, next characters) from the training part, and the next-character
    loss on ``val_windows`` evenly spaced windows of the validation part."""
    text = torch.from_numpy(D.corpus())
    split = int(0.9 * len(text))
    train, val = text[:split], text[split:]
    windows = torch.arange(val_windows) * ((len(val) - context - 1) // val_windows)
    val_x = torch.stack([val[i:i + context] for i in windows])
    val_y = torch.stack([val[i + 1:i + context + 1] for i in windows])

    def stream(g: torch.Generator):
        offsets = torch.arange(context + 1)
        while True:
            starts = torch.randint(0, len(train) - context - 1, (task.batch_size, 1),
                                   generator=g)
            chunk = train[starts + offsets]
            yield chunk[:, :-1], chunk[:, 1:]

    def val_loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(next_char_loss(model(val_x), val_y))

    return Batches(stream, seed), val_loss


def _build_char_lm(task: Task, seed: int):
    batches, val_loss = _char_stream(task, seed, LM_CONTEXT, LM_VAL_WINDOWS)
    return CharGRU(), batches, next_char_loss, val_loss


# -- the registry ----------------------------------------------------------------------------
def _sgd(lr: float, momentum: float = 0.9) -> Recipe:
    return Recipe("SGD", lr, (("momentum", momentum),))


register(Task(
    "quadratic", "DeepOBS quadratic_deep: 100-d noisy quadratic, 10 large eigenvalues, "
    "1000 training points; excess risk 0.5 theta' H theta",
    steps=800, batch_size=128, metric="excess_risk", higher_is_better=False, target=0.1,
    reference=_sgd(0.01), builder=_build_quadratic))
register(Task(
    "noisy_quadratic", "noisy quadratic model (Zhang et al. 2019): curvatures 1/i, "
    "gradient noise covariance H/B, streaming; risk 0.5 sum(h theta^2)",
    steps=1000, batch_size=16, metric="risk", higher_is_better=False, target=0.015,
    reference=_sgd(0.2), builder=_build_noisy_quadratic))
register(Task(
    "mnist1d_mlp", "MLP (40-256-256-10) on MNIST-1D, 25,000 generated samples",
    steps=1500, batch_size=128, metric="test_accuracy", higher_is_better=True, target=0.8,
    reference=Recipe("Adam", 1e-2), builder=_build_mnist1d(_mlp), preparer=_mnist1d_data))
register(Task(
    "mnist1d_cnn", "the MNIST-1D paper's 1-D CNN, 25,000 generated samples",
    steps=1500, batch_size=128, metric="test_accuracy", higher_is_better=True, target=0.9,
    reference=Recipe("Adam", 3e-2), builder=_build_mnist1d(ConvNet1d),
    preparer=_mnist1d_data))
register(Task(
    "digits_softmax", "L2-regularised softmax regression on scikit-learn's digits, raw "
    "pixel values (condition number about 1e4); relative distance to the exact optimum",
    steps=1500, batch_size=64, metric="distance_to_optimum", higher_is_better=False,
    target=0.3, reference=_sgd(0.01), builder=_build_digits, preparer=digits_optimum))
register(Task(
    "rosenbrock", "noisy 2-D Rosenbrock from (-0.5, 1.5), additive gradient noise; "
    "f(u, v)", steps=1000, batch_size=32, metric="value", higher_is_better=False,
    target=0.05, reference=_sgd(1e-3), builder=_build_rosenbrock))
register(Task(
    "char_lm", "GRU character language model on Python standard-library source; "
    "validation loss (nats per character)", steps=600, batch_size=32, metric="val_loss",
    higher_is_better=False, target=1.5, reference=Recipe("Adam", 1e-2),
    builder=_build_char_lm))


# == the held-out tasks ========================================================================
# Issue 14's held-out discipline: three problems outside the arena's suites, never used to
# design or tune the autopilot or the range test's rule, on which a self-tuning method is
# reported only at the end (``lrkit bench --suite heldout``). Registered in ``HELD_OUT``
# instead of ``TASKS``, so the quick and full suites, ``lrkit tune`` and ``lrkit find``
# never see them; ``get_task`` finds them. Each is sized to train its budget in about 2-6 s
# on one idle CPU thread (measured: median 4.6-13.2 s under a load average of 6 on 2
# cores, where char_lm takes 2-3x its 11 s); nothing is downloaded (the data is
# generated, or the Python standard library's source, as ``char_lm``'s).
#
# - ``shapes_bn``: a 2-D CNN (3 conv + BatchNorm blocks, global pooling) on 16x16 images of
#   8 generated shapes (random position, size, contrast, background gradient; pixel noise);
#   test accuracy, in eval mode (BatchNorm's running statistics).
# - ``tiny_transformer``: a causal transformer (2 pre-norm layers, d=64, 4 heads, context
#   32) on ``char_lm``'s corpus; validation loss in nats per character.
# - ``noisy_regression``: teacher-student regression, a student MLP 16-64-64-1 (ReLU) fit
#   to 4,096 labels of a random teacher MLP 16-32-1 (tanh) with Gaussian label noise of sd
#   0.5 (the teacher's output has unit variance); the metric is the MSE on 4,096 fresh
#   inputs against the teacher's *clean* outputs, the excess risk: what fitting the noise
#   costs is measured, the irreducible noise (0.25) is not included.

# -- shapes_bn: a BatchNorm CNN on generated images ---------------------------------------
SHAPES = ("disc", "ring", "square", "frame", "diamond", "cross", "hbar", "vbar")
SHAPE_SIZE = 16
SHAPE_NOISE = 0.4
SHAPES_TRAIN, SHAPES_TEST = 8192, 1024


def _draw(kind: str, cy: float, cx: float, r: float, yy: np.ndarray,
          xx: np.ndarray) -> np.ndarray:
    """The mask of one shape of "radius" ``r`` centred at ``(cy, cx)``."""
    dy, dx = yy - cy, xx - cx
    dist, box, l1 = np.hypot(dy, dx), np.maximum(abs(dy), abs(dx)), abs(dy) + abs(dx)
    w = max(1.0, r / 3)  # stroke width
    return {
        "disc": dist <= r, "ring": (dist <= r) & (dist >= r - w),
        "square": box <= r * 0.85, "frame": (box <= r * 0.85) & (box >= r * 0.85 - w),
        "diamond": l1 <= r * 1.2,
        "cross": ((abs(dy) <= w / 2) & (abs(dx) <= r)) | ((abs(dx) <= w / 2) & (abs(dy) <= r)),
        "hbar": (abs(dy) <= w / 2 + 0.5) & (abs(dx) <= r),
        "vbar": (abs(dx) <= w / 2 + 0.5) & (abs(dy) <= r),
    }[kind]


@functools.lru_cache(maxsize=1)
def shapes_data() -> dict[str, torch.Tensor]:
    """8-class images, ``SHAPE_SIZE`` square: one shape (uniform class) at a random centre,
    radius 3-6 pixels, contrast 0.5-1.5 over a random linear background gradient, plus
    Gaussian pixel noise of sd ``SHAPE_NOISE``; standardised by the training set's pixel
    mean and sd. The same for every seed (generated from a fixed ``RandomState``, about
    1 s): x (n, 1, 16, 16) float32, y int64, for train and test."""
    rng = np.random.RandomState(1414)
    n = SHAPES_TRAIN + SHAPES_TEST
    yy, xx = np.mgrid[0:SHAPE_SIZE, 0:SHAPE_SIZE].astype(np.float64)
    labels = rng.randint(len(SHAPES), size=n)
    images = np.empty((n, SHAPE_SIZE, SHAPE_SIZE))
    for i, k in enumerate(labels):
        r = rng.uniform(3.0, 6.0)
        cy, cx = rng.uniform(r - 1, SHAPE_SIZE - r, size=2)
        mask = _draw(SHAPES[k], cy, cx, r, yy, xx)
        gy, gx = rng.normal(0.0, 0.04, size=2)
        images[i] = gy * (yy - 7.5) + gx * (xx - 7.5) + rng.uniform(0.5, 1.5) * mask
    images += rng.normal(0.0, SHAPE_NOISE, size=images.shape)
    train = images[:SHAPES_TRAIN]
    images = (images - train.mean()) / train.std()
    x = torch.tensor(images[:, None], dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    return {"x": x[:SHAPES_TRAIN], "y": y[:SHAPES_TRAIN], "x_test": x[SHAPES_TRAIN:],
            "y_test": y[SHAPES_TRAIN:]}


class ShapesCNN(nn.Module):
    """Three 3x3 conv + BatchNorm + ReLU blocks (``width``, 2 ``width``, 4 ``width``
    channels; 2x2 max-pooling after the first two), global average pooling, one linear."""

    def __init__(self, width: int = 8, classes: int = len(SHAPES)) -> None:
        C.positive_int("ShapesCNN()", "width", width)
        C.positive_int("ShapesCNN()", "classes", classes)
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, width), nn.MaxPool2d(2),
                                      block(width, 2 * width), nn.MaxPool2d(2),
                                      block(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _build_shapes(task: Task, seed: int):
    d = shapes_data()
    loader = Batches(shuffled_epochs(task.batch_size, d["x"], d["y"]), seed)
    return ShapesCNN(), loader, F.cross_entropy, accuracy_of(d["x_test"], d["y_test"])


# -- tiny_transformer: a causal transformer on the character corpus -------------------------
TT_CONTEXT = 32
TT_VAL_WINDOWS = 128


class CausalBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))`` under a causal mask
    (``scaled_dot_product_attention``), then ``x + mlp(ln(x))`` (GELU, width 4 ``d``)."""

    def __init__(self, d: int, heads: int) -> None:
        C.positive_int("CausalBlock()", "d", d)
        C.positive_int("CausalBlock()", "heads", heads)
        if d % heads:
            raise ValueError(f"CausalBlock(): d must be a multiple of heads ({heads}), got {d}")
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """A decoder-only character model: token and learned position embeddings, ``layers``
    ``CausalBlock``s (``heads`` heads, no dropout), a final LayerNorm and a linear head."""

    def __init__(self, vocab: int = len(D.VOCAB), d: int = 64, heads: int = 4,
                 layers: int = 2, context: int = TT_CONTEXT) -> None:
        for name, v in (("vocab", vocab), ("d", d), ("heads", heads), ("layers", layers),
                        ("context", context)):
            C.positive_int("TinyTransformer()", name, v)
        if d % heads:
            raise ValueError(f"TinyTransformer(): d must be a multiple of heads ({heads}), "
                             f"got {d}")
        super().__init__()  # (CausalBlock checks d and heads again)
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.Sequential(*(CausalBlock(d, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[:x.shape[1]]
        return self.head(self.norm(self.blocks(h)))


def _build_tiny_transformer(task: Task, seed: int):
    batches, val_loss = _char_stream(task, seed, TT_CONTEXT, TT_VAL_WINDOWS)
    return TinyTransformer(), batches, next_char_loss, val_loss


# -- noisy_regression: teacher-student MLP regression with label noise -----------------------
REG_DIM, REG_TRAIN, REG_TEST = 16, 4096, 4096
REG_NOISE = 0.5


@functools.lru_cache(maxsize=1)
def regression_data() -> dict[str, torch.Tensor]:
    """A random teacher MLP 16-32-1 (tanh; weights N(0, 1/fan_in)), its output scaled to
    unit variance over the inputs x ~ N(0, I): 4,096 training pairs with labels
    ``teacher(x) + REG_NOISE * N(0, 1)``, and 4,096 test inputs with their clean outputs.
    The same for every seed."""
    g = torch.Generator().manual_seed(1415)
    w1 = torch.randn(REG_DIM, 32, generator=g) / math.sqrt(REG_DIM)
    w2 = torch.randn(32, 1, generator=g) / math.sqrt(32)

    def teacher(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w1) @ w2

    x = torch.randn(REG_TRAIN + REG_TEST, REG_DIM, generator=g)
    clean = teacher(x)
    clean = (clean - clean[:REG_TRAIN].mean()) / clean[:REG_TRAIN].std()
    noise = REG_NOISE * torch.randn(REG_TRAIN, 1, generator=g)
    return {"x": x[:REG_TRAIN], "y": clean[:REG_TRAIN] + noise, "x_test": x[REG_TRAIN:],
            "y_test": clean[REG_TRAIN:]}


def _student() -> nn.Module:
    return nn.Sequential(nn.Linear(REG_DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 1))


def _build_regression(task: Task, seed: int):
    d = regression_data()

    def test_mse(model: nn.Module) -> float:
        with torch.no_grad():
            return float(F.mse_loss(model(d["x_test"]), d["y_test"]))

    loader = Batches(shuffled_epochs(task.batch_size, d["x"], d["y"]), seed)
    return _student(), loader, F.mse_loss, test_mse


# -- their registry ----------------------------------------------------------------------------
register(Task(
    "shapes_bn", "2-D CNN with BatchNorm (3 conv blocks, global pooling) on 16x16 images of "
    "8 generated shapes with noise; test accuracy in eval mode",
    steps=600, batch_size=32, metric="test_accuracy", higher_is_better=True, target=0.8,
    reference=Recipe("Adam", 3e-2), builder=_build_shapes), held_out=True)
register(Task(
    "tiny_transformer", "causal transformer (2 pre-norm layers, d=64, 4 heads, context 32) "
    "on char_lm's corpus; validation loss (nats per character)",
    steps=400, batch_size=16, metric="val_loss", higher_is_better=False, target=2.1,
    reference=Recipe("Adam", 3e-3), builder=_build_tiny_transformer), held_out=True)
register(Task(
    "noisy_regression", "teacher-student MLP regression (16-64-64-1 student, tanh teacher), "
    "4,096 training labels with noise sd 0.5; test MSE against the clean teacher",
    steps=1500, batch_size=64, metric="clean_test_mse", higher_is_better=False, target=0.065,
    reference=Recipe("Adam", 1e-3), builder=_build_regression), held_out=True)
