"""Per-arm metrics with 95% intervals, and the decision rules of A/B and interleaving tests.

Every metric is per served list (an impression), so each list is one independent draw:

* proportions (CTR = lists with a click, hit-rate@k = lists with a click in the top k,
  conversion = lists with a purchase) get the Wilson score interval: with p = x/n, z = z_{0.975},
  centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n);
* means (MRR = 1/rank of a list's first clicked item, 0 without a click; gain = sum over a
  list's rated items of rating / log2(rank + 1)) get mean +- t_{0.975, n-1} s / sqrt(n), from the
  count, sum and sum of squares.

A/B (each challenger against the control arm, on CTR): the pooled two-proportion z-test,
z = (p_b - p_a) / sqrt(p(1-p)(1/n_a + 1/n_b)), two-sided p; the minimum detectable effect at the
present sample is (z_{1-alpha/2} + z_{power}) sqrt(p(1-p)(1/n_a + 1/n_b)). That p-value is only
valid at one planned look; the sequential rule is the normal mixture SPRT of Johari, Koomen,
Pekelis & Walsh ("Peeking at A/B tests", KDD 2017): with the difference d, its null variance V
and a N(0, tau^2) mixture over the effect, the likelihood ratio is
Lambda = sqrt(V / (V + tau^2)) exp(tau^2 d^2 / (2 V (V + tau^2))), and the always-valid p-value
min(previous p, 1 / Lambda) stays below alpha with probability <= alpha under the null however
often it is looked at (Ville's inequality). Several challengers: Bonferroni, alpha / m each.

Interleaving: each impression is won by A, by B or tied; ties are dropped, and the wins are a
two-sided binomial sign test of share 1/2 (exact), with the share of B's wins and its Wilson
interval, plus the same mixture SPRT on the share (d = share - 1/2, V = 1/(4 n)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scipy import stats as st

from service.experiments.assignment import HOLDOUT

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
# Mixture sd of the SPRT: the size of effect it detects soonest (Johari et al. 2017 choose it from past effects):
# a CTR difference in points for A/B, a departure of the win share from 1/2 for interleaving.
AB_MIXTURE_SD = 0.02
INTERLEAVING_MIXTURE_SD = 0.1
Rule = Literal["sequential", "fixed"]


@dataclass(frozen=True)
class Estimate:
    """A metric and its interval; all None when nothing was measured."""

    value: float | None
    low: float | None
    high: float | None
    n: int


def _z(confidence: float) -> float:
    return float(st.norm.ppf(0.5 + confidence / 2))


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Estimate:
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} must be within 0..trials ({trials})")
    if trials == 0:
        return Estimate(None, None, None, 0)
    z, p, n = _z(confidence), successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(count: int, total: float, total_squares: float, confidence: float = CONFIDENCE) -> Estimate:
    """Mean +- t s / sqrt(n) from the count, the sum and the sum of squares of the values."""
    if count == 0:
        return Estimate(None, None, None, 0)
    mean = total / count
    if count == 1:
        return Estimate(mean, None, None, 1)
    variance = max(0.0, (total_squares - count * mean * mean) / (count - 1))  # rounding can dip below 0
    half = float(st.t.ppf(0.5 + confidence / 2, count - 1)) * math.sqrt(variance / count)
    return Estimate(mean, mean - half, mean + half, count)


def two_proportion_test(x_a: int, n_a: int, x_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled z-test of p_b = p_a; (0, 1) when either arm is empty or p is 0 or 1."""
    variance = _pooled_variance(x_a, n_a, x_b, n_b)
    if variance == 0:
        return 0.0, 1.0
    z = (x_b / n_b - x_a / n_a) / math.sqrt(variance)
    return z, float(2 * st.norm.sf(abs(z)))


def _pooled_variance(x_a: int, n_a: int, x_b: int, n_b: int) -> float:
    """Null variance of p_b - p_a: p(1-p)(1/n_a + 1/n_b) with the pooled p."""
    if n_a == 0 or n_b == 0:
        return 0.0
    pooled = (x_a + x_b) / (n_a + n_b)
    return pooled * (1 - pooled) * (1 / n_a + 1 / n_b)


def minimum_detectable_effect(x_a: int, n_a: int, x_b: int, n_b: int, alpha: float = ALPHA,
                              power: float = POWER) -> float | None:
    """Smallest absolute CTR difference the z-test detects with ``power`` at this sample; None before a
    first click (or while every list is clicked), when the pooled variance says nothing yet."""
    variance = _pooled_variance(x_a, n_a, x_b, n_b)
    if variance == 0:
        return None
    return (_z(1 - alpha) + float(st.norm.ppf(power))) * math.sqrt(variance)


