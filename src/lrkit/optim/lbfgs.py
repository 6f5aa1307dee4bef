r"""L-BFGS whose step length comes from one of lrkit's line searches, and says what it was.

The limited-memory BFGS method (Nocedal 1980; Liu & Nocedal 1989; Nocedal & Wright,
*Numerical Optimization*, 2nd ed. 2006, Algorithm 7.4/7.5): the direction
:math:`d_k = -H_k g_k` comes from the two-loop recursion over the last ``history_size``
curvature pairs :math:`(s_i, y_i) = (x_{i+1} - x_i, g_{i+1} - g_i)` (a pair is kept only
where :math:`y^\top s > 10^{-10}`), with the initial inverse Hessian
:math:`H^0_k = \frac{s^\top y}{y^\top y} I`; the step is :math:`x_{k+1} = x_k + t_k d_k`.
The *learning rate* of a quasi-Newton method is that step length :math:`t_k`: the first
iteration's guess is ``min(1, 1 / ||g||_1) * lr``, every later one ``lr``, and a line
search (``line_search_fn``) moves it to where its conditions hold:

* ``None``: no search, ``t = lr`` (the guess) every iteration;
* ``"strong_wolfe"``: :func:`lrkit.linesearch.strong_wolfe`, torch's own search, so that
  this class equals ``torch.optim.LBFGS`` (same arguments, same operations in the same
  order: bit for bit on the same machine);
* ``"armijo"``: :func:`lrkit.linesearch.armijo` (backtracking with quadratic
  interpolation; a pair with :math:`y^\top s \le 10^{-10}` is skipped, as always);
* ``"hager_zhang"``: :func:`lrkit.linesearch.hager_zhang` (approximate Wolfe).

Same constructor, defaults, iteration and stopping rules as ``torch.optim.LBFGS`` (one
``step(closure)`` runs up to ``max_iter`` iterations and ``max_eval`` evaluations, and
stops early on ``tolerance_grad`` / ``tolerance_change``), one param group, and torch's
state_dict layout (the global state kept on the first parameter: ``d``, ``t``,
``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``,
``n_iter``, ``func_evals``, ``al``): a torch LBFGS state_dict loads here and the other way
round. Every call of the closure evaluates the loss and its gradient (the closure calls
``backward()``).

After each step: ``last_step_size`` (the step length of its last iteration),
``effective_lr(p)`` (that length, the same for every element: the multiplier of the
quasi-Newton direction ``-d``), ``explain()`` without an argument (a
:class:`QuasiNewtonStep`: step length, initial guess, curvature pairs used, line-search
evaluations and why it stopped, iterations), ``function_evals`` and
``total_function_evals``. ``callback(opt)`` (keyword-only, optional) is called after every
iteration inside ``step`` with the parameters at the new iterate (to record a curve when
one ``step`` runs many iterations).

``lr=0`` (a schedule's warmup from zero) takes no step; with a line search it also spends
no evaluation on it (torch's strong Wolfe search evaluates ``t = 0`` up to ``max_eval``
times there, to the same parameters).

Distributed: under DDP (every rank holds every parameter; the gradients are averaged) the
losses are averaged over the ranks too, so every rank takes the same steps. Under
ZeroRedundancyOptimizer or FSDP each rank would hold only part of the vectors L-BFGS
takes dot products of: not supported (DTensor parameters raise NotImplementedError).

Non-finite values: the loss and gradient of a step's first evaluation follow
``nonfinite=`` as in every lrkit optimizer ("raise": ``FloatingPointError`` for the loss,
``NonFiniteGradientError`` for the gradient; "skip": nothing changes and
``skipped_steps`` counts it; "zero": non-finite gradient entries count as zero, a
non-finite loss skips). A trial point of a line search whose loss or gradient is not
finite counts as a step that is too long. Without a line search, an iterate whose loss
or gradient is not finite is undone and the step ends there.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit import linesearch as LS
from lrkit.errors import NonFiniteGradientError
from lrkit.optim._distributed import world_size
from lrkit.optim._state_check import check_top
from lrkit.optim.base import Explained, LrkitOptimizer, check_lr, uniform

LINE_SEARCHES = (None, "strong_wolfe", "armijo", "hager_zhang")
STATE_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
              "prev_flat_grad", "prev_loss", "al")


class QuasiNewtonStep(NamedTuple):
    """What the last iteration of the last ``step`` did (``LBFGS.explain()``).

    step_size: the accepted step length ``t`` (0.0: no move).
    initial_step: the guess the search started from (``lr``, or ``min(1, 1/|g|_1) lr`` at
        the first iteration).
    curvature_pairs: the ``(s, y)`` pairs the direction was built from (0: steepest
        descent).
    h_diag: the scale of the initial inverse Hessian, ``s'y / y'y`` of the newest pair.
    line_search: the search used (None: fixed step).
    search_evals: evaluations the search took in that iteration.
    reason: why it stopped (``lrkit.linesearch.REASONS``; "fixed" without a search).
    iterations: iterations in the last ``step``.
    function_evals: evaluations in the last ``step``.
    directional_derivative: ``g'd`` at the start of the iteration (negative: descent).
    loss: the loss at the new iterate (at the old one where no evaluation followed the
        move: the last iteration of a fixed-step ``step``).
    """

    step_size: float
    initial_step: float
    curvature_pairs: int
    h_diag: float
    line_search: str | None
    search_evals: int
    reason: str
    iterations: int
    function_evals: int
    directional_derivative: float
    loss: float


class LBFGS(LrkitOptimizer):
    """L-BFGS (torch's constructor) with lrkit's line searches; see the module docstring."""

    needs_closure = True  # each iteration re-evaluates the loss (the line search's trials)
    recommended_lr = 1.0  # the first step guess: the quasi-Newton step itself
    display_name = "L-BFGS"
    supports_sparse = True  # as torch's LBFGS: a sparse gradient joins the flat one densified
    agree_across_ranks = True

    def __init__(self, params: Any, lr: float | Tensor = 1, max_iter: int = 20,
                 max_eval: int | None = None, tolerance_grad: float = 1e-7,
                 tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None, *, nonfinite: str = "raise",
                 impl: str = "auto",
                 callback: Callable[[LBFGS], None] | None = None) -> None:
        defaults = self._check_settings("LBFGS()", dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size,
            line_search_fn=line_search_fn))
        self.callback = C.optional_callable("LBFGS()", "callback", callback)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)
        del self.param_groups[0]["differentiable"]  # (torch's LBFGS has no such option)
        del self.defaults["differentiable"]
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS(): params must form one param group (L-BFGS keeps one "
                             "history over all parameters), got "
                             f"{len(self.param_groups)} groups")
        self._params = self.param_groups[0]["params"]
        self._numel_cache: int | None = None
        self._info: QuasiNewtonStep | None = None
        self._last_d: Tensor | None = None
        self._total_evals = 0

    @staticmethod
    def _check_settings(fn: str, s: dict[str, Any]) -> dict[str, Any]:
        out = dict(s)
        out["lr"] = check_lr(fn, s["lr"])
        out["max_iter"] = C.positive_int(fn, "max_iter", s["max_iter"])
        out["max_eval"] = (out["max_iter"] * 5 // 4 if s["max_eval"] is None
                           else C.positive_int(fn, "max_eval", s["max_eval"]))
        out["tolerance_grad"] = C.nonnegative(fn, "tolerance_grad", s["tolerance_grad"])
        out["tolerance_change"] = C.nonnegative(fn, "tolerance_change", s["tolerance_change"])
        out["history_size"] = C.positive_int(fn, "history_size", s["history_size"])
        if out["history_size"] > sys.maxsize:  # a list's length: beyond, an OverflowError
            raise ValueError(f"{fn}: history_size must be at most {sys.maxsize}, got "
                             f"{C.shown(s['history_size'])}")
        ls = s["line_search_fn"]
        if ls not in LINE_SEARCHES:
            allowed = "None or one of " + ", ".join(repr(x) for x in LINE_SEARCHES[1:])
            raise (ValueError if isinstance(ls, str) else TypeError)(
                f"{fn}: line_search_fn must be {allowed}, got {ls!r}")
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("LBFGS.add_param_group(): LBFGS supports one param group only "
                             "(one history over all parameters)")
        super().add_param_group(param_group)

    # -- flat views of the parameters (torch's helpers) -------------------------------------
    def _numel(self) -> int:
        if self._numel_cache is None:
            self._numel_cache = sum(2 * p.numel() if torch.is_complex(p) else p.numel()
                                    for p in self._params)
        return self._numel_cache

    def _gather_flat_grad(self) -> Tensor:
        views = []
        # which parameters the step saw a gradient of: a frozen or unused one (None, a zero
        # gradient here) is never moved, and explain() says it was not updated
        self._had_grad = [p.grad is not None for p in self._params]
        for p in self._params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            if torch.is_complex(view):
                view = torch.view_as_real(view).view(-1)
            views.append(view)
        return torch.cat(views, 0)

    def _add_grad(self, step_size: Any, update: Tensor) -> None:
        offset = 0
        for p in self._params:
            if torch.is_complex(p):
                p = torch.view_as_real(p)
            numel = p.numel()
            p.add_(update[offset:offset + numel].view_as(p), alpha=step_size)
            offset += numel

    def _clone_param(self) -> list[Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self._params]

    def _set_param(self, params_data: list[Tensor]) -> None:
        for p, pdata in zip(self._params, params_data):
            p.copy_(pdata)

    def _slice(self, p: Tensor, flat: Tensor) -> Tensor:
        """``p``'s part of a flat vector, shaped like ``p`` (real view for complex)."""
        offset = 0
        for q in self._params:
            n = 2 * q.numel() if torch.is_complex(q) else q.numel()
            if q is p:
                part = flat[offset:offset + n]
                return (torch.view_as_complex(part.view(*p.shape, 2)) if torch.is_complex(p)
                        else part.view_as(p))
            offset += n
        raise ValueError("LBFGS: this tensor is not one of the optimizer's parameters")

    # -- reporting -------------------------------------------------------------------------
    @property
    def last_step_size(self) -> float:
        """The step length of the last iteration of the last step (0.0 before any)."""
        return self._info.step_size if self._info is not None else 0.0

    @property
    def function_evals(self) -> int:
        """Closure calls in the last ``step``."""
        return self._info.function_evals if self._info is not None else 0

    @property
    def total_function_evals(self) -> int:
        """Closure calls over every step (torch's ``state['func_evals']``, which a saved
        state_dict carries)."""
        state = self.state.get(self._params[0]) or {}
        return int(state.get("func_evals", 0))

    def explain(self, param: Tensor | None = None) -> Any:  # type: ignore[override]
        """Without ``param``: the :class:`QuasiNewtonStep` of the last iteration (step
        length, initial guess, curvature pairs...). With one: its :class:`Explained`,
        ``update = t * d`` of the last iteration: ``eta`` the step length (uniform),
        ``direction`` the quasi-Newton direction ``-d`` (``H g``), no decay."""
        if self._info is None:
            raise ValueError("LBFGS.explain(): no step has been taken yet")
        if param is None:
            return self._info
        had = getattr(self, "_had_grad", None)
        for q, seen in zip(self._params, had or ()):
            if q is param and not seen:
                raise ValueError("LBFGS.explain(): this parameter has not been updated by a "
                                 "step of this optimizer yet (it had no gradient)")
        d = self._slice(param, self._last_d).detach()
        t = self._info.step_size
        return Explained(uniform(t, param.detach()), -d, 0.0, d * t)

    def estimated_lr(self) -> list[float]:
        """The last step length (as the line-search optimizers report it)."""
        return [self.last_step_size]

    # -- the step ---------------------------------------------------------------------------
    def _evaluate(self, closure: Callable) -> tuple[Tensor, float, Tensor]:
        with torch.enable_grad():
            orig = closure()
        if not isinstance(orig, (Tensor, float, int)) or (
                isinstance(orig, Tensor) and orig.numel() != 1):
            raise TypeError("LBFGS.step(): the closure must return the loss (a number or a "
                            f"one-element tensor), got {type(orig).__name__}")
        return orig, self._value(orig), self._gather_flat_grad()

    def _value(self, loss: Any) -> float:
        """The closure's loss as a Python float; in a multi-process run (DDP: each rank
        evaluates its part of the batch) the mean over the ranks, so that every rank takes
        the same line-search decisions and calls the closure as often (one all-reduce per
        evaluation; ``agree_across_ranks = False`` turns it off)."""
        if not isinstance(loss, Tensor):
            return float(loss)
        n = world_size() if self.agree_across_ranks else 1
        if n == 1:
            return float(loss.detach())
        total = loss.detach().reshape(1).clone()
        torch.distributed.all_reduce(total)
        return float(total / n)

    def _screen(self, loss: float, flat_grad: Tensor) -> Tensor | None:  # type: ignore[override]
        """The first evaluation of a step, by ``nonfinite``: the gradient to use, or None
        (skip the step)."""
        fn = "LBFGS.step()"
        if not math.isfinite(loss):
            if self.nonfinite == "raise":
                raise FloatingPointError(f"{fn}: the closure's loss is not finite ({loss}); "
                                         "pass nonfinite='skip' to skip such steps")
            return None
        ok = torch.isfinite(flat_grad)
        if bool(ok.all()):
            return flat_grad
        if self.nonfinite == "zero":
            return torch.where(ok, flat_grad, torch.zeros((), dtype=flat_grad.dtype,
                                                          device=flat_grad.device))
        if self.nonfinite == "skip":
            return None
        offset, what = 0, "a parameter"
        bad = int((~ok).nonzero()[0])
        names = self.param_groups[0].get("param_names")
        for j, p in enumerate(self._params):
            n = 2 * p.numel() if torch.is_complex(p) else p.numel()
            if offset <= bad < offset + n:
                what = (repr(names[j]) if names else
                        f"param_groups[0]['params'][{j}] of shape {tuple(p.shape)}")
            offset += n
        raise NonFiniteGradientError(
            f"{fn}: the gradient of {what} holds NaN or Inf; nothing was changed (pass "
            "nonfinite='skip' to skip such steps or nonfinite='zero' to treat those entries "
            "as zero)")

    @torch._disable_dynamo
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Up to ``max_iter`` L-BFGS iterations; ``closure`` re-evaluates the loss and calls
        ``backward()`` (it runs with gradients enabled). Returns the first loss."""
        fn = "LBFGS.step()"
        self._check_dtensor_supported()
        if closure is None or not callable(closure):
            raise ValueError(f"{fn}: closure must be a function that re-evaluates the loss "
                             f"and calls backward(), got {closure!r}")
        group = self.param_groups[0]
        lr = group["lr"]
        lr = lr.reshape(()) if isinstance(lr, Tensor) else lr  # as torch's _to_scalar
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        line_search_fn = group["line_search_fn"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss, loss, flat_grad = self._evaluate(closure)
        current_evals = 1
        state["func_evals"] += 1
        screened = self._screen(loss, flat_grad)
        if screened is None:
            self.skipped_steps += 1
            return orig_loss
        flat_grad = screened
        if flat_grad.abs().max() <= tolerance_grad:
            return orig_loss

        d = state.get("d")
        t = state.get("t")
        old_dirs = state.get("old_dirs")
        old_stps = state.get("old_stps")
        ro = state.get("ro")
        H_diag = state.get("H_diag")
        prev_flat_grad = state.get("prev_flat_grad")
        prev_loss = state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # -- the direction: two-loop recursion ---------------------------------------
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)
                num_old = len(old_dirs)
                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]
                q = flat_grad.neg()
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q.add_(old_dirs[i], alpha=-al[i])
                d = r = torch.mul(q, H_diag)
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r.add_(old_stps[i], alpha=al[i] - be_i)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # -- the step length ------------------------------------------------------------
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
            else:
                t = lr
            guess = t
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            ls_func_evals, reason = 0, "fixed"
            if line_search_fn is not None and not t > 0:  # lr = 0: no step, no search
                opt_cond = False
            elif line_search_fn is not None:
                x_init = self._clone_param()

                def phi(step: Any, x_init=x_init, d=d) -> tuple[float, Tensor, Tensor]:
                    self._add_grad(step, d)
                    with torch.enable_grad():
                        value = self._value(closure())
                    g = self._gather_flat_grad()
                    self._set_param(x_init)
                    return value, g.dot(d), g

                if line_search_fn == "strong_wolfe":  # torch's max_ls = max_eval - current
                    res = LS.strong_wolfe(phi, loss, gtd, t,
                                          tolerance_change=tolerance_change,
                                          scale=d.abs().max(), payload0=flat_grad,
                                          max_evals=max_eval - current_evals + 1)
                else:
                    res = LS.LINE_SEARCHES[line_search_fn](
                        phi, loss, gtd, t, max_evals=max(1, max_eval - current_evals))
                    if res.payload is None:  # no step accepted: stay at x
                        res = LS.LineSearchResult(0.0, loss, gtd, res.evals, res.reason,
                                                  flat_grad)
                loss, flat_grad, t, ls_func_evals = float(res.phi), res.payload, res.step, \
                    res.evals
                reason = res.reason
                self._add_grad(t, d)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_grad(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    with torch.enable_grad():
                        new_loss = self._value(closure())
                    new_grad = self._gather_flat_grad()
                    ls_func_evals = 1
                    if not (math.isfinite(new_loss) and bool(torch.isfinite(new_grad).all())):
                        self._add_grad(-t, d)  # undo, and keep no curvature pair from it
                        t, reason = 0.0, "nonfinite"
                    else:
                        loss, flat_grad = new_loss, new_grad
                        opt_cond = flat_grad.abs().max() <= tolerance_grad

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            self._last_d = d  # (the direction of the last move; a later one is new)
            self._info = QuasiNewtonStep(
                float(t), float(guess), len(old_dirs), float(H_diag), line_search_fn,
                ls_func_evals, reason, n_iter, current_evals, float(gtd), float(loss))
            if self.callback is not None:
                self.callback(self)

            if reason == "nonfinite" or n_iter == max_iter or current_evals >= max_eval:
                break
            if opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state["d"] = d
        state["t"] = t
        state["old_dirs"] = old_dirs
        state["old_stps"] = old_stps
        state["ro"] = ro
        state["H_diag"] = H_diag
        state["prev_flat_grad"] = prev_flat_grad
        state["prev_loss"] = prev_loss
        if self._info is not None:
            self._info = self._info._replace(iterations=n_iter, function_evals=current_evals)
        return orig_loss

    # -- state -------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict (a ``torch.optim.LBFGS`` state_dict loads), after
        checking its layout: settings, the state's keys, the flat vectors' length, the
        history's lengths and finiteness (``ValueError``/``TypeError``, nothing changed)."""
        skipped = _check_state_dict(self, state_dict)
        sd = {k: v for k, v in state_dict.items() if k not in ("skipped_steps",
                                                                  "lrkit_optimizer")}
        torch.optim.Optimizer.load_state_dict(self, sd)
        group = self.param_groups[0]
        group.pop("differentiable", None)
        self._params = group["params"]
        self.skipped_steps = skipped
        self._info, self._last_d = None, None

    def __setstate__(self, state: dict[str, Any]) -> None:
        torch.optim.Optimizer.__setstate__(self, state)


def _check_state_dict(opt: LBFGS, sd: Any) -> int:
    """Raise if ``sd`` is not an LBFGS state_dict for these parameters (torch's or
    lrkit's); returns the saved ``skipped_steps``."""
    fn = "LBFGS.load_state_dict()"
    skipped, groups, state = check_top(fn, LBFGS, sd)
    if len(groups) != 1:
        raise ValueError(f"{fn}: an LBFGS state_dict has one param group, got {len(groups)}")
    g = groups[0]
    missing = [k for k in ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change",
                           "history_size", "line_search_fn", "params") if k not in g]
    if missing:
        raise ValueError(f"{fn}: param group 0 lacks {', '.join(map(repr, missing))}: not "
                         "an LBFGS state_dict")
    LBFGS._check_settings(fn, g)
    if not isinstance(g["params"], list) or len(g["params"]) != len(opt._params):
        raise ValueError(f"{fn}: param group 0 of the state_dict has {len(g['params'])} "
                         f"parameter(s), this optimizer's {len(opt._params)}")
    unknown = [k for k in state if k not in g["params"]]
    if unknown:
        raise ValueError(f"{fn}: state holds parameter id(s) {unknown[:5]} that the param "
                         "group does not list")
    first = g["params"][0]
    for k, v in state.items():
        if not isinstance(v, dict):
            raise TypeError(f"{fn}: state[{k!r}] must be a dict, got {type(v).__name__}")
        if k != first and v:
            raise ValueError(f"{fn}: LBFGS keeps its state on the first parameter only; the "
                             f"state_dict has state for parameter id {k!r}")
    st = state.get(first, {})
    extra = [k for k in st if k not in STATE_KEYS]
    if extra:
        raise ValueError(f"{fn}: unknown state key(s) {extra}; LBFGS keeps {list(STATE_KEYS)}")
    if st:  # after a step: the counters; after an iteration: everything (al from the 2nd)
        need = ["func_evals", "n_iter"]
        if "d" in st or st.get("n_iter", 0):
            need += [k for k in STATE_KEYS[2:-1]] + (["al"] if st.get("n_iter", 0) > 1 else [])
        lacking = [k for k in need if k not in st]
        if lacking:
            raise ValueError(f"{fn}: state lacks {', '.join(map(repr, lacking))} (an LBFGS "
                             "state after an iteration holds them all)")
    _check_state_values(fn, st, opt._numel(), g["history_size"])
    return skipped


