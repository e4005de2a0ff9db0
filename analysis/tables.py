"""The paper's result tables from run logs: mean ± std over seeds of each run's final validation.

    python -m analysis.tables multirun/main sweeps_out/step_weight [--out analysis_out] [--param algo.step_weight]
    python -m analysis.tables RUNS --layout paper [--envs alfworld,webshop]   # the paper's Table 1 (paper_table.py)

Writes each table as Markdown, LaTeX and CSV into ``--out``:
- ``alfworld``: success (%) per task type (Pick, Look, Clean, Heat, Cool, Pick2, All), rows = methods,
  as in the GiGPO paper's ALFWorld table;
- ``webshop-synthetic`` / ``webshop-real``: score and success (%) per method, named by catalog;
- ``<env>`` for any other environment (e.g. ``sokoban``): success (%) per method;
- ``ablation_<param>_<env>`` for each ``--param``: rows = parameter values, columns = methods.

The CSV holds the numbers (``<column> mean``, ``<column> std``, ``seeds``); Markdown and LaTeX hold
``mean ± std`` cells. Std is the sample std over seeds (ddof=1); a single seed shows its value alone.

Which runs share a cell: those of one environment and method that agree on every config key except
the seed and the keys that only say where or how a run was logged or executed (``NOT_A_SETTING``).
Any other key that differs between runs labels the rows (``GiGPO (mean), algo.step_weight=0.5``);
a key that does not apply to a method (``NOT_APPLICABLE``: GRPO and RLOO ignore step_weight and
gamma) never splits or labels its rows. Two runs with the same seed in one cell are an error (a
run counted twice). Unfinished runs (no final validation line) are left out unless
``--include-unfinished``, and then counted in an ``unfinished`` column and marked in the row label.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from gigpo.advantage import READS
from gigpo.config import role_of
from gigpo.analysis.load import load_runs, runs_frame

# Config keys that never split cells besides those whose declared role (gigpo.config) is logging or
# execution (``_is_setting``): the seed (what a cell pools over) and ``provenance.``, the record W&B's
# config carries.
NOT_A_SETTING = ("train.seed", "provenance.")
# Keys a method ignores, or that its label (analysis.load.method_label) already shows.
METHOD_KEYS = ("algo.name",)
GRAPH_ONLY = ("algo.omega", "algo.success_reward")
CRITIC_ONLY = ("algo.lam", "critic.lr", "critic.cliprange_value")
NOT_APPLICABLE = {"grpo": ("algo.mode", "algo.step_weight", "algo.gamma", "algo.similarity", *GRAPH_ONLY, *CRITIC_ONLY),
                  "rloo": ("algo.step_weight", "algo.gamma", "algo.similarity", *GRAPH_ONLY, *CRITIC_ONLY),
                  "gigpo": ("algo.mode", *GRAPH_ONLY, *CRITIC_ONLY),
                  "graphgpo": ("algo.gamma", "algo.similarity", *CRITIC_ONLY),
                  "ppo": ("algo.step_weight", "algo.mode", "algo.similarity", "algo.episode_stats", *GRAPH_ONLY)}
NOT_CONFIG = ("source", "method", "env", "seed", "finished", "env_steps", "time/wall_s", "cell")

ALFWORLD_COLUMNS = {"Pick": "val/success/pick", "Look": "val/success/look", "Clean": "val/success/clean",
                    "Heat": "val/success/heat", "Cool": "val/success/cool", "Pick2": "val/success/pick2",
                    "All": "val/success"}
WEBSHOP_COLUMNS = {"Score": "val/score", "Success": "val/success"}
METHOD_ORDER = ["Prompting", "ReAct", "PPO (with critic)", "RLOO", "GRPO (mean)", "GRPO", "GiGPO (mean_std)",
                "GiGPO (mean)", "GraphGPO"]
log = logging.getLogger(__name__)
SCALE = 100.0  # success and score are fractions in the logs and percentages in the tables


def order_methods(methods) -> list[str]:
    """Baselines first, then GiGPO (the paper's row order), then GraphGPO; unknown methods alphabetically after.
    A cell label (``GiGPO (mean), algo.step_weight=0.5``) ranks by its method, then by the label."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(set(methods), key=lambda m: (rank.get(m.split(", ")[0], len(rank)), m.split(", ")[0], m))


def readable(values) -> dict:
    """Value -> its text in a label: floats with the fewest significant digits (3 at least) that keep
    every distinct value of ``values`` distinct (a sampled ``0.30000000000000004`` reads ``0.3``)."""
    distinct = list(dict.fromkeys(v for v in values if not (isinstance(v, float) and math.isnan(v))))
    floats = [v for v in distinct if isinstance(v, float)]
    digits = 3
    while digits < 17 and len({f"{v:.{digits}g}" for v in floats}) < len(floats):
        digits += 1
    return {v: (f"{v:.{digits}g}" if isinstance(v, float) else str(v)) for v in distinct}


def seed_stats(frame: pd.DataFrame, by: str, columns: dict[str, str]) -> pd.DataFrame:
    """Per value of ``by``: mean and std (ddof=1) over runs of each metric, scaled to percent, and the run count.

    Columns are ``(label, "mean")``, ``(label, "std")`` for each ``label -> metric`` and ``("seeds", "")``.
    """
    out = {}
    groups = frame.groupby(by, sort=False, dropna=False)
    for label, metric in columns.items():
        values = frame[metric] * SCALE if metric in frame.columns else pd.Series(math.nan, index=frame.index)
        grouped = values.groupby(frame[by], sort=False, dropna=False)
        out[(label, "mean")] = grouped.mean()
        out[(label, "std")] = grouped.std(ddof=1)
    out[("seeds", "")] = groups.size()
    table = pd.DataFrame(out)
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def cells(table: pd.DataFrame, pm: str = "±") -> pd.DataFrame:
    """``mean ± std`` strings, one column per label, then the counts (``seeds``, ``unfinished``) as
    integers: a reader sees how many runs each cell averages."""
    out = pd.DataFrame(index=table.index)
    for label, stat in table.columns:
        if stat == "mean":
            out[label] = [_cell(m, s, pm) for m, s in zip(table[(label, "mean")], table[(label, "std")])]
    for label, stat in table.columns:
        if stat == "":
            out[label] = ["–" if pd.isna(n) else str(int(n)) for n in table[(label, "")]]
    return out


def _cell(mean: float, std: float, pm: str) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} {pm} {std:.1f}"


