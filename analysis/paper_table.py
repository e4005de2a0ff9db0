"""The GiGPO paper's Table 1 layout (arXiv 2505.10978): ``python -m analysis.tables RUNS --layout paper``.

One table: a section per model (``model.path``'s folder name for model=hf, "tiny (random init)"
for model=tiny), in it the prompting rows (the model as loaded, ReAct, Reflexion) and the RL rows
(PPO with critic, RLOO, GRPO, GiGPO w/ std, GiGPO w/o std: the paper's order; other methods such as
GraphGPO after them); columns: ALFWorld's six task types and All, then WebShop's score and
success, each block with its seed count. Cells are mean ± std (ddof=1) over seeds of the final
validation, in percent; a cell without runs shows "-", never a number from elsewhere.

``--envs A,B`` puts environment A's runs in the first block and B's in the second (the CPU
demonstration: ``--envs sokoban,webshop``); a block of an env other than ALFWorld has its task types
(if any) and All.

The paper's own numbers come from ``REFERENCE`` (``analysis/paper_table1.csv``), transcribed once
with the source of each row named (header comments, ``source`` column); its rows are shown as
sections labelled "paper", a cell it leaves empty as "-". Rows whose
method the harness does not run carry a note (``NOT_REPRODUCED``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gigpo.analysis.tables import ALFWORLD_COLUMNS, generic_columns, label_cells

REFERENCE = Path(__file__).with_name("paper_table1.csv")
PROMPTING, RL = "Prompting", "RL training"
ROWS = [(PROMPTING, "Prompting"), (PROMPTING, "ReAct"), (PROMPTING, "Reflexion"), (RL, "PPO (with critic)"),
        (RL, "RLOO"), (RL, "GRPO"), (RL, "GiGPO (mean_std)"), (RL, "GiGPO (mean)")]
"""(group, method label of ``analysis.load.method_label``) in the paper's order."""
PAPER_NAMES = {"Prompting": "Base model", "GiGPO (mean_std)": "GiGPO w/ std", "GiGPO (mean)": "GiGPO w/o std"}
NOT_REPRODUCED = {"Reflexion": "Reflexion: not reproduced. It needs repeated trials of one task with a written "
                               "self-reflection carried into the next trial; the harness runs single episodes."}
BLOCK_TITLES = {"alfworld": "ALFWorld", "webshop": "WebShop"}
EMPTY = "-"
NOT_PROMPTING = ("algo.", "critic.", "train.", "rollout.", "env.groups", "env.invalid_penalty", "model.temperature",
                 "model.lora")
"""Config keys that do not touch an evaluation of the model as loaded: never split or label its rows."""


def block_columns(env: str, frame: pd.DataFrame) -> dict[str, str]:
    """Column label -> metric of env's block: ALFWorld's task types and All, WebShop's Score and Succ.,
    else the env's task types (if it has several) and All."""
    if env == "alfworld":
        return dict(ALFWORLD_COLUMNS)
    if env.split("-")[0] == "webshop":
        return {"Score": "val/score", "Succ.": "val/success"}
    columns = generic_columns(frame[[_same_env(e, env) for e in frame["env"]]], env) if len(frame) else {
        "Success": "val/success"}
    columns["All"] = columns.pop("Success")
    return columns


def _title(env: str) -> str:
    """A block's title: "ALFWorld", "WebShop", "WebShop (real)" for ``webshop-real``, else the name capitalised."""
    base, _, catalog = env.partition("-")
    title = BLOCK_TITLES.get(base, base.capitalize())
    return f"{title} ({catalog})" if catalog else title


def _same_env(run_env: str, env: str) -> bool:
    """A run's env (``webshop-synthetic``, say: ``analysis.load.Run.env``) belongs to block ``env``
    when they are equal, or when ``env`` names the environment without its catalog."""
    return run_env == env or run_env.split("-")[0] == env


def model_label(row) -> str:
    if row.get("model.name") == "hf" and isinstance(row.get("model.path"), str):
        return Path(row["model.path"]).name
    return "tiny (random init)"


def _rank(method: str) -> tuple[int, str]:
    order = [m for _, m in ROWS]
    return (order.index(method), "") if method in order else (len(order), method)


