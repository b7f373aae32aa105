#!/usr/bin/env python3
"""Generate the reference fixtures for package stats.

Run from this directory with SciPy and statsmodels installed:

    python3 -m venv /tmp/statsvenv && /tmp/statsvenv/bin/pip install scipy statsmodels
    /tmp/statsvenv/bin/python gen_fixtures.py

Sources of truth: SciPy (mannwhitneyu, fisher_exact, chisquare, nct, binom),
statsmodels (proportions_ztest, proportion_confint, confint_proportions_2indep,
multipletests), brute-force enumeration for exact rank distributions and
Hodges-Lehmann order statistics, and R's published outputs of power.t.test /
power.prop.test examples. The Go tests only read the JSON written here.
"""
import itertools
import json
import math

import numpy as np
import scipy
import statsmodels
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (confint_proportions_2indep,
                                          proportion_confint,
                                          proportions_ztest)

rng = np.random.default_rng(20240601)
ALT = {"two-sided": "two-sided", "greater": "greater", "less": "less"}


def dump(name, cases):
    doc = {
        "generator": "gen_fixtures.py",
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__,
        "cases": cases,
    }
    with open(name, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def r3(a):
    return [float(round(v, 3)) for v in a]


# --- Mann-Whitney -----------------------------------------------------------
# Hollander & Wolfe (1973, p. 110), the example of R's ?wilcox.test:
# wilcox.test(x, y, alternative = "g") gives W = 35, p-value = 0.1272.
hw_x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
hw_y = [1.15, 0.88, 0.90, 0.74, 1.21]

datasets = {
    "hollander wolfe depression scores": (hw_x, hw_y),
    "small continuous 6 vs 9": (r3(rng.normal(0.5, 1, 6)), r3(rng.normal(0, 1, 9))),
    "exact 5 vs 30": (r3(rng.normal(0.8, 1, 5)), r3(rng.normal(0, 1, 30))),
    "shifted normal 40 vs 60": (r3(rng.normal(0.4, 1, 40)), r3(rng.normal(0, 1, 60))),
    "heavy ties 200 vs 150": ([float(v) for v in rng.integers(0, 6, 200)],
                              [float(v) for v in rng.integers(1, 6, 150)]),
    "lognormal latency 300 vs 2700": (r3(rng.lognormal(math.log(420), 0.5, 300)),
                                      r3(rng.lognormal(math.log(400), 0.5, 2700))),
}

mw = []
for name, (x, y) in datasets.items():
    ties = len(set(x) | set(y)) < len(x) + len(y)
    methods = ["asymptotic"]
    if not ties and len(x) * len(y) <= 2500:
        methods.append("exact")
    if not ties and min(len(x), len(y)) <= 8:
        methods.append("auto")
    for method in methods:
        for alt in ALT:
            r = stats.mannwhitneyu(x, y, alternative=alt, method=method, use_continuity=True)
            mw.append({
                "name": f"{name} {method} {alt}",
                "canary": x, "stable": y,
                "alternative": alt, "method": method,
                "u": float(r.statistic), "p_value": float(r.pvalue),
            })
mw.append({"name": "hollander wolfe R published greater", "canary": hw_x, "stable": hw_y,
           "alternative": "greater", "method": "exact", "u": 35.0, "p_value": 0.1272,
           "tolerance": 5e-5})
dump("mannwhitney.json", mw)


# --- Hodges-Lehmann ---------------------------------------------------------
def exact_u_cdf(n1, n2):
    """P(U <= k) by enumerating every placement of the canary ranks."""
    n = n1 + n2
    counts = {}
    for combo in itertools.combinations(range(1, n + 1), n1):
        u = sum(combo) - n1 * (n1 + 1) // 2
        counts[u] = counts.get(u, 0) + 1
    total = math.comb(n, n1)
    cdf, acc = [], 0
    for k in range(n1 * n2 + 1):
        acc += counts.get(k, 0)
        cdf.append(acc / total)
    return cdf


def hodges_lehmann(x, y, conf):
    diffs = np.sort(np.subtract.outer(np.array(x), np.array(y)).ravel())
    N = len(diffs)
    alpha = 1 - conf
    pooled = list(x) + list(y)
    ties = len(set(pooled)) < len(pooled)
    if len(x) < 50 and len(y) < 50 and not ties:
        cdf = exact_u_cdf(len(x), len(y))
        k = next(i for i, c in enumerate(cdf) if c >= alpha / 2 * (1 - 1e-12))  # R's qwilcox
        exact = True
    else:
        n = len(x) + len(y)
        _, t = np.unique(pooled, return_counts=True)
        tie = float((t ** 3 - t).sum())
        sigma = math.sqrt(N / 12 * ((n + 1) - tie / (n * (n - 1))))
        k = math.ceil(N / 2 - 0.5 - stats.norm.ppf(1 - alpha / 2) * sigma)
        exact = False
    k = max(k, 1)
    return {"shift": float(np.median(diffs)), "lo": float(diffs[k - 1]),
            "hi": float(diffs[N - k]), "exact": exact}


hl = []
for name, (x, y) in [
    ("hollander wolfe depression scores", (hw_x, hw_y)),
    ("small continuous 6 vs 9", datasets["small continuous 6 vs 9"]),
    ("exact 12 vs 8", (r3(rng.normal(1, 1, 12)), r3(rng.normal(0, 1, 8)))),
    ("shifted normal 40 vs 60", datasets["shifted normal 40 vs 60"]),
    ("heavy ties 200 vs 150", datasets["heavy ties 200 vs 150"]),
    ("lognormal latency 300 vs 2700", datasets["lognormal latency 300 vs 2700"]),
]:
    for conf in (0.95, 0.90):
        if "hollander" in name or "exact 12" in name or "small" in name or conf == 0.95:
            out = hodges_lehmann(x, y, conf)
            hl.append({"name": f"{name} conf {conf}", "canary": x, "stable": y, "conf": conf, **out})
dump("hodges_lehmann.json", hl)


# --- Rates ------------------------------------------------------------------
tables = [
    # (canary events, canary n, stable events, stable n)
    ("tea tasting", 3, 4, 1, 4),
    ("bad answers 14% vs 3% small", 14, 100, 27, 900),
    ("errors equal rates", 30, 1000, 270, 9000),
    ("rare errors", 2, 500, 3, 4500),
    ("zero canary events", 0, 120, 9, 1080),
    ("large counts 50k", 1630, 50000, 1500, 50000),
    ("canary better", 5, 200, 60, 1800),
]
rates = []
for name, a, n1, c, n2 in tables:
    case = {"name": name, "canary_events": a, "canary_n": n1, "stable_events": c, "stable_n": n2}
    table = [[a, n1 - a], [c, n2 - c]]
    for alt, sm_alt in (("two-sided", "two-sided"), ("greater", "larger"), ("less", "smaller")):
        f = stats.fisher_exact(table, alternative=alt)
        case[f"fisher_{alt}"] = float(f.pvalue)
        if a + c not in (0, n1 + n2):
            z, p = proportions_ztest([a, c], [n1, n2], alternative=sm_alt)
            case[f"z_{alt}"] = float(p)
            case["z"] = float(z)
    f = stats.fisher_exact(table)
    case["odds_ratio"] = float(f.statistic) if np.isfinite(f.statistic) else None
    for conf in (0.95, 0.99):
        lo, hi = proportion_confint(a, n1, alpha=1 - conf, method="wilson")
        case[f"wilson_canary_{conf}"] = [float(lo), float(hi)]
        lo, hi = confint_proportions_2indep(a, n1, c, n2, method="newcomb", compare="diff", alpha=1 - conf)
        case[f"newcombe_{conf}"] = [float(lo), float(hi)]
    rates.append(case)
dump("rates.json", rates)


# --- Quantile ratios ----------------------------------------------------------
def quantile_ci(sorted_x, p, conf):
    n = len(sorted_x)
    a = 1 - conf
    l = int(stats.binom.ppf(a / 2, n, p))
    u = int(stats.binom.ppf(1 - a / 2, n, p)) + 1
    if l < 1 or u > n:
        return None
    return [float(sorted_x[l - 1]), float(sorted_x[u - 1])]


qr = []
for name, (c, s) in {
    "lognormal canary 30% slower": (r3(rng.lognormal(math.log(520), 0.5, 800)),
                                    r3(rng.lognormal(math.log(400), 0.5, 2400))),
    "equal gamma latencies": (r3(rng.gamma(4, 100, 1200)), r3(rng.gamma(4, 100, 1500))),
}.items():
    cs, ss = np.sort(c), np.sort(s)
    conf = 0.95
    out = []
    for p in (0.5, 0.95, 0.99):
        cci, sci = quantile_ci(cs, p, 1 - (1 - conf) / 2), quantile_ci(ss, p, 1 - (1 - conf) / 2)
        out.append({
            "p": p,
            "canary": float(np.quantile(c, p)), "stable": float(np.quantile(s, p)),
            "canary_ci": cci, "stable_ci": sci,
            "ci": [cci[0] / sci[1], cci[1] / sci[0]],
        })
    qr.append({"name": name, "canary": c, "stable": s, "conf": conf, "quantiles": out})
dump("quantile.json", qr)


# --- Power ------------------------------------------------------------------
def r_power_t(n, delta, sd, alpha):
    """R's power.t.test, two-sample, two-sided, strict = FALSE."""
    df = 2 * (n - 1)
    q = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(q, df, math.sqrt(n / 2) * delta / sd))