def msprt_p_value(difference: float, variance: float, mixture_sd: float, previous: float = 1.0) -> float:
    """Always-valid p-value of the normal mixture SPRT (module docstring); ``previous``: the last look's."""
    if variance <= 0:
        return min(1.0, previous)
    tau2 = mixture_sd * mixture_sd
    log_ratio = 0.5 * math.log(variance / (variance + tau2)) + tau2 * difference * difference / (
        2 * variance * (variance + tau2))
    return min(1.0, previous, math.exp(-log_ratio))


def two_proportion_msprt(x_a: int, n_a: int, x_b: int, n_b: int, mixture_sd: float = AB_MIXTURE_SD,
                         previous: float = 1.0) -> float:
    """Always-valid p-value of p_b = p_a: the mixture SPRT on d = p_b - p_a with its pooled null variance."""
    if n_a == 0 or n_b == 0:
        return min(1.0, previous)
    return msprt_p_value(x_b / n_b - x_a / n_a, _pooled_variance(x_a, n_a, x_b, n_b), mixture_sd, previous)


def sign_msprt(wins_a: int, wins_b: int, mixture_sd: float = INTERLEAVING_MIXTURE_SD, previous: float = 1.0) -> float:
    """Always-valid p-value of a win share of 1/2: the mixture SPRT on d = share - 1/2, V = 1 / (4 n)."""
    decisive = wins_a + wins_b
    if decisive == 0:
        return min(1.0, previous)
    return msprt_p_value(wins_b / decisive - 0.5, 0.25 / decisive, mixture_sd, previous)


def sign_test(wins_a: int, wins_b: int) -> float:
    """Exact two-sided binomial p-value of wins_b among the decisive impressions, share 1/2."""
    decisive = wins_a + wins_b
    return 1.0 if decisive == 0 else float(st.binomtest(wins_b, decisive, 0.5).pvalue)