def _check_state_values(fn: str, st: dict, n: int, history_size: int) -> None:
    for key in ("n_iter", "func_evals"):
        v = st.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{fn}: state['{key}'] must be a non-negative integer, got {v!r}")

    def vector(where: str, v: Any) -> None:
        if not isinstance(v, Tensor):
            raise TypeError(f"{fn}: {where} must be a tensor of {n} elements, got {_what(v)}")
        if v.shape != (n,):
            raise ValueError(f"{fn}: {where} must have shape ({n},) (the parameters' count), "
                             f"got {_what(v)}")
        _finite(where, v)

    def number(where: str, v: Any) -> None:
        if isinstance(v, Tensor) and v.numel() == 1:
            _finite(where, v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{fn}: {where} must be a number or a one-element tensor, got "
                            f"{_what(v)}")
        elif not math.isfinite(v):
            raise ValueError(f"{fn}: {where} holds NaN or Inf")

    def _finite(where: str, v: Tensor) -> None:
        if v.is_meta:
            raise ValueError(f"{fn}: {where} is a meta tensor, which holds no values (a "
                             "state_dict of an optimizer built on the meta device)")
        if not v.is_floating_point():
            raise TypeError(f"{fn}: {where} must be a floating-point tensor, got {v.dtype}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{fn}: {where} holds NaN or Inf")

    for key in ("d", "prev_flat_grad"):
        if key in st:
            vector(f"state['{key}']", st[key])
    for key in ("t", "H_diag", "prev_loss"):
        if key in st:
            number(f"state['{key}']", st[key])
    lists = {k: st[k] for k in ("old_dirs", "old_stps", "ro") if k in st}
    for key, x in lists.items():
        if not isinstance(x, list):
            raise TypeError(f"{fn}: state['{key}'] must be a list, got {_what(x)}")
    if len({len(x) for x in lists.values()}) > 1:
        raise ValueError(f"{fn}: state['old_dirs'], ['old_stps'] and ['ro'] must be lists of "
                         f"the same length, got {[len(x) for x in lists.values()]}")
    for key, x in lists.items():
        if len(x) > history_size:
            raise ValueError(f"{fn}: state['{key}'] holds {len(x)} pairs, more than "
                             f"history_size={history_size}")
        for i, v in enumerate(x):
            (number if key == "ro" else vector)(f"state['{key}'][{i}]", v)
    if "al" in st:
        al = st["al"]
        if not isinstance(al, list) or len(al) != history_size:
            raise ValueError(f"{fn}: state['al'] must be a list of history_size="
                             f"{history_size} entries, got {_what(al)}")


def _what(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    if isinstance(v, (list, dict)):
        return f"a {type(v).__name__} of {len(v)}"
    return f"{type(v).__name__} {v!r:.40}"