def r_power_prop(n, p1, p2, alpha):
    """R's power.prop.test, two-sided, strict = FALSE."""
    q1, q2 = 1 - p1, 1 - p2
    za = stats.norm.ppf(1 - alpha / 2)
    return float(stats.norm.cdf((math.sqrt(n) * abs(p1 - p2) - za * math.sqrt((p1 + p2) * (q1 + q2) / 2))
                                / math.sqrt(p1 * q1 + p2 * q2)))


def solve_n(f, target):
    return float(scipy.optimize.brentq(lambda n: f(n) - target, 2, 1e9, xtol=1e-10, rtol=1e-13))


power = []
# (sd, mde, alpha, power, R published n or None)
for sd, mde, alpha, pw, r_n in [
    (1, 1, 0.05, 0.90, 22.02110),   # power.t.test(power = .90, delta = 1)
    (1, 1, 0.05, 0.80, 16.71477),   # power.t.test(power = .80, delta = 1)
    (120, 30, 0.05, 0.80, None),    # latency: sd 120 ms, detect +30 ms
    (250, 25, 0.01, 0.90, None),
]:
    n = solve_n(lambda n: r_power_t(n, mde, sd, alpha), pw)
    power.append({"kind": "means_n", "sd": sd, "mde": mde, "alpha": alpha, "power": pw, "n": n, "r_published": r_n})
