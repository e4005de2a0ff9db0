"""The paper's result tables from run logs: mean ± std over seeds of each run's final validation.

    python -m analysis.tables multirun/main sweeps_out/step_weight [--out analysis_out] [--param algo.step_weight]

Writes each table as Markdown, LaTeX and CSV into ``--out``:
- ``alfworld``: success (%) per task type (Pick, Look, Clean, Heat, Cool, Pick2, All), rows = methods,
  as in the GiGPO paper's ALFWorld table;
- ``webshop``: score and success (%) per method;
- ``<env>`` for any other environment (e.g. ``sokoban``): success (%) per method;
- ``ablation_<param>_<env>`` for each ``--param``: rows = parameter values, columns = methods.

The CSV holds the numbers (``<column> mean``, ``<column> std``, ``seeds``); Markdown and LaTeX hold
``mean ± std`` cells. Std is the sample std over seeds (ddof=1); a single seed shows its value alone.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from analysis.load import load_runs, runs_frame

ALFWORLD_COLUMNS = {"Pick": "val/success/pick", "Look": "val/success/look", "Clean": "val/success/clean",
                    "Heat": "val/success/heat", "Cool": "val/success/cool", "Pick2": "val/success/pick2",
                    "All": "val/success"}
WEBSHOP_COLUMNS = {"Score": "val/score", "Success": "val/success"}
METHOD_ORDER = ["RLOO", "GRPO", "GiGPO (mean_std)", "GiGPO (mean)", "GraphGPO"]
SCALE = 100.0  # success and score are fractions in the logs and percentages in the tables


def order_methods(methods) -> list[str]:
    """Baselines first, then GiGPO (the paper's row order), then GraphGPO; unknown methods alphabetically after."""
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


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
    """``mean ± std`` strings, one column per label (the ``seeds`` counts dropped)."""
    labels = [label for label, stat in table.columns if stat == "mean"]
    out = pd.DataFrame(index=table.index)
    for label in labels:
        out[label] = [_cell(m, s, pm) for m, s in zip(table[(label, "mean")], table[(label, "std")])]
    return out


def _cell(mean: float, std: float, pm: str) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} {pm} {std:.1f}"


def method_table(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    table = seed_stats(frame, "method", columns)
    table = table.loc[order_methods(table.index)]
    table.index.name = "Method"
    return table


def generic_columns(frame: pd.DataFrame, env: str) -> dict[str, str]:
    """Success per task type (when an env has several), then overall success."""
    prefix = "val/success/"
    types = sorted(c[len(prefix):] for c in frame.columns if c.startswith(prefix) and frame[c].notna().any())
    columns = {t.capitalize(): prefix + t for t in types if t != env}
    columns["Success"] = "val/success"
    return columns


def ablation_table(frame: pd.DataFrame, param: str) -> pd.DataFrame:
    """Rows = values of ``param``, columns = methods; cells = final success (%) over seeds."""
    if param not in frame.columns:
        raise KeyError(f"--param {param}: no run's config has this key")
    parts = []
    for method in order_methods(frame["method"].unique()):
        part = seed_stats(frame[frame["method"] == method], param, {method: "val/success"})
        parts.append(part.rename(columns={"seeds": f"seeds {method}"}, level=0))
    table = pd.concat(parts, axis=1).sort_index()
    table.index.name = param
    return table


def build_tables(frame: pd.DataFrame, params: list[str] = ()) -> dict[str, pd.DataFrame]:
    """Every table the run logs support, by file stem."""
    tables = {}
    for env in sorted(frame["env"].unique()):
        runs = frame[frame["env"] == env].dropna(axis=1, how="all")
        if env == "alfworld":
            tables["alfworld"] = method_table(runs, ALFWORLD_COLUMNS)
        elif env == "webshop":
            tables["webshop"] = method_table(runs, WEBSHOP_COLUMNS)
        else:
            tables[env] = method_table(runs, generic_columns(runs, env))
        for param in params:
            tables[f"ablation_{param}_{env}"] = ablation_table(runs, param)
    return tables


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


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, table in tables.items():
        name = stem.replace("/", "_")
        (out / f"{name}.md").write_text(to_markdown(table))
        (out / f"{name}.tex").write_text(to_latex(table))
        to_csv_frame(table).to_csv(out / f"{name}.csv")
        written += [out / f"{name}.{ext}" for ext in ("md", "tex", "csv")]
    return written


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run, multirun or sweep directories, or wandb:ENTITY/PROJECT")
    parser.add_argument("--out", type=Path, default=Path("analysis_out"), help="output folder")
    parser.add_argument("--param", action="append", default=[], help="swept config key for an ablation table")
    args = parser.parse_args(argv)
    frame = runs_frame(load_runs(args.runs))
    tables = build_tables(frame, args.param)
    write_tables(tables, args.out)
    for stem, table in tables.items():
        print(f"## {stem} (success/score in %, mean ± std over seeds)\n\n{to_markdown(table)}")
    print(f"wrote {len(tables)} tables (md, tex, csv) to {args.out}")
    return tables


if __name__ == "__main__":
    main()
