"""The held-out tasks (issue 14's held-out discipline): three problems outside the arena's
suites, never used to design or tune the autopilot or the range test's rule, on which a
self-tuning method is reported only at the end (``lrkit bench --suite heldout``).

They are ``Task``s like the arena's (``lrkit.bench.tasks``), registered in
``HELD_OUT`` instead of ``TASKS``, so the quick and full suites, ``lrkit tune`` and
``lrkit find`` never see them; ``get_task`` finds them. Each trains its budget in about
2-5 s on one CPU thread; nothing is downloaded (the data is generated, or the Python
standard library's source, as ``char_lm``'s).

- ``shapes_bn``: a 2-D CNN (3 conv + BatchNorm blocks, global pooling) on 16x16 images of
  8 generated shapes (random position, size, contrast, background gradient; pixel noise);
  test accuracy, in eval mode (BatchNorm's running statistics).
- ``tiny_transformer``: a causal transformer (2 pre-norm layers, d=64, 4 heads, context
  32) on ``char_lm``'s corpus; validation loss in nats per character.
- ``noisy_regression``: teacher-student regression, a student MLP 16-64-64-1 (ReLU) fit
  to 4,096 labels of a random teacher MLP 16-32-1 (tanh) with Gaussian label noise of sd
  0.5 (the teacher's output has unit variance); the metric is the MSE on 4,096 fresh
  inputs against the teacher's *clean* outputs, the excess risk: what fitting the noise
  costs is measured, the irreducible noise (0.25) is not included.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lrkit import _checks as C
from lrkit.bench import data as D
from lrkit.bench.tasks import (
    Batches,
    Recipe,
    Task,
    accuracy_of,
    next_char_loss,
    register,
    shuffled_epochs,
)

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
    text = torch.from_numpy(D.corpus())
    split = int(0.9 * len(text))
    train, val = text[:split], text[split:]
    stride = (len(val) - TT_CONTEXT - 1) // TT_VAL_WINDOWS
    windows = torch.arange(TT_VAL_WINDOWS) * stride
    val_x = torch.stack([val[i:i + TT_CONTEXT] for i in windows])
    val_y = torch.stack([val[i + 1:i + TT_CONTEXT + 1] for i in windows])

    def stream(g: torch.Generator):
        offsets = torch.arange(TT_CONTEXT + 1)
        while True:
            starts = torch.randint(0, len(train) - TT_CONTEXT - 1, (task.batch_size, 1),
                                   generator=g)
            chunk = train[starts + offsets]
            yield chunk[:, :-1], chunk[:, 1:]

    def val_loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(next_char_loss(model(val_x), val_y))

    return TinyTransformer(), Batches(stream, seed), next_char_loss, val_loss


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


# -- the registry ----------------------------------------------------------------------------
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