# (n, sd, mde, alpha, R published power or None)
for n, sd, mde, alpha, r_p in [
    (20, 1, 1, 0.05, 0.8689528),    # power.t.test(n = 20, delta = 1)
    (100, 120, 30, 0.05, None),
    (500, 250, 25, 0.01, None),
]:
    power.append({"kind": "means_power", "n": n, "sd": sd, "mde": mde, "alpha": alpha,
                  "power": r_power_t(n, mde, sd, alpha), "r_published": r_p})
for p1, mde, alpha, pw, r_n in [
    (0.50, 0.25, 0.05, 0.90, None),      # R: power.prop.test(p1 = .50, p2 = .75, power = .90) prints n = 76.7
    (0.03, 0.11, 0.05, 0.80, None),      # bad answers 3% -> 14%
    (0.02, 0.01, 0.05, 0.80, None),
]:
    n = solve_n(lambda n: r_power_prop(n, p1, p1 + mde, alpha), pw)
    power.append({"kind": "props_n", "baseline": p1, "mde": mde, "alpha": alpha, "power": pw, "n": n, "r_published": r_n})
for n, p1, mde, alpha, r_p in [
    (50, 0.50, 0.25, 0.05, 0.7401659),   # power.prop.test(n = 50, p1 = .50, p2 = .75)
    (300, 0.03, 0.02, 0.05, None),
]:
    power.append({"kind": "props_power", "n": n, "baseline": p1, "mde": mde, "alpha": alpha,
                  "power": r_power_prop(n, p1, p1 + mde, alpha), "r_published": r_p})
dump("power.json", power)


# --- Sample-ratio mismatch -----------------------------------------------------
srm = []
for name, obs, w in [
    ("healthy 90/10", [9012, 988], [90, 10]),
    ("canary starved 90/10", [9150, 850], [0.9, 0.1]),
    ("three arms fine", [8000, 1010, 990], [80, 10, 10]),
    ("three arms skewed", [8000, 1100, 900], [80, 10, 10]),
    ("tiny counts", [7, 3], [50, 50]),
]:
    exp = np.array(w, dtype=float) / sum(w) * sum(obs)
    r = stats.chisquare(obs, exp)
    srm.append({"name": name, "observed": obs, "weights": w,
                "chi_square": float(r.statistic), "p_value": float(r.pvalue)})
dump("srm.json", srm)


# --- Multiplicity -----------------------------------------------------------
mt = []
for name, ps in [
    ("five variants", [0.01, 0.04, 0.03, 0.005, 0.20]),
    ("ties and ones", [0.02, 0.02, 1.0, 0.5, 0.02, 0.001]),
    ("single", [0.03]),
    ("many small", list(map(float, np.round(rng.uniform(0, 0.1, 12), 5)))),
]:
    case = {"name": name, "p_values": ps}
    for method in ("holm", "fdr_bh"):
        case[method] = [float(v) for v in multipletests(ps, method=method)[1]]
    mt.append(case)
dump("multiplicity.json", mt)