def generic_columns(frame: pd.DataFrame, env: str) -> dict[str, str]:
    """Success per task type (when an env has several), then overall success."""
    prefix = "val/success/"
    types = sorted(c[len(prefix):] for c in frame.columns if c.startswith(prefix) and frame[c].notna().any())
    columns = {t.capitalize(): prefix + t for t in types if t != env}
    columns["Success"] = "val/success"
    return columns


def ablation_table(frame: pd.DataFrame, param: str) -> pd.DataFrame:
    """Rows = values of ``param``, columns = methods; cells = final success (%) over seeds. Methods
    ``param`` does not apply to (step_weight for GRPO) have no column. When other settings vary too
    (a sweep over N and w), every one of them joins the row label (``0.5, algo.group_size=4``), so a
    cell never pools runs that differ in anything but the seed; values read rounded (``readable``)."""
    if param not in frame.columns:
        raise KeyError(f"--param {param}: no run's config has this key")
    if "algo.name" in frame.columns:
        frame = frame[[applies(param, a) for a in frame["algo.name"]]]
    label_cells(frame)  # refuses a seed counted twice in a cell
    others = [k for k in settings(frame) if k != param]
    texts = {k: readable(frame[k]) for k in [param, *others]}
    frame = frame.assign(row=[", ".join([texts[param].get(row[param], str(row[param])),
                                         *(f"{k}={texts[k].get(row[k], str(row[k]))}" for k in others)])
                              for _, row in frame.iterrows()])
    order = {label: (value, label) for label, value in zip(frame["row"], frame[param])}
    parts = []
    for method in order_methods(frame["method"].unique()):
        part = seed_stats(frame[frame["method"] == method], "row", {method: "val/success"})
        parts.append(part.rename(columns={"seeds": f"seeds {method}"}, level=0))
    table = pd.concat(parts, axis=1)
    table = table.loc[sorted(table.index, key=lambda label: _sort_key(order[label]))]
    table.index.name = param if not others else ", ".join([param, *others])
    return table