def users_needed_ab(p_a: float, p_b: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Lists per arm for the two-sided z-test to detect p_b != p_a (Fleiss' normal approximation)."""
    if p_a == p_b:
        return math.inf
    pooled = (p_a + p_b) / 2
    root = (_z(1 - alpha) * math.sqrt(2 * pooled * (1 - pooled))
            + float(st.norm.ppf(power)) * math.sqrt(p_a * (1 - p_a) + p_b * (1 - p_b)))
    return root * root / (p_b - p_a) ** 2


def users_needed_interleaving(win_share_b: float, decisive_share: float, alpha: float = ALPHA,
                              power: float = POWER) -> float:
    """Interleaved lists for the sign test to detect a win share != 1/2, when ``decisive_share`` of lists are not ties."""
    if win_share_b == 0.5 or decisive_share <= 0:
        return math.inf
    root = _z(1 - alpha) * 0.5 + float(st.norm.ppf(power)) * math.sqrt(win_share_b * (1 - win_share_b))
    return root * root / (win_share_b - 0.5) ** 2 / decisive_share


# ---- per-arm metrics and the report of GET /experiments/{id} ------------------------------
@dataclass(frozen=True)
class ArmCounts:
    """What the service aggregates per arm; sums run over the served lists (module docstring)."""

    impressions: int
    clicked: int = 0  # lists with at least one click
    hits: int = 0  # lists with a click within the top k
    conversions: int = 0  # lists with a purchase
    clicks: int = 0
    reciprocal_rank_sum: float = 0.0
    reciprocal_rank_squares: float = 0.0
    gain_sum: float = 0.0
    gain_squares: float = 0.0


@dataclass(frozen=True)
class ArmMetrics:
    name: str
    impressions: int
    clicks: int
    ctr: Estimate
    hit_rate: Estimate
    mrr: Estimate
    gain: Estimate
    conversion: Estimate


def arm_metrics(name: str, counts: ArmCounts, confidence: float = CONFIDENCE) -> ArmMetrics:
    n = counts.impressions
    return ArmMetrics(
        name, n, counts.clicks, wilson(counts.clicked, n, confidence), wilson(counts.hits, n, confidence),
        mean_interval(n, counts.reciprocal_rank_sum, counts.reciprocal_rank_squares, confidence),
        mean_interval(n, counts.gain_sum, counts.gain_squares, confidence),
        wilson(counts.conversions, n, confidence),
    )


@dataclass(frozen=True)
class Comparison:
    """A challenger against the control on CTR; ``in_decision`` is False for the holdout."""

    control: str
    challenger: str
    difference: float | None  # challenger's CTR - control's
    z: float
    p_value: float  # fixed horizon
    sequential_p_value: float  # always valid
    minimum_detectable_effect: float | None
    alpha: float  # after the Bonferroni split
    significant: bool
    in_decision: bool


@dataclass(frozen=True)
class InterleavingResult:
    arm_a: str
    arm_b: str
    wins_a: int
    wins_b: int
    ties: int
    win_share_b: Estimate  # B's share of the decisive impressions
    p_value: float  # sign test, fixed horizon
    sequential_p_value: float


@dataclass(frozen=True)
class Report:
    experiment: str
    kind: str
    rule: Rule
    alpha: float
    arms: list[ArmMetrics]
    comparisons: list[Comparison] = field(default_factory=list)
    interleaving: InterleavingResult | None = None
    decision: Literal["winner", "no decision"] = "no decision"
    winner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ab_report(experiment: str, counts: dict[str, ArmCounts], control: str, alpha: float = ALPHA,
              rule: Rule = "sequential", mixture_sd: float = AB_MIXTURE_SD,
              previous_p_values: dict[str, float] | None = None) -> Report:
    """Each other arm against ``control`` on CTR; a winner when the ``rule``'s p-value is under alpha / m.

    ``previous_p_values``: {challenger: sequential p-value at the last look}, so it never rises."""
    if control not in counts:
        raise ValueError(f"control arm {control!r} is not among the arms {sorted(counts)}")
    challengers = [name for name in counts if name != control]
    deciding = [name for name in challengers if name != HOLDOUT]
    each_alpha = alpha / max(1, len(deciding))
    a = counts[control]
    comparisons = []
    for name in challengers:
        b = counts[name]
        z, p = two_proportion_test(a.clicked, a.impressions, b.clicked, b.impressions)
        both = a.impressions > 0 and b.impressions > 0
        difference = b.clicked / b.impressions - a.clicked / a.impressions if both else None
        sequential = two_proportion_msprt(a.clicked, a.impressions, b.clicked, b.impressions, mixture_sd,
                                          (previous_p_values or {}).get(name, 1.0))
        deciding_p = sequential if rule == "sequential" else p
        comparisons.append(Comparison(
            control, name, difference, z, p, sequential,
            minimum_detectable_effect(a.clicked, a.impressions, b.clicked, b.impressions, each_alpha),
            each_alpha, deciding_p < each_alpha, name in deciding))
    winner = _ab_winner(control, [c for c in comparisons if c.in_decision])
    return Report(experiment, "ab", rule, alpha, [arm_metrics(n, c) for n, c in counts.items()], comparisons,
                  None, "winner" if winner else "no decision", winner)


def _ab_winner(control: str, comparisons: list[Comparison]) -> str | None:
    """The best challenger significantly above the control; else the control if it beat every challenger."""
    better = [c for c in comparisons if c.significant and (c.difference or 0) > 0]
    if better:
        return max(better, key=lambda c: c.difference or 0).challenger
    if comparisons and all(c.significant and (c.difference or 0) < 0 for c in comparisons):
        return control
    return None


def interleaving_report(experiment: str, arm_a: str, arm_b: str, wins_a: int, wins_b: int, ties: int,
                        counts: dict[str, ArmCounts] | None = None, alpha: float = ALPHA, rule: Rule = "sequential",
                        mixture_sd: float = INTERLEAVING_MIXTURE_SD, previous_p_value: float = 1.0) -> Report:
    """The sign test (fixed) or the mixture SPRT (sequential) on the impressions' wins; ``counts``: per-arm
    metrics when the service has them (the holdout's, or each team's items)."""
    sequential = sign_msprt(wins_a, wins_b, mixture_sd, previous_p_value)
    result = InterleavingResult(arm_a, arm_b, wins_a, wins_b, ties, wilson(wins_b, wins_a + wins_b),
                                sign_test(wins_a, wins_b), sequential)
    deciding_p = sequential if rule == "sequential" else result.p_value
    winner = (arm_b if wins_b > wins_a else arm_a) if deciding_p < alpha and wins_a != wins_b else None
    arms = [arm_metrics(n, c) for n, c in (counts or {}).items()]
    return Report(experiment, "interleaving", rule, alpha, arms, [], result,
                  "winner" if winner else "no decision", winner)
