"""Data and figures of the closing chapter (book/summary.md) and of the book's front page.

    python scripts/make_figures.py trained   # book/data/summary_trained.json: the shipped models
    python scripts/make_figures.py figures   # book/images/chapter_*.png from book/data/*.json

The 64-D mixture numbers come from the benchmark itself (the commands are in book/summary.md):

    python -m fastdiff_edu.bench error --problem gmm64 --schedule ddpm --solvers <all> \
        --nfe 5,10,15,20,50 --grid default --batch 128 --json book/data/summary_gmm64.json

``trained`` runs the registry's samplers on the shipped models: sliced W2 to the training set of
the 2D models (moons-eps, ring-eps) and FD-digits of the digits model (``nets.fd_digits``,
359 samples: as many as the held-out digits that give ``nets.fd_floor()``), each sampler on its
own default grid, seeds fixed. ``figures`` draws one small figure per chapter from the JSON
files: the chapter's samplers in colour over all the others in grey.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "book" / "data"
IMAGES = ROOT / "book" / "images"

# samplers run on the trained models: every registry sampler that needs no exact-problem option
# (Analytic-DPM's Gamma table, GENIE's head) and spends its budget in fixed steps
SKIP_TRAINED = {"rk45", "dpm-solver-adaptive", "analytic-ddpm", "analytic-ddim", "genie", "genie-exact"}
TOY_NFES = (10, 20)
DIGITS_NFES = (5, 10, 20, 50)


def run_trained(n_toy: int = 2048, n_digits: int = 359, seed: int = 0, progress: bool = True) -> dict:
    import fastdiff_edu as fd
    from fastdiff_edu import metrics, nets, solvers

    torch.set_grad_enabled(False)
    out = {"command": "python scripts/make_figures.py trained", "torch": torch.__version__,
           "machine": platform.machine(), "seed": seed, "toy": {}, "digits": {}}
    names = [n for n, s in solvers.REGISTRY.items() if n not in SKIP_TRAINED]
    for data in ("moons", "ring"):
        model = nets.load(f"{data}-eps")
        target = nets.toy2d(data, n_toy, seed=seed + 1)
        x_T = model.schedule.prior_sample(model.sample_shape(n_toy), generator=torch.Generator().manual_seed(seed))
        rows = []
        for name in names:
            for nfe in TOY_NFES:
                if nfe < solvers.get(name).min_nfe:
                    continue
                options = {"generator": torch.Generator().manual_seed(seed + 2)} if solvers.get(name).stochastic else {}
                x, info = fd.sample(model, x_T, name, nfe=nfe, return_info=True, **options)
                rows.append({"solver": name, "nfe_asked": nfe, "nfe_used": info.nfe,
                             "sliced_w2": metrics.sliced_wasserstein(x, target)})
            if progress:
                print(data, name, rows[-1], file=sys.stderr)
        floor = metrics.sliced_wasserstein(nets.toy2d(data, n_toy, seed=seed + 3), target)
        out["toy"][data] = {"n": n_toy, "floor": floor, "rows": rows}
    model = nets.load("digits-eps")
    x_T = model.schedule.prior_sample(model.sample_shape(n_digits), generator=torch.Generator().manual_seed(seed))
    rows = []
    for name in names:
        for nfe in DIGITS_NFES:
            if nfe < solvers.get(name).min_nfe:
                continue
            options = {"generator": torch.Generator().manual_seed(seed + 2)} if solvers.get(name).stochastic else {}
            started = time.perf_counter()
            x, info = fd.sample(model, x_T, name, nfe=nfe, return_info=True, **options)
            rows.append({"solver": name, "nfe_asked": nfe, "nfe_used": info.nfe, "fd_digits": nets.fd_digits(x),
                         "seconds": time.perf_counter() - started})
            if progress:
                print("digits", rows[-1], file=sys.stderr)
    out["digits"] = {"n": n_digits, "floor": nets.fd_floor(), "rows": rows}
    return out


# ----------------------------------------------------------------------------------------------
# figures for the front page: one per chapter, drawn from the stored benchmark numbers
# ----------------------------------------------------------------------------------------------
CHAPTER_SOLVERS = {
    "recap": (["ddim", "euler", "rk45"], "rmse"),
    "deis": (["deis-tab", "deis-rhoab", "deis-rhork", "ddim"], "rmse"),
    "dpm_solver": (["dpm-solver-1", "dpm-solver-2", "dpm-solver-3", "dpm-solver-2m", "dpm-solver-3m"], "rmse"),
    "dpm_solver_pp": (["dpm-solver++2s", "dpm-solver++2m", "dpm-solver++3m", "sde-dpm-solver++1",
                       "sde-dpm-solver++2m"], "sliced_w2"),
    "edm": (["euler-edm", "heun-edm", "edm-rk2", "edm-stochastic"], "sliced_w2"),
    "pndm": (["s-pndm", "plms", "ipndm", "prk", "f-pndm", "fon"], "rmse"),
    "genie": (["genie", "genie-exact", "ddim"], "rmse"),
    "quasi_taylor": (["quasi-taylor", "ito-taylor", "ddim", "ddpm"], "sliced_w2"),
    "analytic_dpm": (["analytic-ddpm", "analytic-ddim", "ddpm"], "sliced_w2"),
    "fastdpm": (["fastdpm", "ddpm", "ddim"], "sliced_w2"),
    "summary": (None, "rmse"),
}


def load_gmm64() -> dict:
    """The gmm64 benchmark rows of book/data/summary_gmm64*.json, merged."""
    result = json.loads((DATA / "summary_gmm64.json").read_text())
    extra = DATA / "summary_gmm64_pndm.json"
    if extra.exists():
        more = json.loads(extra.read_text())
        result["rows"] += more["rows"]
        result["orders"].update(more["orders"])
    return result


def best_per_nfe(rows: list, key: str = "rmse") -> dict:
    """NFE -> (solver, value) with the smallest ``key`` among rows that asked for that NFE."""
    best = {}
    for row in rows:
        if row[key] is None or row["nfe_asked"] is None:
            continue
        nfe = row["nfe_asked"]
        if nfe not in best or row[key] < best[nfe][1]:
            best[nfe] = (row["solver"], row[key])
    return dict(sorted(best.items()))


def draw_chapter_figures() -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    result = load_gmm64()
    rows = result["rows"]
    solvers_all = list(dict.fromkeys(r["solver"] for r in rows))
    IMAGES.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter, (names, key) in CHAPTER_SOLVERS.items():
        fig, ax = plt.subplots(figsize=(3.2, 2.3))
        for name in solvers_all:
            mine = [r for r in rows if r["solver"] == name and r[key] is not None and r["nfe_asked"] is not None]
            if mine:
                ax.loglog([r["nfe_used"] for r in mine], [r[key] for r in mine], "-", color="0.85", lw=0.8, zorder=1)
        if names is None:  # the summary: the best sampler at each NFE
            best = best_per_nfe(rows, key)
            ddim = {r["nfe_asked"]: r[key] for r in rows if r["solver"] == "ddim"}
            ax.loglog(list(best), [v for _, v in best.values()], "o-", color="C3", label="best", zorder=3)
            ax.loglog(list(ddim), list(ddim.values()), "s--", color="k", ms=3, label="ddim", zorder=3)
        else:
            for i, name in enumerate(names):
                mine = [r for r in rows if r["solver"] == name and r[key] is not None]
                if not mine:
                    continue
                if mine[0]["nfe_asked"] is None:  # adaptive: one point
                    ax.loglog([mine[0]["nfe_used"]], [mine[0][key]], "*", ms=8, color=f"C{i}", label=name, zorder=3)
                else:
                    ax.loglog([r["nfe_used"] for r in mine], [r[key] for r in mine], "o-", ms=3, color=f"C{i}",
                              label=name, zorder=3)
        if key == "sliced_w2":
            ax.axhline(result["reference"]["sliced_w2"], color="gray", ls=":", lw=1)
        ax.set_xlabel("NFE", fontsize=7)
        ax.set_ylabel("error to reference" if key == "rmse" else "sliced W2 to exact", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5.5, loc="upper right", frameon=False)
        ax.set_xlim(4, 60 if chapter != "recap" else 300)
        ax.set_ylim(*((2e-5, 5) if key == "rmse" else (0.05, 5)))
        ticks = [5, 10, 20, 50] + ([150] if chapter == "recap" else [])
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(t) for t in ticks]))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        fig.tight_layout(pad=0.3)
        path = IMAGES / f"chapter_{chapter}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["trained", "figures"])
    parser.add_argument("--n-toy", type=int, default=2048)
    parser.add_argument("--n-digits", type=int, default=359)
    args = parser.parse_args(argv)
    if args.what == "trained":
        result = run_trained(args.n_toy, args.n_digits)
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "summary_trained.json").write_text(json.dumps(result, indent=1))
        print(f"wrote {DATA / 'summary_trained.json'}")
    else:
        for path in draw_chapter_figures():
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