def _sort_key(item):
    value, label = item
    return (0, value, label) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value), label)


def _is_setting(key: str) -> bool:
    return not (key in NOT_CONFIG or key.startswith("val/") or key in METHOD_KEYS
                or any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_A_SETTING)
                or role_of(key) in ("logging", "execution"))


def applies(key: str, algo_name) -> bool:
    return key not in NOT_APPLICABLE.get(str(algo_name), ())


def settings(frame: pd.DataFrame) -> list[str]:
    """Config keys (other than seed, method and logging-only keys) whose values differ between runs
    of the same method, counting only the methods each key applies to."""
    varying = []
    for key in sorted(c for c in frame.columns if _is_setting(c)):
        for _, runs in frame.groupby("method"):
            values = runs.loc[[applies(key, a) for a in runs.get("algo.name", [None] * len(runs))], key]
            if values.map(repr).nunique() > 1:
                varying.append(key)
                break
    return varying


def unmatched_keys(frame: pd.DataFrame, arm: str, other: str) -> list[str]:
    """Config keys in which the runs of method ``arm`` and method ``other`` differ beyond the
    estimator itself: every setting key (not the seed, logging or execution keys) whose set of
    values differs between the two arms, except ``algo.name`` and the algo keys that only one of
    the two estimators reads (``gigpo.advantage.READS``: GiGPO's step_weight against GRPO, say).
    A key both read, such as the normaliser ``algo.mode``, counts. Empty: the arms are matched."""
    runs = {name: frame[frame["method"] == name] for name in (arm, other)}
    for name, part in runs.items():
        if part.empty:
            raise ValueError(f"no runs of method {name!r}; methods: {sorted(set(frame['method']))}")
    estimators = {name: set(part["algo.name"].astype(str)) if "algo.name" in part else set()
                  for name, part in runs.items()}
    specific = {key for keys in READS.values() for key in keys}
    # Two arms of one estimator are told apart by the normaliser in their labels (GiGPO (mean) vs
    # GiGPO (mean_std)): that key is then what is compared, not a confound.
    compared = {"algo.mode"} if estimators[arm] == estimators[other] else set()

    def reads(name: str, key: str) -> bool:
        return all(key in READS.get(e, ()) for e in estimators[name]) if key in specific else True

    differ = []
    for key in sorted(c for c in frame.columns if _is_setting(c)):
        if key in compared or not (reads(arm, key) and reads(other, key)):
            continue
        values = [set(part[key].map(repr)) if key in part else {repr(None)} for part in runs.values()]
        if values[0] != values[1]:
            differ.append(key)
    return differ


def unmatched_note(frame: pd.DataFrame, arm: str, other: str) -> str:
    """"" when matched, else e.g. "GiGPO (mean) vs GRPO also differ in: algo.mode (mean vs mean_std)"."""
    keys = unmatched_keys(frame, arm, other)
    if not keys:
        return ""

    def shown(name: str, key: str) -> str:
        values = sorted(set(frame.loc[frame["method"] == name, key].map(str))) if key in frame else ["None"]
        return "/".join(values)

    return f"{arm} vs {other} also differ in: " + ", ".join(
        f"{key} ({shown(arm, key)} vs {shown(other, key)})" for key in keys)


