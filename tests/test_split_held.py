"""``lrkit.loop.split_held``: batches held out of a loader's data, and the loader over the
rest, for loaders whose data can be split without changing how they load; and the
autopilot's probes scored on them (data the search has not trained on)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lrkit import pilot
from lrkit.bench.tasks import Batches, shuffled_epochs
from lrkit.loop import HELD_OUT_RATIO, split_held


def _indexed(n: int) -> TensorDataset:
    """Examples whose input's first entry is their index."""
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], torch.randn(n, 3)], 1)
    return TensorDataset(x, torch.randn(n, 1))


def _ids(batches) -> list[int]:
    return [int(i) for b in batches for i in b[0][:, 0]]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_dataloader_is_split_into_held_examples_and_a_loader_over_the_rest(shuffle, seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(300, 500, (), generator=gen))
    bs = int(torch.randint(3, 9, (), generator=gen))
    drop_last = bool(seed % 2)
    loader = DataLoader(_indexed(n), batch_size=bs, shuffle=shuffle, drop_last=drop_last)
    held, rest = split_held(loader, 4, seed)
    assert len(held) == 4 and all(len(b[0]) == bs for b in held)
    held_ids = _ids(held)
    seen = _ids(rest)
    assert len(set(held_ids)) == 4 * bs and not set(held_ids) & set(seen)
    if not drop_last:
        assert sorted(held_ids + seen) == list(range(n))  # nothing lost
    assert rest.batch_size == bs and rest.drop_last == drop_last
    assert type(rest.sampler) is type(loader.sampler)
    if not shuffle:
        assert seen == sorted(seen)  # the rest in the dataset's order, as the loader loads
    assert split_held(loader, 4, seed)[0][0][0].equal(held[0][0])  # seeded: the same split
    assert not split_held(loader, 4, seed + 1)[0][0][0].equal(held[0][0])


def test_too_little_data_or_an_unsplittable_loader_gives_none():
    bs = 8
    small = DataLoader(_indexed(4 * bs * (HELD_OUT_RATIO + 1) - 1), batch_size=bs)
    assert split_held(small, 4) is None
    enough = DataLoader(_indexed(4 * bs * (HELD_OUT_RATIO + 1)), batch_size=bs)
    assert split_held(enough, 4) is not None

    class Every(Sampler):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(range(self.n))

        def __len__(self):
            return self.n

    ds = _indexed(1000)
    assert split_held(DataLoader(ds, batch_size=bs, sampler=Every(1000)), 4) is None
    assert split_held(DataLoader(ds, batch_size=None), 4) is None
    from torch.utils.data import RandomSampler

    for sampler in (RandomSampler(ds, replacement=True), RandomSampler(ds, num_samples=500)):
        assert split_held(DataLoader(ds, batch_size=bs, sampler=sampler), 4) is None
    assert split_held((b for b in [ds[0]] * 100), 4) is None
    with pytest.raises(ValueError):
        split_held(enough, 0)
    with pytest.raises(TypeError):
        split_held(3, 4)


def test_the_rest_keeps_the_samplers_generator():
    """A random sampler's own generator shuffles the rest too (not the global RNG)."""
    from torch.utils.data import RandomSampler

    ds = _indexed(400)
    orders = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(7)
        loader = DataLoader(ds, batch_size=8, sampler=RandomSampler(ds, generator=g))
        _, rest = split_held(loader, 4)
        assert rest.sampler.generator is g
        orders.append(_ids(rest))
    assert orders[0] == orders[1]


def test_a_list_of_batches_holds_its_last_ones():
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2, 1)) for i in range(50)]
    held, rest = split_held(batches, 4)
    assert [int(b[0][0]) for b in held] == [46, 47, 48, 49]
    assert [int(b[0][0]) for b in rest] == list(range(46))
    assert split_held(batches[:4 * (HELD_OUT_RATIO + 1) - 1], 4) is None


def test_bench_streams_over_fixed_data_split_and_fresh_samples_do_not():
    x = torch.arange(400, dtype=torch.float32)[:, None]
    stream = Batches(shuffled_epochs(8, x, x * 2), seed=3)
    held, rest = stream.split_held(4, 0)
    held_ids = {int(v) for b in held for v in b[0][:, 0]}
    it = iter(rest)
    seen = {int(v) for _ in range(200) for v in next(it)[0][:, 0]}  # several epochs
    assert len(held_ids) == 32 and not held_ids & seen and len(seen) == 400 - 32
    assert all(b[1].equal(b[0] * 2) for b in held)  # the tensors stay paired
    fresh = Batches(lambda g: iter(lambda: (torch.randn(4, 1, generator=g),), None), 0)
    assert fresh.split_held(4, 0) is None and split_held(fresh, 4) is None


def test_the_autopilot_scores_its_probes_on_data_the_search_does_not_train_on():
    torch.manual_seed(0)
    loader = DataLoader(_indexed(512), batch_size=8, shuffle=True)
    seen: list[list[int]] = []
    in_run: list[int] = []

    def step_fn(model, batch):
        x, y = batch
        seen.append([int(i) for i in x[:, 0]])
        return nn.functional.mse_loss(model(x[:, 1:]), y)

    def callback(step, loss, lr):
        if not in_run:
            in_run.append(len(seen) - 1)  # the run's first batch

    model = nn.Linear(3, 1)
    report = pilot.autopilot(model, loader, step_fn=step_fn, steps=300, seed=5,
                             optimizer="sgd", callbacks=[callback], progress=False)
    held, _ = split_held(loader, pilot.HELD_BATCHES, 5)  # autopilot seeded torch with 5
    held_ids = set(_ids(held))
    search = {i for batch in seen[:in_run[0]] for i in batch}
    run = {i for batch in seen[in_run[0]:] for i in batch}
    # scoring evaluates the held batches through step_fn too: they are the only held ids
    # the search sees, always as whole held batches
    trained = {i for batch in seen[:in_run[0]] if set(batch) - held_ids for i in batch}
    assert not trained & held_ids and search & held_ids == held_ids
    assert held_ids <= run  # the run trains on all of the data
    assert any("held out of the loader" in d for d in report.decisions)
    assert not any("taken from the training stream" in d for d in report.decisions)


def test_the_report_says_the_run_trained_on_the_held_batches():
    """The predicted and realised scores are on the held batches; the run (not the
    probes) trained on them, and the report says so beside the two numbers."""
    torch.manual_seed(0)
    loader = DataLoader(_indexed(512), batch_size=8, shuffle=True)

    def step_fn(model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x[:, 1:]), y)

    report = pilot.autopilot(nn.Linear(3, 1), loader, step_fn=step_fn, steps=800, seed=5,
                             optimizer="sgd", progress=False)
    score = [d for d in report.decisions if d.startswith("score:")]
    assert len(score) == 1 and "the run trained on the held batches" in score[0]
    assert report.horizon["realised"] is not None
    x_val, y_val = _indexed(64).tensors

    def val_fn(model):  # data neither the probes nor the run train on
        return float(nn.functional.mse_loss(model(x_val[:, 1:]), y_val))

    torch.manual_seed(0)
    report = pilot.autopilot(nn.Linear(3, 1), loader, step_fn=step_fn, steps=800, seed=5,
                             optimizer="sgd", progress=False, val_fn=val_fn)
    score = [d for d in report.decisions if d.startswith("score:")]
    assert len(score) == 1 and "held batches" not in score[0]