def _group(method: str) -> str:
    return dict((m, g) for g, m in ROWS).get(method, RL)


def paper_table(frame: pd.DataFrame, envs: tuple[str, str] = ("alfworld", "webshop"),
                reference: Path | None = REFERENCE) -> pd.DataFrame:
    """One row per (section, method): ``section``, ``group``, ``method``, ``note``, then for each block
    ``<Block> <column> mean`` / ``std`` (percent) and ``<Block> seeds``. Sections: one per model in the
    runs, then the reference file's (labelled "paper")."""
    if len(frame) and "finished" in frame.columns:
        frame = frame[frame["finished"].astype(bool)]
    frame = frame.assign(section=[model_label(r) for _, r in frame.iterrows()]) if len(frame) else frame
    blocks = {env: block_columns(env, frame) for env in envs}
    cells: dict[tuple[str, str], dict] = {}
    for env in envs:
        title = _title(env)
        runs = frame[[_same_env(e, env) for e in frame["env"]]] if len(frame) else frame
        catalogs = sorted({e for e in runs["env"]}) if len(runs) else []
        if len(catalogs) > 1:  # WebShop's generated and real catalogs: never one block
            raise ValueError(f"--envs {env}: runs on {catalogs} would share one block; name one, e.g. --envs "
                             f"alfworld,{catalogs[-1]}")
        for (section, method), part in (runs.groupby(["section", "method"]) if len(runs) else []):
            if _group(method) == PROMPTING:  # training keys say nothing about an evaluation of the loaded model
                part = part.drop(columns=[c for c in part.columns if c.startswith(NOT_PROMPTING)])
            part = label_cells(part.dropna(axis=1, how="all"))
            for cell, group in part.groupby("cell"):
                row = cells.setdefault((section, cell), {"method": group["method"].iloc[0]})
                for label, metric in blocks[env].items():
                    values = group[metric] * 100.0 if metric in group.columns else pd.Series(dtype=float)
                    values = values.dropna()
                    row[f"{title} {label} mean"] = values.mean() if len(values) else math.nan
                    row[f"{title} {label} std"] = values.std(ddof=1) if len(values) > 1 else math.nan
                row[f"{title} seeds"] = len(group)
    sections = sorted({s for s, _ in cells}) or ["tiny (random init)"]
    rows = []
    for section in sections:
        present = {cell: v for (s, cell), v in cells.items() if s == section}
        methods = {v["method"] for v in present.values()}
        for _, method in ROWS:  # every paper row, "-" where it has no runs
            if method not in methods:
                present[method] = {"method": method}
        for cell, values in sorted(present.items(), key=lambda kv: (_rank(kv[1]["method"]), kv[0])):
            rows.append({"section": section, "group": _group(values["method"]), "method": cell,
                         "note": NOT_REPRODUCED.get(values["method"], ""),
                         **{k: v for k, v in values.items() if k != "method"}})
    table = pd.DataFrame(rows)
    # The paper's rows sit only under the paper's own blocks: beside Sokoban (the CPU demonstration)
    # its ALFWorld numbers would read as Sokoban ones.
    if reference is not None and Path(reference).is_file() and envs[0] == "alfworld":
        table = pd.concat([table, read_reference(reference)], ignore_index=True)
    columns = ["section", "group", "method", "note"]
    for env in envs:
        title = _title(env)
        for label in blocks[env]:
            columns += [f"{title} {label} mean", f"{title} {label} std"]
        columns.append(f"{title} seeds")
    return table.reindex(columns=columns)


REFERENCE_NOTE = ("Rows labelled (paper): the paper's Table 1 values as quoted by the secondary sources that "
                  "analysis/paper_table1.csv names per row; '-' there means not transcribed.")