def comparison_notes(frame: pd.DataFrame) -> list[str]:
    """For every pair of methods in ``frame`` (one table), the note naming the keys they differ in
    beyond the estimator; matched pairs give none."""
    methods = order_methods(frame["method"].unique())
    notes = [unmatched_note(frame, a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    return [note for note in notes if note]


def label_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``cell`` column: the method plus ``key=value`` for each setting that differs between runs
    (``settings``); refuses two runs with the same seed in one cell."""
    keys = settings(frame)
    frame = frame.copy()
    texts = {k: readable(frame[k]) for k in keys}

    def label(row) -> str:
        parts = [f"{k}={texts[k].get(row[k], str(row[k]))}" for k in keys if applies(k, row.get("algo.name"))]
        return ", ".join([row["method"], *parts])

    frame["cell"] = [label(row) for _, row in frame.iterrows()] if len(frame) else []
    for cell, runs in frame.groupby("cell"):
        seeds = runs["seed"]
        if seeds.duplicated().any():
            twice = sorted(set(seeds[seeds.duplicated()]))
            sources = list(runs.loc[runs["seed"].isin(twice), "source"])
            raise ValueError(f"table cell {cell!r}: seed(s) {twice} appear in more than one run {sources}: "
                             "a run would be counted twice; remove the copies or give the runs distinct configs")
    if "finished" in frame.columns and not frame["finished"].all():
        unfinished = frame.groupby("cell")["finished"].apply(lambda f: int((~f.astype(bool)).sum()))
        frame["cell"] = [c if unfinished[c] == 0 else f"{c} ({unfinished[c]} unfinished)" for c in frame["cell"]]
    return frame


def cell_table(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Rows = cells (method and differing settings), methods in the paper's order."""
    frame = label_cells(frame)
    table = seed_stats(frame, "cell", columns)
    if "finished" in frame.columns and not frame["finished"].all():
        table[("unfinished", "")] = (~frame["finished"].astype(bool)).groupby(frame["cell"]).sum()
    methods = dict(zip(frame["cell"], frame["method"]))
    rank = {m: i for i, m in enumerate(order_methods(frame["method"].unique()))}
    table = table.loc[sorted(table.index, key=lambda c: (rank[methods[c]], c))]
    table.index.name = "Method"
    return table


def build_tables(frame: pd.DataFrame, params: list[str] = (), include_unfinished: bool = False
                 ) -> dict[str, pd.DataFrame]:
    """Every table the run logs support, by file stem (unfinished runs left out unless asked for)."""
    tables = {}
    if "finished" in frame.columns and not include_unfinished:
        left_out = int((~frame["finished"].astype(bool)).sum())
        if left_out:
            log.warning("left out %d unfinished run(s) (no final validation line); --include-unfinished counts "
                        "them, marked", left_out)
        frame = frame[frame["finished"].astype(bool)]
    for env in sorted(frame["env"].unique()):
        runs = frame[frame["env"] == env].dropna(axis=1, how="all")
        if env == "alfworld":
            tables["alfworld"] = cell_table(runs, ALFWORLD_COLUMNS)
        elif env.startswith("webshop"):  # webshop-synthetic or webshop-real (analysis.load.Run.env)
            tables[env] = cell_table(runs, WEBSHOP_COLUMNS)
        else:
            tables[env] = cell_table(runs, generic_columns(runs, env))
        for param in params:
            tables[f"ablation_{param}_{env}"] = ablation_table(runs, param)
    return tables


def table_notes(frame: pd.DataFrame, include_unfinished: bool = False) -> dict[str, list[str]]:
    """Per env table of ``build_tables``: the pairs of methods it shows that differ in more than
    the estimator (``comparison_notes``), so that no row pair reads as a matched comparison unnoticed."""
    if "finished" in frame.columns and not include_unfinished:
        frame = frame[frame["finished"].astype(bool)]
    return {env: comparison_notes(frame[frame["env"] == env].dropna(axis=1, how="all"))
            for env in sorted(frame["env"].unique())}


def to_markdown(table: pd.DataFrame) -> str:
    shown = cells(table, "±")
    header = [str(shown.index.name or ""), *map(str, shown.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(shown.columns)) + "|"]
    for index, row in shown.iterrows():
        lines.append("| " + " | ".join([str(index), *row]) + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    shown = cells(table, r"$\pm$")
    shown.index = [_latex_escape(str(i)) for i in shown.index]
    shown.columns = [_latex_escape(str(c)) for c in shown.columns]
    shown.index.name = _latex_escape(str(table.index.name or ""))
    return shown.to_latex(escape=False, column_format="l" + "c" * len(shown.columns))


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def to_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    flat.columns = [" ".join(str(p) for p in col if p) for col in table.columns]
    return flat


def notes_markdown(notes: list[str]) -> str:
    """The unmatched-comparison notes under a Markdown table ("" when every pair is matched)."""
    return "".join(f"\n**Not a matched comparison:** {note}.\n" for note in notes)


def write_tables(tables: dict[str, pd.DataFrame], out: Path, notes: dict[str, list[str]] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, table in tables.items():
        name = stem.replace("/", "_")
        (out / f"{name}.md").write_text(to_markdown(table) + notes_markdown((notes or {}).get(stem, [])))
        (out / f"{name}.tex").write_text(to_latex(table))
        to_csv_frame(table).to_csv(out / f"{name}.csv")
        written += [out / f"{name}.{ext}" for ext in ("md", "tex", "csv")]
    return written


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run, multirun or sweep directories, or wandb:ENTITY/PROJECT")
    parser.add_argument("--out", type=Path, default=Path("analysis_out"), help="output folder")
    parser.add_argument("--param", action="append", default=[], help="swept config key for an ablation table")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also count runs without a final validation (marked in the row label)")
    parser.add_argument("--wandb-group", help="wandb: sources: only runs of this W&B group")
    parser.add_argument("--wandb-tag", action="append", default=[], help="wandb: sources: only runs with this tag")
    parser.add_argument("--layout", choices=("envs", "paper"), default="envs",
                        help="envs: a table per environment; paper: one table in the paper's Table 1 layout")
    parser.add_argument("--envs", default="alfworld,webshop",
                        help="--layout paper: the two environments of its blocks (e.g. sokoban,webshop on a CPU)")
    args = parser.parse_args(argv)
    frame = runs_frame(load_runs(args.runs, args.wandb_group, args.wandb_tag))
    if args.layout == "paper":
        from gigpo.analysis import paper_table

        envs = tuple(e.strip() for e in args.envs.split(",") if e.strip())
        if len(envs) != 2:
            raise SystemExit(f"--envs {args.envs!r}: give two environments, e.g. alfworld,webshop")
        table = paper_table.paper_table(frame, envs)
        paper_table.write(table, args.out)
        print(f"## Table 1 layout (success/score in %, mean ± std over seeds)\n\n{paper_table.to_markdown(table)}")
        print(f"wrote table1 (md, tex, csv) to {args.out}")
        return {"table1": table}
    tables = build_tables(frame, args.param, args.include_unfinished)
    notes = table_notes(frame, args.include_unfinished)
    write_tables(tables, args.out, notes)
    for stem, table in tables.items():
        print(f"## {stem} (success/score in %, mean ± std over seeds)\n\n{to_markdown(table)}"
              f"{notes_markdown(notes.get(stem, []))}")
    print(f"wrote {len(tables)} tables (md, tex, csv) to {args.out}")
    return tables


def cli() -> None:
    """The ``gigpo-tables`` command: ``main`` without its return value, which a console script would
    turn into the exit status (a non-empty dict exits 1)."""
    main()


if __name__ == "__main__":
    main()
