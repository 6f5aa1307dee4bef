"""Properties every schedule shares: vectorised = scalar, round trips, validation, parsing."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import SpecError
from lrkit import schedules as S
from strategies import ALL, any_schedule


def test_every_registered_schedule_has_a_strategy():
    assert set(S.REGISTRY) == set(ALL)


@given(any_schedule, st.lists(st.integers(0, 2000), min_size=1, max_size=20))
def test_vectorised_equals_scalar(s, steps):
    values = s(np.asarray(steps))
    assert values.dtype == np.float64 and values.shape == (len(steps),)
    for n, v in zip(steps, values):
        scalar = s(n)
        assert isinstance(scalar, float)
        assert scalar == v  # bit for bit: one formula, one numpy path


@given(any_schedule)
def test_shapes_and_types(s):
    assert s(np.arange(12).reshape(3, 4)).shape == (3, 4)
    assert isinstance(s(np.int64(3)), float)
    assert isinstance(s(np.asarray(5)), float)
    assert s(np.arange(0)).shape == (0,)
    assert np.all(np.isfinite(s(np.arange(500))))
    assert np.all(s(np.arange(500)) >= 0)


@given(any_schedule)
def test_config_round_trip(s):
    config = s.to_config()
    again = S.from_config(json.loads(json.dumps(config)))
    assert again == s
    n = np.arange(600)
    np.testing.assert_array_equal(again(n), s(n))


@given(any_schedule)
def test_text_round_trip(s):
    text = str(s)
    again = S.parse(text)
    assert again == s, text
    assert str(again) == text
    n = np.arange(600)
    np.testing.assert_array_equal(again(n), s(n))


@given(any_schedule)
def test_pickle_round_trip(s):
    assert pickle.loads(pickle.dumps(s)) == s


def test_text_reads_like_python_calls():
    s = S.parse("warmup(cosine(3e-4, total=10000), steps=500)")
    assert s == S.warmup(S.cosine(3e-4, total=10000), steps=500)
    assert S.parse("one_cycle(0.1, total=5000)") == S.one_cycle(0.1, total=5000)
    assert S.parse("cosine(0.1, 1000) * 0.5") == S.cosine(0.1, 1000) * 0.5
    assert S.parse("2 * cosine(0.1, 1000)")(0) == pytest.approx(0.2)
    assert S.parse("0.01") == S.constant(0.01)
    assert S.parse("step(0.1, every=1_000)") == S.step(0.1, 1000)
    assert S.parse("wsd(1e-3, total=100, shape='cosine')").params["shape"] == "cosine"
    assert S.parse("join([constant(0.1), cosine(0.1, 10)], boundaries=[5])")(6) == \
        pytest.approx(S.cosine(0.1, 10)(1))
    assert S.parse(str(S.cosine(0.1, 10))) == S.cosine(0.1, 10)


@pytest.mark.parametrize(
    "text, position, expected",
    [
        ("warmup(cosine(3e-4, total=10000 x), steps=500)", 32, "',' or ')'"),
        ("cosine(0.1, total=100", 21, "',' or ')'"),
        ("cosine 0.1", 7, "'('"),
        ("", 0, "a schedule"),
        ("cosine(0.1, total=0)", 12, "total must be a positive integer"),  # the argument
        ("nosuch(1)", 0, "unknown schedule 'nosuch'"),
        ("cosine(0.1, total=10, total=20)", 22, "given twice"),
        ("cosine(total=10, 0.1)", 17, "positional argument cannot follow"),
        ("cosine(0.1, 10) $", 16, "unexpected character '$'"),
        ("cosine(0.1, 10, bogus=3)", 16, "unknown argument 'bogus'; it takes lr, total, end"),
        ("cosine(0.1, totl=10)", 12, "cosine(): unknown argument 'totl'"),  # issue 16
        ("warmup(20, cosine(1.0, total=180))", 7, "s must be a Schedule"),
        ("cosine(0.1, -3)", 12, "total must be a positive integer"),
        ("[1, 2]", 0, "expected a schedule"),
        # the counts as written, no `self`, the schedule's own name, at the first extra one
        ("cosine(0.1, 3, 0.0, 1)", 20,
         "cosine() takes from 2 to 3 positional arguments (lr, total, end) but 4 were given"),
        ("constant(0.1, 0.2)", 14, "constant() takes 1 positional argument (lr) but 2 were"),
        ("cosine(0.1)", 0, "cosine(): missing argument 'total'"),
        ("cosine(0.1, 10, lr=0.2)", 16, "cosine(): argument 'lr' given twice"),
        # digits and spaces as Python reads them: ASCII only
        ("cosine(0.1, total=\u0661\u0660)", 18, "unexpected character '\u0661'"),
        ("constant(\uff10.\uff15)", 9, "unexpected character '\uff10'"),
        ("constant(" + "1" * 5000 + ")", 9, "integer of 5000 digits is too long"),
    ],
)
def test_spec_errors_point_at_the_position(text, position, expected):
    with pytest.raises(SpecError) as info:
        S.parse(text)
    message = str(info.value)
    assert f"at position {position}" in message
    assert expected in message
    line, caret_line = message.splitlines()[-2:]  # the caret under the character (or end)
    assert (line + " ")[caret_line.index("^")] == (text + " ")[position]


@given(st.text(max_size=80))
@settings(max_examples=400)
def test_parse_fuzz_raises_only_spec_error(text):
    try:
        S.parse(text)
    except SpecError:
        pass


@given(st.text(alphabet="cosinewarmup(),=[]*0123456789.e-_ 'x", max_size=60))
@settings(max_examples=400)
def test_parse_fuzz_near_the_grammar(text):
    try:
        S.parse(text)
    except SpecError:
        pass


def test_parse_rejects_deep_nesting():
    with pytest.raises(SpecError, match="nested deeper"):
        S.parse("(" * 500 + "0.1" + ")" * 500)


@given(st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=10))
def test_from_config_fuzz_raises_only_spec_error(config):
    try:
        S.from_config(config)
    except SpecError:
        pass


@given(any_schedule, st.data())
def test_from_config_with_a_mangled_argument_raises_spec_error(s, data):
    config = s.to_config()
    key = data.draw(st.sampled_from(sorted(config)))
    config[key] = data.draw(st.none() | st.text(max_size=3) | st.floats() | st.integers())
    try:
        S.from_config(config)
    except SpecError:
        pass


# -- invalid arguments: ValueError naming the argument, at construction ---------------------
INVALID = [
    (S.time_based, (-0.1, 0.1), "lr"),
    (S.time_based, (0.1, -1.0), "decay"),
    (S.step_based, (0.1, 1.5, 10), "drop"),
    (S.step_based, (0.1, 0.0, 10), "drop"),
    (S.step_based, (0.1, 0.5, 0), "every"),
    (S.exponential, (0.1, -0.1), "decay"),
    (S.exponential, (float("nan"), 0.1), "lr"),
    (S.constant, (-1.0,), "lr"),
    (S.linear, (0.1, 0.0, 0), "total"),
    (S.step, (0.1, 0), "every"),
    (S.step, (0.1, 10, -0.5), "gamma"),
    (S.multistep, (0.1, [5, 3]), "milestones"),
    (S.multistep, (0.1, [0, 3]), "milestones[0]"),
    (S.inverse_time, (0.1, -1.0), "rate"),
    (S.inverse_time, (0.1, 1.0, 0), "every"),
    (S.exponential_decay, (0.1, 0.0), "rate"),
    (S.polynomial, (0.1, 0), "total"),
    (S.polynomial, (0.1, 10, 0.0, 0.0), "power"),
    (S.polynomial, (-0.1, 10), "lr"),
    (S.cosine, (0.1, 0), "total"),
    (S.cosine, (0.1, 10, -1.0), "end"),
    (S.cosine_restarts, (0.1, 0), "period"),
    (S.cosine_restarts, (0.1, 10, 0), "mult"),
    (S.cyclic, (0.1, 0.01, 10), "high"),
    (S.cyclic, (0.01, 0.1, 0), "up"),
    (S.cyclic, (0.01, 0.1, 10, 0), "down"),
    (S.cyclic, (0.01, 0.1, 10, None, "sawtooth"), "mode"),
    (S.cyclic, (0.01, 0.1, 10, None, "exp_range", 1.5), "gamma"),
    (S.one_cycle, (0.0, 100), "max_lr"),
    (S.one_cycle, (0.1, 0), "total"),
    (S.one_cycle, (0.1, 100, 1.5), "pct_start"),
    (S.one_cycle, (0.1, 100, 0.3, "cubic"), "anneal"),
    (S.one_cycle, (0.1, 100, 0.3, "cos", 0.0), "div"),
    (S.one_cycle, (0.1, 100, 0.3, "cos", 25.0, -1.0), "final_div"),
    (S.one_cycle, (0.1, 2, 0.3), "phase"),
    (S.piecewise, ([10, 5], [0.1, 0.2, 0.3]), "boundaries"),
    (S.piecewise, ([10], [0.1]), "values"),
    (S.inverse_sqrt, (0.1, 0), "warmup"),
    (S.wsd, (0.1, 0), "total"),
    (S.wsd, (0.1, 100, 0, 1.5), "decay"),
    (S.wsd, (0.1, 100, -1), "warmup"),
    (S.wsd, (0.1, 100, 90, 0.2), "warmup"),
    (S.wsd, (0.1, 100, 0, 0.2, 0.0, "cubic"), "shape"),
    (S.warmup, (S.constant(0.1), -1), "steps"),
    (S.join, ([S.constant(0.1), S.constant(0.2)], []), "boundaries"),
    (S.clip, (S.constant(0.1), 0.5, 0.1), "high"),
]


@pytest.mark.parametrize("make, args, name", INVALID,
                         ids=[f"{m.name}-{n}" for m, _, n in INVALID])
def test_invalid_arguments_raise_value_error_naming_them(make, args, name):
    with pytest.raises(ValueError, match=re.escape(name)) as info:
        make(*args)
    assert f"{make.name}()" in str(info.value)


@pytest.mark.parametrize("bad", ["0.1", None, [0.1], True])
def test_wrong_types_raise_type_error(bad):
    with pytest.raises(TypeError, match="lr"):
        S.cosine(bad, 10)


def test_every_schedule_has_an_invalid_argument_case():
    assert {m.name for m, _, _ in INVALID} >= set(S.REGISTRY) - {"product"}
    with pytest.raises(TypeError, match="factors"):
        S.product(["x"])


def test_steps_are_validated():
    s = S.cosine(0.1, 10)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s(-1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s(np.array([0, -3]))
    with pytest.raises(ValueError, match="integer"):
        s(1.5)
    with pytest.raises(TypeError):
        s("3")


def test_a_million_steps_is_one_vectorised_call():
    n = np.arange(1_000_000)
    for s in [S.cosine(0.1, 10**6), S.warmup(S.wsd(0.1, 10**6), 1000),
              S.time_based(0.1, 1e-9), S.one_cycle(0.1, 10**6)]:
        values = s(n)
        assert values.shape == n.shape and np.all(np.isfinite(values))


def test_products_and_clip():
    a, b = S.cosine(0.1, 100), S.linear(1.0, 0.5, 100)
    n = np.arange(150)
    np.testing.assert_allclose((a * b)(n), a(n) * b(n), rtol=1e-15)
    np.testing.assert_allclose((a * 3)(n), 3 * a(n), rtol=1e-15)
    np.testing.assert_allclose((3 * a)(n), 3 * a(n), rtol=1e-15)
    np.testing.assert_allclose(S.clip(a, 0.01, 0.05)(n), np.clip(a(n), 0.01, 0.05))
    assert str(a * b * 2.0) == "cosine(0.1, total=100) * linear(1.0, end=0.5, total=100) * 2.0"


def test_warmup_and_join_semantics():
    base = S.cosine(1.0, 10)
    w = S.warmup(base, 4, start=0.2)
    np.testing.assert_allclose(w(np.arange(4)), [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(w(np.arange(4, 15)), base(np.arange(11)))
    j = S.join([S.constant(1.0), base], [3])
    np.testing.assert_allclose(j(np.arange(8)), [1, 1, 1, *base(np.arange(5))])


def test_piecewise_boundaries_are_inclusive_below():
    s = S.piecewise([3, 6], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(s(np.arange(8)), [0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3])


def test_wsd_shapes():
    for shape in ["linear", "cosine", "sqrt"]:
        s = S.wsd(1.0, 100, warmup=10, decay=0.2, end=0.1, shape=shape)
        v = s(np.arange(120))
        assert v[0] == 0 and v[5] == pytest.approx(0.5) and v[10] == 1.0 and v[79] == 1.0
        assert v[80] == 1.0 and v[100] == pytest.approx(0.1) and v[119] == pytest.approx(0.1)
        assert np.all(np.diff(v[80:101]) <= 0)
    assert S.wsd(1.0, 100, shape="sqrt")(90) == pytest.approx(1 - 0.5 ** 0.5)
    assert S.wsd(1.0, 100, shape="cosine")(90) == pytest.approx(0.5)


def test_inverse_sqrt_values():
    s = S.inverse_sqrt(1.0, 100)
    assert s(0) == 0.0 and s(50) == 0.5 and s(100) == 1.0 and s(400) == pytest.approx(0.5)


def test_schedules_import_no_torch():
    import subprocess
    import sys

    code = "import sys; from lrkit import schedules; import lrkit; " \
           "assert 'torch' not in sys.modules, 'torch'; " \
           "assert 'keras' not in sys.modules and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("make", [
    lambda big: S.cosine(0.1, total=big),
    lambda big: S.cyclic(0.01, 0.1, up=big),
    lambda big: S.step(0.1, every=big),
    lambda big: S.multistep(0.1, [10, big], 0.5),
    lambda big: S.warmup(S.constant(0.1), steps=big),
    lambda big: S.wsd(0.1, total=big),
    lambda big: S.family("cosine", 0.1, big, warmup=0.1),
    lambda big: S.family("wsd", 0.1, big),
], ids=["cosine", "cyclic", "step", "multistep", "warmup", "wsd", "family", "family-wsd"])
def test_integer_arguments_past_float64s_exact_range_are_refused(make):
    """Schedules are evaluated in float64, which counts steps exactly up to 2**53: beyond,
    a clear error (a 400-digit ``up`` overflowed float() at the first evaluation)."""
    assert make(2**53)(0) >= 0
    for big in (2**53 + 1, 10**400):
        with pytest.raises(ValueError, match=r"must be at most 2\*\*53"):
            make(big)
    with pytest.raises(S.SpecError, match="must be at most 2"):
        S.as_schedule("cyclic(0.01, 0.1, up=1e308)")


def test_every_schedule_refuses_a_huge_number_with_a_value_error():
    """A 400-digit integer for any argument of any schedule (or family) is a ValueError
    or TypeError naming the argument, never float()'s OverflowError, and the message
    does not print the 400 digits."""
    import inspect

    from lrkit.schedules.registry import REGISTRY

    big = 10**400
    tried = 0
    for name, cls in sorted(REGISTRY.items()):
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
        for p in params:
            args = {q.name: 10 for q in params if q.default is inspect.Parameter.empty}
            args[p.name] = big
            try:
                cls(**args)
            except (ValueError, TypeError) as exc:
                assert len(str(exc)) < 400, (name, p.name, str(exc)[:200])
            tried += 1
    for fam in S.FAMILIES:
        with pytest.raises(ValueError, match="steps must be at most 2"):
            S.family(fam, 0.1, big)
        with pytest.raises(ValueError, match="peak must be a finite number, got an integer"):
            S.family(fam, big, 100)
    assert tried > 50


# -- regressions from the fuzz sweep of the schedule layer -----------------------------------
def reference_warmups(depth: int, steps: int, start: float, inner: float, n: int) -> float:
    """``depth`` warmups around ``constant(inner)`` at step n, in plain Python floats with
    the operations of ``Warmup._eval`` in its order (so equal bit for bit)."""
    if depth == 0:
        return inner
    if n >= steps:
        return reference_warmups(depth - 1, steps, start, inner, n - steps)
    first = reference_warmups(depth - 1, steps, start, inner, 0)
    return start + (first - start) * (n / steps)


def test_nested_warmups_evaluate_in_linear_time():
    """Each warmup evaluates its schedule once (on the steps with step 0 appended): 45
    levels, text the parser accepts, took years when each level evaluated it twice."""
    depth = 45
    text = "warmup(" * depth + "constant(0.1)" + ", steps=3, start=0.01)" * depth
    s = S.parse(text)
    n = np.array([0, 1, 2, 3, 7, 44, 134, 135, 136, 500])
    expected = [reference_warmups(depth, 3, 0.01, 0.1, k) for k in n.tolist()]
    assert s(n).tolist() == expected
    assert [s(int(k)) for k in n] == expected
    assert s(np.arange(12).reshape(3, 4)).shape == (3, 4)
    assert s(np.arange(0)).shape == (0,)


def test_from_config_too_deep_or_self_referencing_is_a_spec_error():
    deep = {"name": "constant", "lr": 0.1}
    for _ in range(1000):
        deep = {"name": "warmup", "s": deep, "steps": 1}
    lists: list = [5]
    for _ in range(1000):
        lists = [lists]
    loop: dict = {"name": "warmup", "steps": 1}
    loop["s"] = loop
    for config in (deep, {"name": "join", "schedules": [{"name": "constant", "lr": 0.1}],
                          "boundaries": lists}, loop):
        with pytest.raises(SpecError, match="nested too deeply"):
            S.from_config(config)
    ok = {"name": "constant", "lr": 0.1}
    for _ in range(50):
        ok = {"name": "warmup", "s": ok, "steps": 1}
    assert S.from_config(ok)(60) == 0.1


@pytest.mark.parametrize("s", [
    S.product([S.cosine(0.1, total=10)]),
    S.product([0.5]),
    S.product([0.5, 2.0]),
    S.product([2, S.cosine(0.1, total=10), 0.5]),
    S.warmup(S.product([0.5]), steps=1),
    S.clip(S.product([0.5, 2.0]), low=0.1),
    S.join([S.product([S.constant(0.1)]), S.cosine(0.1, 10) * 0.5], [3]),
], ids=["one-schedule", "one-number", "numbers", "mixed", "in-warmup", "in-clip", "in-join"])
def test_products_read_back_from_text_and_repr(s):
    again = S.parse(str(s))
    assert again == s and type(again) is type(s), str(s)
    if isinstance(s, S.Product):  # its repr is Python (with S = lrkit.schedules)
        assert eval(repr(s), {"S": S}) == s
    np.testing.assert_array_equal(again(np.arange(20)), s(np.arange(20)))


def test_as_schedule_takes_numpy_and_0_dim_numbers():
    for value in (np.float32(0.25), np.float64(0.25), np.int64(1), np.array(0.25)):
        assert S.as_schedule(value) == S.constant(float(value))
    for bad in (np.bool_(True), np.array(True), np.array([0.1]), 1j):
        with pytest.raises(TypeError, match="value must be a Schedule, spec text or a real"):
            S.as_schedule(bad)
    with pytest.raises(ValueError, match="non-negative finite number, got np.float32"):
        S.as_schedule(np.float32(-1))
    torch = pytest.importorskip("torch")
    assert S.as_schedule(torch.tensor(0.25)) == S.constant(0.25)
    with pytest.raises(TypeError, match="real number, got tensor"):
        S.as_schedule(torch.tensor(True))


def test_peak_validates_steps_and_bounds_its_work():
    s = S.warmup(S.cosine(0.5, total=10**12), steps=1000)
    assert s.peak(1) == 0.0 and s.peak(1001) == 0.5 and s.peak(np.int64(2000)) == 0.5
    assert s.peak(10**12) == 0.5  # the first 2**20 steps count one by one
    rise = S.one_cycle(1.0, total=10**12)  # peaks at step 3e11 - 1, between samples
    assert rise.peak(10**12) == pytest.approx(1.0, rel=1e-9)
    for bad, kind in [(0, ValueError), (-1, ValueError), (1.5, ValueError),
                      (2**53 + 1, ValueError), ("3", TypeError), (True, TypeError),
                      (None, TypeError)]:
        with pytest.raises(kind, match=r"peak\(\): steps must be"):
            s.peak(bad)


def test_plot_schedules_names_a_bad_label_or_axes():
    pytest.importorskip("matplotlib")
    from lrkit.plot import plot_schedules

    s = S.cosine(0.1, 10)
    for labels in ([1], [None]):
        with pytest.raises(TypeError, match=r"labels\[0\] must be a string, got"):
            plot_schedules([s], 10, labels=labels)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None, got 5"):
        s.plot(10, ax=5)


def test_tensor_steps_that_require_grad_or_are_bfloat16_are_read():
    torch = pytest.importorskip("torch")
    s = S.cosine(0.1, total=10)
    assert s(torch.tensor(5.0, requires_grad=True)) == s(5)
    np.testing.assert_array_equal(s(torch.tensor([1.0, 5.0], dtype=torch.bfloat16)),
                                  s(np.array([1, 5])))
    np.testing.assert_array_equal(s(torch.arange(4)), s(np.arange(4)))
    with pytest.raises(TypeError, match="step must be an integer"):
        s(torch.tensor([True]))


@pytest.mark.parametrize("make, match", [
    (lambda: S.constant(1e300) * 1e300, "multiply past float64's largest number"),
    (lambda: S.product([1e300, S.cosine(0.1, 10), 1e300]), "multiply past"),
    (lambda: S.cosine(1.7976931348623157e308, total=10), "lr and end must differ by at most"),
    (lambda: S.cosine(0.0, total=10, end=1e308), "lr and end must differ"),
    (lambda: S.cosine_restarts(1.7e308, period=10), "lr and end must differ"),
    (lambda: S.one_cycle(1e300, total=100, div=1e-10), "must be finite"),
    (lambda: S.one_cycle(1e300, total=100, final_div=1e-10), "must be finite"),
    (lambda: S.multistep(1e300, [1, 2, 3], gamma=1e5), r"lr \* gamma \*\* 3"),
], ids=["product", "product-mixed", "cosine", "cosine-end", "restarts", "one_cycle-div",
        "one_cycle-final", "multistep"])
def test_finite_arguments_that_would_give_an_infinite_rate_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_products_of_large_factors_that_stay_finite_are_kept():
    assert (S.constant(0.0) * 1e300 * 1e300)(3) == 0.0
    assert (S.constant(1e300) * 1e-300)(0) == pytest.approx(1.0)
    assert S.cosine(8e307, total=10)(0) == 8e307
    with pytest.raises(SpecError, match="multiply past"):
        S.parse("product([1e300, 1e300])")
