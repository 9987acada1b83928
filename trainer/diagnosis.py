"""Diagnosis: which layer blows up, when, and a warning before it does; quiet while training is healthy.

Runs on the host, from the values the probe already moved there once per step (no device sync):
each step's per-layer gradient norms, the global gradient norm and the loss.

**Baselines.** Every series (one per parameter tensor, the global norm, the loss) keeps its own
baseline on the log scale: a moving mean `m` and spread `s` (the moving mean absolute deviation,
×1.25 ≈ σ for normal noise). The first steps average with equal weights (1/n), later ones with
weight ALPHA (a ~20-step memory), so the baseline follows training's drift. A value updates the
baseline clipped to m ± CLIP·s: a spike moves it a little, never to where the spike is normal.
Each series also remembers `top`, the highest its baseline has been in this run: its own scale.

**Departure and alerts.** A series *departs* when its value is at least `factor` × its baseline
(RunConfig.alert_factor, 10 by default). A departure *alerts* only when it is also
- at least ABOVE_TOP × the highest baseline of the series (so the hard batches of a converged net,
  70× a collapsed median but far below the norms of the run's first steps, stay quiet), and
- at least `z` spreads above m on the log scale (the relative margin; no margin is asked during
  the first WARMUP steps, when the spread is not known yet: a 10× jump from step 1 alerts), and
- broad: the global norm alerts, or at least BROAD of the layers depart. One layer alone must
  stand out twice as far (factor², 2·z): a lone layer's noise is not an explosion.
A layer whose baseline is below float32's resolution of the global norm's baseline (NOISE) never
departs: its gradient is rounding noise (see NOISE), and blaming it named an attention key's bias,
at 1e-12 of the global norm, as the origin of a real model's blow-up. (Its baseline, not the step's
value: a real layer that grows 100x while the rest grow 1e15x is still a real layer.)
Numbers (bench/alert_quality.py, docs/benchmarks.md): on 64 healthy runs (128k steps) 3 alerts,
all real transient loss spikes above the untrained loss; 47 of 47 diverging runs alerted before
their first non-finite step (seeds 3-4 of those were not used to choose these constants).

**Episodes.** An alert opens an episode (one `alert` event: kind, origin layer, top 3 layers by
departure, value and baseline); it stays open while any series is still elevated (√factor and
z/2) and closes after COOL quiet steps with one `alert.end` event carrying its peak. Gradients
(every layer and the global norm) are one channel, `grad_spike`; the loss is another,
`loss_spike`, which opens only while the gradients are quiet (a loss spike with normal gradients;
otherwise it is part of their episode). A non-finite loss or gradient is `nonfinite`.

**Attribution.** Each layer's current departure (a run of consecutive departing steps) is kept
with the step it began. The origin, for an alert and for a divergence, is the layer whose
ongoing departure began first (ties: the largest departure at that step); with none ongoing (a
blow-up from one step to the next), the non-finite layers when only some are, else every layer,
ranked by their departure at the last finite step. `first_nonfinite_layer` keeps the old rule
(first non-finite in forward order: at a real divergence, always the first layer).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import events

WARMUP = 5  # steps of baseline before the relative margin is asked
ALPHA = 0.05  # weight of a new step in the baseline once past 1/ALPHA steps (~20-step memory)
CLIP = 3.0  # a value updates the baseline clipped to m ± CLIP·s
S_MIN = 0.05  # floor of the spread on the log scale (±5%)
S_START = 0.5  # spread assumed before the first deviation is seen
COOL = 3  # quiet steps that close an episode
Z = 5.0  # default relative margin, in spreads on the log scale
ABOVE_TOP = 3.0  # an alerting value is at least this x the highest baseline of its series
BROAD = 0.5  # fraction of the layers departing that makes a departure broad
TINY = 1e-30  # norms at or below this are "no gradient" (an unused layer), not a departure
# A layer whose typical gradient norm (its baseline) is below this fraction of the global norm's
# (float32's resolution) is rounding noise: the gradient of a parameter the loss does not depend on
# (an attention key's bias, a bias right before BatchNorm) is a sum of terms that cancel, ~1e-12
# of the global norm, and moves by decades when the rest moves by one. It neither departs nor is
# blamed.
NOISE = float(np.finfo(np.float32).eps)
LOG_NOISE = math.log(NOISE)


class Baseline:
    """Robust moving baseline of k positive series on the log scale (see the module docstring)."""

    def __init__(self, k: int) -> None:
        self.m = np.zeros(k)
        self.s = np.full(k, S_START)
        self.den = np.maximum(self.s * 1.25, S_MIN)  # the spread z divides by
        self.n = np.zeros(k, dtype=np.int64)
        self.top = np.full(k, -np.inf)  # the highest m has been: the series' own scale in this run
        self.steady = False  # every series has seen 1/ALPHA values: the weight is ALPHA for all

    def update(self, x: np.ndarray, ok: np.ndarray, all_ok: bool | None = None) -> None:
        """Take one step's log values x (where `ok`; elsewhere missing). all_ok: ok.all(), if known.

        Each array operation costs a few µs in a training step (numpy's code is out of the CPU's
        caches after the step's tensor work), more than the arithmetic on a few hundred values:
        the common case below is written in as few of them as it takes."""
        if self.steady and (ok.all() if all_ok is None else all_ok):  # the common case
            lim = CLIP * self.den
            xc = np.minimum(np.maximum(x, self.m - lim), self.m + lim)  # np.clip, without its Python wrapper
            dx = xc - self.m
            dev = np.abs(dx)
            self.m += ALPHA * dx
            self.s += ALPHA * (dev - self.s)
            self.n += 1
        else:
            n = self.n + ok
            a = np.maximum(1.0 / np.maximum(n, 1), ALPHA)
            lim = CLIP * self.den
            first = n == 1
            xc = np.where(first, x, np.clip(x, self.m - lim, self.m + lim))
            dev = np.abs(xc - self.m)
            # The spread's first deviation comes with the second value; before it, S_START stands.
            s_new = np.where(first, self.s, np.where(n == 2, dev, self.s + a * (dev - self.s)))
            self.m = np.where(ok, np.where(first, xc, self.m + a * (xc - self.m)), self.m)
            self.s = np.where(ok, s_new, self.s)
            self.n = n
            self.steady = bool(n.min() >= 1 / ALPHA)
        self.den = np.maximum(self.s * 1.25, S_MIN)
        np.maximum(self.top, self.m, out=self.top)


class _Episode:
    def __init__(self, kind: str, step: int, number: int) -> None:
        self.kind, self.start, self.number = kind, step, number
        self.quiet = 0
        self.peak_step, self.peak_ratio, self.peak_value, self.peak_layer = step, 0.0, math.nan, None

    def track(self, step: int, ratio: float, value: float, layer: str | None) -> None:
        if ratio > self.peak_ratio:
            self.peak_step, self.peak_ratio, self.peak_value, self.peak_layer = step, ratio, value, layer

    def end(self, step: int) -> dict[str, Any]:
        return events.alert_end(step, self.number, self.kind, self.start, self.peak_step, self.peak_value,
                                self.peak_ratio, self.peak_layer)


class Detector:
    """Online explosion and loss-spike detector for one run; `update()` once per finite step.

    `factor`: how far over its baseline a series departs (RunConfig.alert_factor);
    `z`: the relative margin, in spreads of the series on the log scale."""

    def __init__(self, names: list[str], factor: float = 10.0, z: float = Z) -> None:
        if factor < 1:  # RunConfig.alert_factor's lower bound; 1 flags any rise, which a person may want
            raise ValueError(f"factor must be 1 or more, got {factor}")
        self.names = list(names)
        self.log_factor = math.log(factor)
        self.z = z
        self.base = Baseline(len(names) + 2)  # every layer, the global norm, the loss
        self._log_above = math.log(ABOVE_TOP)
        self.open: dict[str, _Episode] = {}
        self.episodes = 0
        self.alerts = 0  # alert events given out, every kind
        self.first_alert_step: int | None = None
        k = len(names)
        self._since = np.zeros(k, dtype=np.int64)  # step each layer's ongoing departure began (0: none)
        self._since_d = np.zeros(k)  # its departure (log ratio) at that step
        self._d = np.full(k, np.nan)  # the last finite step's departure per layer
        self._raw: list[float] = [math.nan] * k  # and its gradient norms

    # ---- a fork goes on from its parent's judgement ---------------------------------------

    def state(self) -> dict[str, list]:
        """What a checkpoint keeps (trainer/loop.py snapshot): the baselines and the ongoing
        departures, as plain lists. Open episodes are the parent's own: not kept."""
        b = self.base
        return {"m": b.m.tolist(), "s": b.s.tolist(), "n": b.n.tolist(), "top": b.top.tolist(),
                "since": self._since.tolist(), "since_d": self._since_d.tolist(), "d": self._d.tolist(),
                "raw": list(self._raw)}

    def load(self, state: dict[str, list]) -> bool:
        """Take a checkpoint's state() (a fork: same layers); False, and nothing changed, when
        it is not of this detector's shape."""
        k, b = len(self.names), self.base
        sizes = {"m": k + 2, "s": k + 2, "n": k + 2, "top": k + 2, "since": k, "since_d": k, "d": k, "raw": k}
        if not isinstance(state, dict) or any(len(state.get(key) or ()) != n for key, n in sizes.items()):
            return False
        b.m, b.s = np.array(state["m"], dtype=np.float64), np.array(state["s"], dtype=np.float64)
        b.n, b.top = np.array(state["n"], dtype=np.int64), np.array(state["top"], dtype=np.float64)
        b.den = np.maximum(b.s * 1.25, S_MIN)
        b.steady = bool(b.n.min() >= 1 / ALPHA)
        self._since = np.array(state["since"], dtype=np.int64)
        self._since_d = np.array(state["since_d"], dtype=np.float64)
        self._d = np.array(state["d"], dtype=np.float64)
        self._raw = [float(v) for v in state["raw"]]
        return True

    # ---- every step ----------------------------------------------------------------------

    def update(self, step: int, grad_norm: list[float], global_norm: float, loss: float) -> list[dict[str, Any]]:
        """Judge one finite step; returns the events it gives (alerts, episode ends). A missing
        value (a zero gradient: an unused layer; a NaN loss: an own loop that gives none) neither
        departs nor moves its baseline."""
        k, b = len(self.names), self.base
        v = np.array([*grad_norm, global_norm, loss], dtype=np.float64)
        ok = v > TINY  # NaN compares False
        all_ok = bool(ok.all())
        if all_ok:
            x = np.log(v)
        else:
            x = np.log(np.where(ok, v, 1.0))
            x[~ok] = np.nan
        d = x - b.m  # log ratio to the baseline
        noise = b.m[:k] < b.m[k] + LOG_NOISE  # rounding-noise series (before any value: none)
        if noise.any():
            d[:k][noise] = np.nan
        z = d / b.den
        n = b.n
        if b.steady:  # every series past its first 1/ALPHA values: n >= 1 and n >= WARMUP everywhere
            depart = d >= self.log_factor
            flag = depart & (x - b.top >= self._log_above) & (z >= self.z)
        else:
            depart = (n >= 1) & (d >= self.log_factor)
            flag = depart & (x - b.top >= self._log_above) & ((n < WARMUP) | (z >= self.z))
        quiet = not self.open and not flag.any()  # the common case: no episode to open, track or close
        gflag = flag[: k + 1]
        if not quiet and gflag.any() and not (gflag[k] or depart[:k].mean() >= BROAD):  # one layer alone
            gflag = gflag & (d[: k + 1] >= 2 * self.log_factor) & (z[: k + 1] >= 2 * self.z)
        dk = depart[:k]
        if dk.any():
            starts = dk & (self._since == 0)
            if starts.any():
                self._since[starts], self._since_d[starts] = step, d[:k][starts]
            self._since[~dk] = 0
        else:  # no layer departs (the common case): none has an ongoing departure
            self._since.fill(0)
        self._d, self._raw = d[:k], grad_norm
        out = []
        if not quiet and ("grad_spike" in self.open or gflag.any()):
            out += self._channel("grad_spike", step, gflag, d[: k + 1], z[: k + 1], n[: k + 1], grad_norm,
                                 global_norm)
        if not quiet:
            lflag = flag[k + 1 :] & ("grad_spike" not in self.open)  # else the loss is part of their episode
            if "loss_spike" in self.open or lflag.any():
                out += self._channel("loss_spike", step, lflag, d[k + 1 :], z[k + 1 :], n[k + 1 :], [loss], loss)
        b.update(x, ok, all_ok)
        return out

    def _channel(self, kind: str, step: int, flag: np.ndarray, d: np.ndarray, z: np.ndarray, n: np.ndarray,
                 raw: list[float], whole: float) -> list[dict[str, Any]]:
        ep = self.open.get(kind)
        if ep is None and not flag.any():
            return []
        dd = np.where(np.isfinite(d), d, -np.inf)
        i = int(np.argmax(dd))
        peak = (math.exp(dd[i]), float(whole if i >= len(raw) else raw[i]), self._name(kind, i))
        if ep is None:
            ep = self.open[kind] = _Episode(kind, step, self.episodes + 1)
            self.episodes += 1
            ep.track(step, *peak)
            return [self._alert(ep, step, d, raw, whole)]
        ep.track(step, *peak)
        warm = (n >= 1) & (d >= self.log_factor / 2) & ((n < WARMUP) | (z >= self.z / 2))
        ep.quiet = 0 if warm.any() else ep.quiet + 1
        if ep.quiet >= COOL:
            del self.open[kind]
            return [ep.end(step)]
        return []

    def _name(self, kind: str, i: int) -> str | None:
        if kind == "loss_spike":
            return None
        return self.names[i] if i < len(self.names) else "global"

    def _alert(self, ep: _Episode, step: int, d: np.ndarray, raw: list[float], whole: float) -> dict[str, Any]:
        self._count(step)
        k = len(self.names)
        if ep.kind == "loss_spike":
            ratio = math.exp(d[0])
            return events.alert(step, "loss_spike", f"loss {whole:.3g} is {ratio:.3g}x its baseline "
                                f"{whole / ratio:.3g}", episode=ep.number, layer=None, value=whole,
                                baseline=whole / ratio, ratio=ratio, top=[])
        top = self._top(d[:k], raw)
        origin, since = self._origin()
        g_ratio = math.exp(d[k]) if math.isfinite(d[k]) else None
        if origin is None:  # only the global norm departed and no layer has a value: say that much
            return events.alert(step, "grad_spike", f"global gradient norm {whole:.3g} is {g_ratio:.3g}x "
                                f"its baseline", episode=ep.number, layer=None, value=whole,
                                baseline=whole / g_ratio, ratio=g_ratio, top=[])
        ratio = math.exp(d[origin])
        name = self.names[origin]
        message = f"gradient of {name} {raw[origin]:.3g} is {ratio:.3g}x its baseline {raw[origin] / ratio:.3g}"
        if since < step:
            message += f" (departing since step {since})"
        if g_ratio is not None:
            message += f"; global norm {whole:.3g} ({g_ratio:.3g}x)"
        return events.alert(step, "grad_spike", message, episode=ep.number, layer=name, since=since,
                            value=raw[origin], baseline=raw[origin] / ratio, ratio=ratio, global_norm=whole,
                            global_ratio=g_ratio, top=[{k2: v for k2, v in t.items() if k2 != "index"} for t in top])

    def _origin(self) -> tuple[int | None, int]:
        """The layer whose ongoing departure began first (ties: the largest departure at that
        step), and that step; (None, 0) when no layer is departing."""
        going = np.flatnonzero(self._since > 0)
        if going.size == 0:
            return None, 0
        first = self._since[going].min()
        tied = going[self._since[going] == first]
        return int(tied[np.argmax(self._since_d[tied])]), int(first)

    def _top(self, d: np.ndarray, raw: list[float], among: np.ndarray | None = None,
             n: int = 3) -> list[dict[str, Any]]:
        """The n layers with the largest departure (log ratio), largest first."""
        dd = np.where(np.isfinite(d), d, -np.inf)
        if among is not None:
            dd = np.where(among, dd, -np.inf)
        out = []
        for i in np.argsort(-dd, kind="stable")[:n].tolist():
            if dd[i] == -np.inf:
                break
            ratio = math.exp(dd[i])
            out.append({"index": i, "layer": self.names[i], "value": raw[i], "baseline": raw[i] / ratio,
                        "ratio": ratio})
        return out

    def _count(self, step: int) -> None:
        self.alerts += 1
        if self.first_alert_step is None:
            self.first_alert_step = step

    # ---- the end -------------------------------------------------------------------------

    def attribute(self, step: int, grad_norm: list[float]) -> dict[str, Any]:
        """Where a divergence at `step` came from (see the module docstring): layer (the origin),
        since (the step its departure began), with (how many other layers began departing at that
        step too), top (the 3 layers with the largest departure at the last finite step) and
        first_nonfinite_layer."""
        bad = ~np.isfinite(np.asarray(grad_norm, dtype=np.float64))
        top = self._top(self._d, self._raw)
        origin, since = self._origin()
        with_it = int((self._since == since).sum()) - 1 if origin is not None else 0
        if origin is None:
            among = bad if bad.any() and not bad.all() else None
            ranked = self._top(self._d, self._raw, among=among, n=1)
            # No baseline yet (a blow-up in the first steps): the non-finite layer, if only some are.
            origin = ranked[0]["index"] if ranked else int(np.argmax(bad)) if among is not None else None
            since = step
        return {"layer": None if origin is None else self.names[origin], "since": since, "with": with_it,
                "top": [{"layer": t["layer"], "ratio": t["ratio"]} for t in top],
                "first_nonfinite_layer": first_nonfinite(self.names, grad_norm)}

    def nonfinite(self, step: int, grad_norm: list[float], loss: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The attribution and the events of a non-finite step: a `nonfinite` alert, then the
        open episodes' ends."""
        where = self.attribute(step, grad_norm)
        self._count(step)
        message = f"non-finite loss or gradient at step {step}"
        if where["layer"] is not None:
            since = "" if where["since"] == step else f" (departing from its baseline since step {where['since']}"
            if since and where["with"]:
                since += f", as did {where['with']} other tensor{'s' if where['with'] > 1 else ''}"
            message += f"; origin: {where['layer']}{since}{')' if since else ''}"
        out = [events.alert(step, "nonfinite", message, episode=None, layer=where["layer"], since=where["since"],
                            top=where["top"], first_nonfinite_layer=where["first_nonfinite_layer"],
                            loss=loss if math.isfinite(loss) else None)]
        return where, out + self.close(step)

    def close(self, step: int) -> list[dict[str, Any]]:
        """End every open episode (the run ends); returns their `alert.end` events."""
        out = [ep.end(step) for ep in self.open.values()]
        self.open.clear()
        return out


def first_nonfinite(names: list[str], values: list[float]) -> str | None:
    """Name of the first layer (forward order) whose value is NaN or infinite: the old answer to
    "where did it diverge", kept as `first_nonfinite_layer` (at a real blow-up, the first layer)."""
    for name, v in zip(names, values, strict=True):
        if not math.isfinite(v):
            return name
    return None


def verdict(status: str, summary: dict[str, Any]) -> str:
    """What the CLI adds to a run's status: the diverged layer and step, or "not learning"."""
    if status == "diverged" and summary.get("diverged_layer"):
        return f"diverged in {summary['diverged_layer']} at step {summary.get('diverged_step')}"
    if status in ("completed", "stopped") and not_learning(summary.get("val_accuracy"), summary.get("n_classes")):
        return "not learning"
    return ""


def not_learning(val_accuracy: float | None, n_classes: int | None, margin: float = 0.05) -> bool:
    """A run whose validation accuracy is within `margin` of chance (1/n_classes) learned nothing.
    The page's rule is the same (frontend/js/diagnosis.js notLearning)."""
    if val_accuracy is None or not n_classes or n_classes < 2 or not math.isfinite(val_accuracy):
        return False
    return abs(val_accuracy - 1.0 / n_classes) <= margin


class Diagnosis:
    """One run's running summary and detector, fed each reported step; the built-in loop and
    `gradwatch.connect` runs both use it, so their alerts and summaries say the same thing."""

    def __init__(self, names: list[str], factor: float = 10.0, n_classes: int | None = None,
                 loss_given: bool = True) -> None:
        self.detector = Detector(names, factor)
        self.loss_given = loss_given  # False: a NaN loss means "not recorded" (an own loop), not divergence
        self.summary: dict[str, Any] = {
            "step": 0, "loss": None, "accuracy": None, "val_accuracy": None, "val_loss": None,
            "best_val_accuracy": None, "global_grad_norm": None, "n_classes": n_classes,
            "alerts": 0, "first_alert_step": None, "diverged_step": None, "diverged_layer": None,
            "diverged_since": None, "diverged_top": None, "first_nonfinite_layer": None}
        self.reason: str | None = None  # set at the first non-finite step: why the run diverged

    def validated(self, val_loss: float, val_accuracy: float) -> None:
        s = self.summary
        s.update(val_loss=val_loss, val_accuracy=val_accuracy)
        if math.isfinite(val_accuracy) and (s["best_val_accuracy"] is None or val_accuracy > s["best_val_accuracy"]):
            s["best_val_accuracy"] = val_accuracy

    def step(self, stats: dict[str, Any]) -> list[dict[str, Any]]:
        """Take one probe record; returns the events it gives (alerts, episode ends)."""
        step, loss, grads = stats["step"], stats["loss"], stats["grad_norm"]
        self.summary.update(step=step, loss=loss, accuracy=stats["accuracy"],
                            global_grad_norm=stats["global_grad_norm"])
        if self.reason is not None:  # diverged already: an own loop may go on, the diagnosis is made
            return []
        loss_ok = math.isfinite(loss) or (math.isnan(loss) and not self.loss_given)
        if loss_ok and math.isfinite(math.fsum(grads)):  # fsum: inf/NaN in, inf/NaN out; no overflow
            out = self.detector.update(step, grads, stats["global_grad_norm"], loss)
        else:
            where, out = self.detector.nonfinite(step, grads, loss)
            self.summary.update(diverged_step=step, diverged_layer=where["layer"], diverged_since=where["since"],
                                diverged_top=where["top"], first_nonfinite_layer=where["first_nonfinite_layer"])
            self.reason = out[0]["message"]
        self.summary.update(alerts=self.detector.alerts, first_alert_step=self.detector.first_alert_step)
        return out

    def close(self) -> list[dict[str, Any]]:
        """The run ended: the open episodes' ends."""
        return self.detector.close(self.summary["step"])


def reference(names: list[str], grads: list[list[float | None]], factor: float = 10.0,
              window: int = 20) -> dict[str, Any] | None:
    """The reference the detector's attribution is checked against (tests, bench/alert_quality.py),
    computed from a run's recorded per-layer gradient norms alone, up to its first non-finite step
    (None when it has none). Not used online: it needs each step's 20 predecessors' median.

    baseline_l(t) = median of layer l's gradient norm over the `window` steps before t (finite,
    non-zero); r_l(t) = g_l(t) / baseline_l(t), none where layer l is rounding noise (baseline_l(t)
    below NOISE x the same median of the global norm, sqrt(sum_l g_l^2)); layer l departs at t when
    r_l(t) >= factor. At the
    last finite step f, each departing layer's departure began at the first step of its unbroken
    run of departing steps ending at f. The origin is the layer whose departure began first (ties:
    the largest r_l at that step; `first` lists the tied layers); with no layer departing at f, the
    layer with the largest r_l(f). `top`: the 3 layers with the largest r_l(f); `rise`: the steps
    from the origin's departure to f (0 when none departs)."""
    g = np.array([[math.nan if v is None else v for v in row] for row in grads], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(g).all(axis=1))
    if bad.size == 0:
        return None
    f = int(bad[0]) - 1  # index of the last finite step
    if f < 1:
        return {"origin": None, "top": [], "rise": 0}
    r = np.full((f + 1, g.shape[1]), np.nan)
    for t in range(1, f + 1):
        past = g[max(0, t - window) : t]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: no baseline
            base = np.nanmedian(np.where(past > 0, past, np.nan), axis=0)
            whole = np.median(np.sqrt(np.nansum(past * past, axis=1)))
            r[t] = np.where(base < NOISE * whole, np.nan, g[t] / base)
    departing = np.nan_to_num(r, nan=0.0) >= factor
    since = np.full(g.shape[1], -1)  # index where each layer's departure ongoing at f began
    for layer in np.flatnonzero(departing[f]):
        t = f
        while t - 1 >= 1 and departing[t - 1, layer]:
            t -= 1
        since[layer] = t
    rf = np.nan_to_num(r[f], nan=-1.0)
    top = [names[i] for i in np.argsort(-rf, kind="stable")[:3] if rf[i] > 0]
    if (since >= 0).any():
        first = since[since >= 0].min()
        tied = np.flatnonzero(since == first)
        origin = names[int(tied[np.argmax(r[first, tied])])]
        return {"origin": origin, "top": top, "rise": f - first + 1, "first": [names[i] for i in tied]}
    return {"origin": top[0] if top else None, "top": top, "rise": 0, "first": top[:1]}