def read_reference(path: Path) -> pd.DataFrame:
    """The paper's numbers: one row per (model, method) with ``<Block> <column>`` values and optional
    ``<Block> <column> std`` beside them; the section is "<model> (paper)". Comment lines (#) and the
    ``source`` column name where each value was read."""
    ref = pd.read_csv(path, comment="#")
    if ref.empty:
        return pd.DataFrame()
    out = pd.DataFrame({"section": ref["model"] + " (paper)", "group": [_group(m) for m in ref["method"]],
                        "method": ref["method"], "note": REFERENCE_NOTE})
    unknown = sorted(set(ref["method"]) - {label for _, label in ROWS})
    if unknown:
        raise ValueError(f"{path}: unknown method(s) {unknown}; known: {[label for _, label in ROWS]}")
    for column in ref.columns:
        if column in ("model", "method", "source"):
            continue
        out[column if column.endswith(" std") else f"{column} mean"] = ref[column]
    return out


def _blocks(table: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """[(block title, [column labels])] in column order, read off the table's columns."""
    blocks: list[tuple[str, list[str]]] = []
    for column in table.columns:
        if not column.endswith(" mean"):
            continue
        title, label = column[: -len(" mean")].split(" ", 1)
        if not blocks or blocks[-1][0] != title:
            blocks.append((title, []))
        blocks[-1][1].append(label)
    return blocks


def _cell(row, title: str, label: str, pm: str) -> str:
    mean, std = row.get(f"{title} {label} mean"), row.get(f"{title} {label} std")
    if mean is None or pd.isna(mean):
        return EMPTY
    return f"{mean:.1f}" if std is None or pd.isna(std) else f"{mean:.1f} {pm} {std:.1f}"


def _seeds(row, title: str) -> str:
    seeds = row.get(f"{title} seeds")
    return EMPTY if seeds is None or pd.isna(seeds) else str(int(seeds))


def _name(row) -> str:
    method = str(row["method"])
    for key, name in PAPER_NAMES.items():
        if method == key or method.startswith(key + ", "):
            return name + method[len(key):]
    return method


def to_markdown(table: pd.DataFrame) -> str:
    blocks = _blocks(table)
    header = ["Type", "Method"] + [f"{t} {c}" for t, cols in blocks for c in [*cols, "seeds"]]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + ":---:|" * (len(header) - 2)]
    for section, rows in table.groupby("section", sort=False):
        lines.append(f"| **{section}** |" + " |" * (len(header) - 1))
        for _, row in rows.iterrows():
            shown = []
            for t, cols in blocks:
                shown += [_cell(row, t, c, "±") for c in cols] + [_seeds(row, t)]
            lines.append("| " + " | ".join([row["group"], _name(row), *shown]) + " |")
    notes = sorted({n for n in table["note"].dropna() if n})
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


def _tex(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def to_latex(table: pd.DataFrame) -> str:
    """booktabs: a header row of blocks over their columns (cmidrule), a midrule between sections."""
    blocks = _blocks(table)
    width = 2 + sum(len(cols) + 1 for _, cols in blocks)
    lines = [r"\begin{tabular}{ll" + "".join("c" * (len(cols) + 1) for _, cols in blocks) + "}", r"\toprule"]
    spans, rules, start = [" & "], [], 3
    for title, cols in blocks:
        spans.append(rf"& \multicolumn{{{len(cols) + 1}}}{{c}}{{{_tex(title)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + len(cols)}}}")
        start += len(cols) + 1
    lines += ["".join(spans) + r" \\", "".join(rules)]
    lines.append("Type & Method & " + " & ".join(_tex(c) for _, cols in blocks for c in [*cols, "seeds"]) + r" \\")
    for section, rows in table.groupby("section", sort=False):
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{_tex(str(section))}}}}} \\"]
        for _, row in rows.iterrows():
            shown = []
            for t, cols in blocks:
                shown += [_cell(row, t, c, r"$\pm$") for c in cols] + [_seeds(row, t)]
            lines.append(" & ".join([_tex(row["group"]), _tex(_name(row)), *shown]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = sorted({n for n in table["note"].dropna() if n})
    return "\n".join(lines) + "\n" + "".join(f"% {n}\n" for n in notes)


def write(table: pd.DataFrame, out: Path, stem: str = "table1") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.md", out / f"{stem}.tex", out / f"{stem}.csv"]
    paths[0].write_text(to_markdown(table))
    paths[1].write_text(to_latex(table))
    table.to_csv(paths[2], index=False)
    return paths
