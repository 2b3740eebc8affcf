"""Server-side aggregation of LoRA adapters: weight rules and the per-tensor weighted mean.

Owns: the five aggregation rules (Fed-MedLoRA, Fed-MedLoRA+, FedSA-LoRA, FFA-LoRA, RoLoRA), their per-site
weights (with Fed-MedLoRA+'s data-chosen temperature and the weights' normalised entropy), which adapter tensors
each rule shares (in which round), and the checked weighted mean of named arrays. It works on plain
``dict[str, numpy.ndarray]`` so it can be tested with hand-made tensors.

Must not import torch, transformers, peft or flwr (pure core: stdlib + numpy only).

Rules
-----
``fedmedlora``   Fed-MedLoRA (paper; reference code ``adaptor_avg``): every LoRA tensor (A and B, averaged
                 independently) is averaged with weights proportional to each site's number of training tokens
                 (``size_key="tokens"``, the reference behaviour) or training examples (``size_key="examples"``).
``fedmedlora+``  Fed-MedLoRA+ (reference code ``adaptor_avg_by_loss``): ``w_k ∝ exp(−L_k / T)``, i.e.
                 ``softmax(−L / T)`` with ``T = 1`` by default, where ``L_k`` is the validation loss of site
                 ``k``'s adapter. ``combine_with_size=True`` multiplies by the size weight and renormalises
                 (the "dataset size and validation utility" reading of the paper). Where ``L_k`` comes from
                 (coordinator-held validation set or each site's own dev split) is the caller's business.
                 ``temperature_rule`` chooses ``T`` from the data: ``"fixed"`` (``T = temperature``), ``"std"``
                 (``T = temperature × std(L)``) or ``"range"`` (``T = temperature × (max L − min L)``); with a
                 data-chosen ``T`` the weights do not change when every loss is shifted or scaled, the best site
                 gets ``exp(1 / temperature)`` times the worst site's weight under ``"range"``, and identical
                 losses give uniform weights (``data_temperature``). ``temperature_floor`` keeps a data-chosen
                 ``T`` from falling below a loss difference that is noise (scale-invariant rules otherwise turn
                 losses 0.0007 apart into weights 0.68 / 0.23 / 0.09).
``fedsa``        FedSA-LoRA (Guo et al., ICLR 2025): only ``lora_A`` tensors are shared and averaged (size
                 weights); each site keeps its own ``lora_B``.
``ffa``          FFA-LoRA (Sun et al., ICLR 2024): ``lora_A`` stays frozen at the shared random initialisation;
                 only ``lora_B`` is trained, shared and averaged (size weights). ``B̄A`` is then the exact average
                 of the sites' ``B_k A``.
``rolora``       RoLoRA (Chen et al., arXiv 2502.01755, "alternating optimisation of LoRA"): the rounds alternate
                 which factor is trained and shared (``rolora_factor``): odd rounds train and share ``lora_B`` with
                 ``lora_A`` frozen, even rounds ``lora_A`` with ``lora_B`` frozen (size weights). The frozen factor
                 is the same at every site (the global one), so the plain weighted mean of the trained factor is
                 exact for the product: ``B̄A = Σ w_k B_k A`` (odd rounds), ``B Ā = Σ w_k B A_k`` (even rounds).
                 Round 1 trains B because LoRA starts from ``B = 0``, where A gets no gradient. Each upload is
                 one factor: about half of Fed-MedLoRA's bytes. ``loss_weighted=True`` weights the sites as
                 Fed-MedLoRA+ does (``softmax(−L / T)`` of each site adapter's validation loss, with the same
                 ``temperature_rule``, ``loss_source`` and ``combine_with_size``) instead of by size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Rule names accepted everywhere (config, CLI, Flower run config).
RULES: tuple[str, ...] = ("fedmedlora", "fedmedlora+", "fedsa", "ffa", "rolora")
#: How Fed-MedLoRA+ chooses its temperature (``data_temperature``).
TEMPERATURE_RULES: tuple[str, ...] = ("fixed", "std", "range")
#: What a site's size weight counts.
SIZE_KEYS: tuple[str, ...] = ("tokens", "examples")
#: Where Fed-MedLoRA+ takes each site's validation loss from.
LOSS_SOURCES: tuple[str, ...] = ("server", "site")
#: Robust replacements for the weighted mean (``federation.robust``).
ROBUST_RULES: tuple[str, ...] = ("none", "median", "trimmed-mean")

_LORA_A = re.compile(r"(^|\.)lora_(embedding_)?A(\.|$)")
_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")


class AggregationError(ValueError):
    """An update or a weight that cannot be aggregated; the message names the site, key and shape."""


@dataclass(frozen=True)
class AggregationSettings:
    """How the server combines the sites' adapters.

    Attributes:
        rule: One of ``RULES``.
        size_key: ``"tokens"`` (reference: supervised target tokens of the site's training set) or
            ``"examples"``; used by ``fedmedlora``, ``fedsa``, ``ffa`` and by ``fedmedlora+`` when
            ``combine_with_size`` is set.
        temperature: ``T`` of ``softmax(−L / T)`` for ``fedmedlora+``; ``math.inf`` gives uniform weights. Under a
            data-chosen ``temperature_rule`` it is the constant that multiplies the losses' spread.
        temperature_rule: ``"fixed"``, ``"std"`` or ``"range"`` (see ``data_temperature``).
        temperature_floor: the smallest data-chosen ``T`` (in loss units, nats; 0 = none): losses closer than
            about this are treated as equal. Not used by ``"fixed"``.
        loss_source: ``"server"`` (loss of each site's adapter on the coordinator-held labelled validation
            set; paper-faithful) or ``"site"`` (each site reports the loss of its adapter on its own dev split;
            no labelled data at the server). Only read by ``fedmedlora+``.
        combine_with_size: ``fedmedlora+`` only: multiply the loss weight by the size weight, renormalise.
        robust: ``"none"`` (the rule's weighted mean), or ``"median"`` / ``"trimmed-mean"``: the unweighted
            coordinate-wise ``robust_mean`` of the shared tensors instead (the weights are then not used).
        trim_fraction: ``trimmed-mean`` only: the fraction of sites dropped at each end of every coordinate.
        loss_weighted: ``rolora`` only: Fed-MedLoRA+'s loss weights instead of size weights.
    """

    rule: str = "fedmedlora"
    size_key: str = "tokens"
    temperature: float = 1.0
    temperature_rule: str = "fixed"
    temperature_floor: float = 0.0
    loss_source: str = "server"
    combine_with_size: bool = False
    robust: str = "none"
    trim_fraction: float = 0.2
    loss_weighted: bool = False

    def __post_init__(self) -> None:
        errors = []
        if self.rule not in RULES:
            errors.append(f"rule={self.rule!r} is not one of {RULES}")
        if self.size_key not in SIZE_KEYS:
            errors.append(f"size_key={self.size_key!r} is not one of {SIZE_KEYS}")
        if self.robust not in ROBUST_RULES:
            errors.append(f"robust={self.robust!r} is not one of {ROBUST_RULES}")
        if self.loss_weighted and self.rule != "rolora":
            errors.append(f"loss_weighted applies to rule 'rolora' (fedmedlora+ always is), not {self.rule!r}")
        if not 0 <= self.trim_fraction < 0.5:
            errors.append(f"trim_fraction={self.trim_fraction!r} must be in [0, 0.5)")
        if self.temperature_rule not in TEMPERATURE_RULES:
            errors.append(f"temperature_rule={self.temperature_rule!r} is not one of {TEMPERATURE_RULES}")
        if self.loss_source not in LOSS_SOURCES:
            errors.append(f"loss_source={self.loss_source!r} is not one of {LOSS_SOURCES}")
        if not (isinstance(self.temperature, int | float) and self.temperature > 0) or math.isnan(self.temperature):
            errors.append(f"temperature={self.temperature!r} must be a number > 0 (math.inf for uniform)")
        if not (isinstance(self.temperature_floor, int | float) and 0 <= self.temperature_floor < math.inf):
            errors.append(f"temperature_floor={self.temperature_floor!r} must be a finite number >= 0")
        if errors:
            raise AggregationError("invalid aggregation settings: " + "; ".join(errors))

    @property
    def uses_loss(self) -> bool:
        """Whether the rule needs a validation loss per site."""
        return weighs_by_loss(self.rule, self.loss_weighted)


def weighs_by_loss(rule: str, rolora_loss_weights: bool = False) -> bool:
    """Whether ``rule`` weights the sites by their adapters' validation loss (Fed-MedLoRA+'s weights): always for
    ``fedmedlora+``, for ``rolora`` when ``rolora_loss_weights`` (``federation.rolora_weights=loss``)."""
    return rule == "fedmedlora+" or (rule == "rolora" and rolora_loss_weights)


# ---- key selection -------------------------------------------------------------------------------------------


def is_lora_A(key: str) -> bool:
    """True for a LoRA down-projection tensor (``...lora_A.weight``, ``...lora_embedding_A``)."""
    return _LORA_A.search(key) is not None


def is_lora_B(key: str) -> bool:
    """True for a LoRA up-projection tensor (``...lora_B.weight``, ``...lora_embedding_B``)."""
    return _LORA_B.search(key) is not None


def rolora_factor(round_: int) -> str:
    """The LoRA factor RoLoRA trains and shares in a (1-based, global) round: ``"B"`` in odd rounds, ``"A"`` in
    even ones.

    Raises:
        AggregationError: a round below 1.
    """
    if isinstance(round_, bool) or not isinstance(round_, int | np.integer) or round_ < 1:
        raise AggregationError(f"rolora: the round must be an integer ≥ 1, got {round_!r}")
    return "B" if round_ % 2 == 1 else "A"


def shared_keys(rule: str, keys: Sequence[str] | set[str], round_: int | None = None) -> list[str]:
    """The adapter tensors that a rule sends from the sites to the server and averages, sorted.

    Args:
        rule: One of ``RULES``.
        keys: All adapter tensor names.
        round_: The (1-based, global) round; required by ``rolora``, ignored by the other rules.

    Returns:
        ``fedmedlora`` / ``fedmedlora+``: every key. ``fedsa``: every key except the ``lora_B`` ones (kept
        private). ``ffa``: every key except the ``lora_A`` ones (frozen at the shared init). ``rolora``: every
        key except those of the factor frozen this round (``rolora_factor``: odd rounds drop ``lora_A``, even
        rounds drop ``lora_B``).

    Raises:
        AggregationError: unknown rule, ``fedsa``/``ffa``/``rolora`` on keys with no ``lora_A`` or no ``lora_B``,
            or ``rolora`` without a round.
    """
    if rule not in RULES:
        raise AggregationError(f"unknown aggregation rule {rule!r}; expected one of {RULES}")
    factor = None
    if rule == "rolora":
        if round_ is None:
            raise AggregationError("rule 'rolora' shares a different factor each round; shared_keys needs round_")
        factor = rolora_factor(round_)
    ordered = sorted(keys)
    if rule in ("fedmedlora", "fedmedlora+"):
        return ordered
    n_a = sum(is_lora_A(k) for k in ordered)
    n_b = sum(is_lora_B(k) for k in ordered)
    if n_a == 0 or n_b == 0:
        raise AggregationError(
            f"rule {rule!r} needs lora_A and lora_B tensors; got {n_a} lora_A and {n_b} lora_B keys "
            f"(first keys: {ordered[:3]})"
        )
    if rule == "fedsa" or factor == "A":
        return [k for k in ordered if not is_lora_B(k)]
    return [k for k in ordered if not is_lora_A(k)]


# ---- weights -------------------------------------------------------------------------------------------------


def _as_vector(values: Sequence[float], what: str, sites: Sequence[str] | None) -> np.ndarray:
    vec = np.asarray(list(values), dtype=np.float64)
    if vec.ndim != 1 or vec.size == 0:
        raise AggregationError(f"{what}: need at least one value per site, got {list(values)!r}")
    if sites is not None and len(sites) != vec.size:
        raise AggregationError(f"{what}: {vec.size} values for {len(sites)} sites {list(sites)}")
    bad = np.flatnonzero(~np.isfinite(vec))
    if bad.size:
        name = sites[bad[0]] if sites is not None else f"#{bad[0]}"
        raise AggregationError(f"{what}: value for site {name} is {vec[bad[0]]!r}, must be finite")
    return vec


def normalize_weights(weights: Sequence[float], sites: Sequence[str] | None = None) -> np.ndarray:
    """Check raw weights (finite, ≥ 0, positive sum) and scale them to sum to 1.

    Raises:
        AggregationError: naming the offending site.
    """
    vec = _as_vector(weights, "weights", sites)
    neg = np.flatnonzero(vec < 0)
    if neg.size:
        name = sites[neg[0]] if sites is not None else f"#{neg[0]}"
        raise AggregationError(f"weights: site {name} has negative weight {vec[neg[0]]!r}")
    peak = float(vec.max())
    if not peak > 0:
        raise AggregationError(f"weights: sum is {float(vec.sum())!r}; at least one site needs a positive weight")
    vec = vec / peak  # scale first: weights near the float64 maximum would overflow the sum to inf
    return vec / float(vec.sum())


def size_weights(sizes: Sequence[float], sites: Sequence[str] | None = None) -> np.ndarray:
    """FedAvg weights ``n_k / Σ n_j`` (a site with ``n_k = 0`` gets weight 0)."""
    return normalize_weights(sizes, sites)


def loss_weights(losses: Sequence[float], temperature: float = 1.0, sites: Sequence[str] | None = None) -> np.ndarray:
    """Fed-MedLoRA+ weights ``softmax(−L / T)``: a lower validation loss gets a higher weight.

    The reference code's ``exp(1 − L_k)`` is the same after normalisation (the constant cancels). Computed
    with the minimum loss subtracted, so large losses do not underflow. ``temperature=math.inf`` → uniform.
    """
    vec = _as_vector(losses, "losses", sites)
    if not (temperature > 0) or math.isnan(temperature):
        raise AggregationError(f"temperature must be > 0, got {temperature!r}")
    if math.isinf(temperature):
        return np.full(vec.size, 1.0 / vec.size)
    logits = -(vec - vec.min()) / temperature
    return normalize_weights(np.exp(logits), sites)


def data_temperature(
    losses: Sequence[float], rule: str = "fixed", temperature: float = 1.0, floor: float = 0.0
) -> float:
    """The temperature ``T`` of Fed-MedLoRA+'s ``softmax(−L / T)`` under a ``temperature_rule``.

    ``"fixed"``: ``T = temperature`` (the paper's ``T = 1``). ``"std"``: ``T = temperature × std(L)`` (population
    standard deviation). ``"range"``: ``T = temperature × (max L − min L)``, so the best site gets
    ``exp(1 / temperature)`` times the worst site's weight whatever the losses' scale. A data-chosen ``T`` makes the
    weights invariant to shifting or scaling every loss (a fixed ``T = 1`` gives near-uniform weights when the losses
    differ by 0.16); when the losses do not differ at all it is ``math.inf`` (uniform weights).

    That invariance also amplifies noise: losses 0.0007 apart get the same weights as losses 0.7 apart. ``floor``
    (nats, data-chosen rules only) is the smallest ``T``: differences well below it barely move the weights.

    Raises:
        AggregationError: an unknown rule, a temperature ≤ 0, a negative floor, or a loss that is not finite.
    """
    if rule not in TEMPERATURE_RULES:
        raise AggregationError(f"temperature_rule={rule!r} is not one of {TEMPERATURE_RULES}")
    if not (temperature > 0) or math.isnan(temperature):
        raise AggregationError(f"temperature must be > 0, got {temperature!r}")
    if not 0 <= floor < math.inf:
        raise AggregationError(f"temperature floor must be a finite number >= 0, got {floor!r}")
    vec = _as_vector(losses, "losses", None)
    if rule == "fixed":
        return float(temperature)
    spread = float(vec.max() - vec.min())
    if not spread > 0:  # identical losses (np.std of equal values can round to 1e-16, not 0)
        return math.inf
    if rule == "std":
        spread = float(vec.std())
    return max(float(temperature) * spread, float(floor))


def normalized_entropy(weights: Sequence[float]) -> float:
    """Shannon entropy of normalised weights divided by ``log n``: 1 for uniform weights, 0 when one site gets all
    the weight (1 for a single site: its weight is trivially uniform). Logged per round in ``rounds.jsonl``."""
    w = normalize_weights(weights)
    if w.size == 1:
        return 1.0
    nz = w[w > 0]
    return float(min(1.0, max(0.0, -(nz * np.log(nz)).sum() / math.log(w.size))))


def aggregation_weights(
    rule: str,
    sizes: Sequence[float],
    losses: Sequence[float] | None = None,
    temperature: float = 1.0,
    *,
    combine_with_size: bool = False,
    temperature_rule: str = "fixed",
    temperature_floor: float = 0.0,
    sites: Sequence[str] | None = None,
) -> np.ndarray:
    """Normalised per-site weights for a rule.

    Args:
        rule: One of ``RULES``.
        sizes: Per-site size (training tokens or examples); used by all rules except plain ``fedmedlora+``
            (where it is still checked to be finite).
        losses: Per-site validation losses; required by ``fedmedlora+``, ignored otherwise.
        temperature: ``T`` for ``fedmedlora+`` (the multiplier of the losses' spread under ``temperature_rule``).
        combine_with_size: ``fedmedlora+``: ``w ∝ n_k · exp(−L_k / T)``.
        temperature_rule: ``fedmedlora+``: how ``T`` is chosen (``data_temperature``).
        temperature_floor: ``fedmedlora+`` with a data-chosen ``T``: its smallest value (``data_temperature``).
        sites: Site names, only for error messages.

    Returns:
        float64 vector summing to 1, in the order of ``sizes``.
    """
    if rule not in RULES:
        raise AggregationError(f"unknown aggregation rule {rule!r}; expected one of {RULES}")
    size_vec = _as_vector(sizes, "sizes", sites)
    if rule != "fedmedlora+":
        return size_weights(size_vec, sites)
    if losses is None:
        raise AggregationError("rule 'fedmedlora+' needs one validation loss per site; got none")
    _as_vector(losses, "losses", sites)  # names the site before data_temperature looks at the values
    lw = loss_weights(losses, data_temperature(losses, temperature_rule, temperature, temperature_floor), sites)
    if lw.size != size_vec.size:
        raise AggregationError(f"{lw.size} losses for {size_vec.size} sizes")
    if combine_with_size:
        return normalize_weights(lw * size_weights(size_vec, sites), sites)
    return lw


def weights_for(
    settings: AggregationSettings,
    sizes: Sequence[float],
    losses: Sequence[float] | None = None,
    sites: Sequence[str] | None = None,
) -> np.ndarray:
    """``aggregation_weights`` driven by an ``AggregationSettings`` (a loss-weighted ``rolora`` weighs the sites as
    ``fedmedlora+`` does)."""
    return aggregation_weights(
        "fedmedlora+" if settings.uses_loss else settings.rule,
        sizes,
        losses,
        settings.temperature,
        combine_with_size=settings.combine_with_size,
        temperature_rule=settings.temperature_rule,
        temperature_floor=settings.temperature_floor,
        sites=sites,
    )


# ---- weighted mean -------------------------------------------------------------------------------------------


def check_update(
    update: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[tuple[int, ...], str]],
    site: str,
) -> None:
    """Check that one site's update has exactly the expected tensor names, shapes and dtypes.

    Args:
        update: Tensor name → array.
        expected: Tensor name → (shape, dtype name), e.g. from ``spec_of``.
        site: Site name for the error message.

    Raises:
        AggregationError: naming the site, the key and the expected vs received shape/dtype.
    """
    missing = sorted(set(expected) - set(update))
    extra = sorted(set(update) - set(expected))
    if missing or extra:
        raise AggregationError(
            f"site {site}: unexpected tensor set: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}"
        )
    for key, (shape, dtype) in expected.items():
        arr = update[key]
        if not isinstance(arr, np.ndarray):
            raise AggregationError(f"site {site}: {key} is a {type(arr).__name__}, not a numpy array")
        if tuple(arr.shape) != tuple(shape):
            raise AggregationError(f"site {site}: {key} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        if arr.dtype.name != dtype:
            raise AggregationError(f"site {site}: {key} has dtype {arr.dtype.name}, expected {dtype}")
        # integer dtypes only ever pass when the contract asks for them exactly (compressed transport: int8 values,
        # bf16 bit patterns as uint16); float tensors must be finite
        if arr.dtype.kind not in "fiu":
            raise AggregationError(f"site {site}: {key} has non-numeric dtype {arr.dtype.name}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise AggregationError(f"site {site}: {key} contains NaN or Inf")


def spec_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name → (shape, dtype name): the contract that every update must match."""
    return {k: (tuple(v.shape), np.asarray(v).dtype.name) for k, v in arrays.items()}


def weighted_mean(
    updates: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float],
    *,
    sites: Sequence[str] | None = None,
    expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
) -> dict[str, np.ndarray]:
    """Per-tensor weighted average ``Σ_k w̃_k θ_k[p]`` with ``w̃ = w / Σ w``.

    Accumulates in float64 and returns each tensor in its input dtype. ``expected`` (e.g. ``spec_of`` the global
    adapter) defines the key set, shapes and dtypes every update must match; without it the first update does,
    and a malformed first update then gets the *other* sites named.

    Args:
        updates: One ``{name: array}`` per site (at least one).
        weights: One finite weight ≥ 0 per site, positive sum (normalised here).
        sites: Site names for error messages (default ``#0, #1, …``).

    Returns:
        ``{name: array}`` with the same keys, shapes and dtypes as the updates.

    Raises:
        AggregationError: no update, mismatching keys/shapes/dtypes (naming site and key), bad weights.
    """
    if len(updates) == 0:
        raise AggregationError("weighted_mean: need at least one update, got none")
    names = list(sites) if sites is not None else [f"#{i}" for i in range(len(updates))]
    if len(names) != len(updates):
        raise AggregationError(f"weighted_mean: {len(names)} site names for {len(updates)} updates")
    if len(weights) != len(updates):
        raise AggregationError(f"weighted_mean: {len(weights)} weights for {len(updates)} updates")
    w = normalize_weights(weights, names)
    if expected is None:
        if not updates[0]:
            raise AggregationError(f"weighted_mean: update from site {names[0]} contains no tensor")
        expected = spec_of(updates[0])
    elif not expected:
        raise AggregationError("weighted_mean: the expected tensor set is empty")
    for key, (_shape, dtype) in expected.items():
        if np.dtype(dtype).kind != "f":  # averaging is only defined on float tensors (decode payloads first)
            raise AggregationError(f"weighted_mean: {key} has non-float dtype {dtype} (decode payloads first)")
    for update, name in zip(updates, names, strict=True):
        check_update(update, expected, name)
    out: dict[str, np.ndarray] = {}
    for key, (_shape, dtype) in expected.items():
        acc = np.zeros(expected[key][0], dtype=np.float64)
        for update, wk in zip(updates, w, strict=True):
            if wk != 0.0:
                acc += wk * update[key].astype(np.float64, copy=False)
        out[key] = acc.astype(dtype)
    return out


def trimmed_count(n_sites: int, trim_fraction: float) -> int:
    """How many values ``robust_mean`` drops at each end of every coordinate: ``floor(trim_fraction × n)``."""
    if not 0 <= trim_fraction < 0.5:
        raise AggregationError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    return math.floor(trim_fraction * n_sites)


def robust_mean(
    updates: Sequence[Mapping[str, np.ndarray]],
    rule: str,
    *,
    trim_fraction: float = 0.2,
    sites: Sequence[str] | None = None,
    expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
) -> dict[str, np.ndarray]:
    """Coordinate-wise median or trimmed mean of the sites' tensors (unweighted; Yin et al., ICML 2018).

    Each coordinate of each tensor is aggregated on its own: ``median`` takes the median of the sites' values,
    ``trimmed-mean`` drops the ``trimmed_count(n, trim_fraction)`` largest and smallest values and averages the
    rest. Up to that many hostile sites (any values at all) cannot move a coordinate outside the honest sites'
    range. Size or loss weights are not used: a weight is exactly what a hostile site would inflate. The same
    checks as ``weighted_mean`` run first (keys, shapes, dtypes, finiteness, naming the site). As with every rule
    that aggregates A and B separately, the result is not the median of the sites' ``B A``.

    Raises:
        AggregationError: an unknown rule, no update, a bad trim fraction, or an update that fails the checks.
    """
    if rule not in ROBUST_RULES or rule == "none":
        raise AggregationError(f"robust_mean: rule must be 'median' or 'trimmed-mean', got {rule!r}")
    if len(updates) == 0:
        raise AggregationError("robust_mean: need at least one update, got none")
    names = list(sites) if sites is not None else [f"#{i}" for i in range(len(updates))]
    expected = expected if expected is not None else spec_of(updates[0])
    for update, name in zip(updates, names, strict=True):
        check_update(update, expected, name)
    k = trimmed_count(len(updates), trim_fraction)
    out: dict[str, np.ndarray] = {}
    for key, (_shape, dtype) in expected.items():
        stack = np.stack([np.asarray(u[key], dtype=np.float64) for u in updates])
        if rule == "median":
            value = np.median(stack, axis=0)
        else:
            ordered = np.sort(stack, axis=0)
            value = ordered[k : len(updates) - k].mean(axis=0)
        out[key] = value.astype(dtype)
    return out


def merge_into(base: Mapping[str, np.ndarray], averaged: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The global adapter after a round: ``base`` with the averaged (shared) tensors replaced.

    Raises:
        AggregationError: an averaged tensor that ``base`` does not have or whose shape/dtype differs.
    """
    for key, arr in averaged.items():
        if key not in base:
            raise AggregationError(f"merge: averaged tensor {key} is not in the global adapter")
        if base[key].shape != arr.shape or base[key].dtype != arr.dtype:
            raise AggregationError(
                f"merge: {key} is {arr.shape}/{arr.dtype}, global is {base[key].shape}/{base[key].dtype}"
            )
    return {k: (np.array(averaged[k], copy=True) if k in averaged else v) for k, v in base.items()}


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Payload size: the sum of the arrays' ``nbytes``."""
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
