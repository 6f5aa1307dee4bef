import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "lrkit", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("lrkit")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and two xdist workers on two cores then
    do not oversubscribe them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["native", "python"])
def kept_plans(request, monkeypatch):
    """Kept kernel plans (``lrkit.optim._kernel.GroupPlan``) confirmed by the native
    extension, or by the Python code it stands in for (as where it cannot be built)."""
    from lrkit.optim import _native
    if request.param == "python":
        monkeypatch.setitem(_native._state, "mod", None)
    elif _native.module() is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    return request.param


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Keep each ``xdist_group`` on one worker under ``--dist loadgroup``.

    pytest-xdist groups tests by a ``@group`` suffix it adds to each nodeid by setting
    ``item._nodeid``, which pytest 9 no longer reads (a node keeps its id in ``_id``): the
    groups were then split across the workers, and every worker ran the group's
    module fixtures (the distributed spawn, the resume run) once more. Add the suffix
    where pytest reads it, if xdist's did not take."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
