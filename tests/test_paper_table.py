"""``python -m analysis.tables RUNS --layout paper``: the paper's Table 1 layout from run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gigpo.analysis.paper_table import paper_table, to_latex, to_markdown
from gigpo.analysis.tables import main as tables_main
from gigpo.analysis.load import load_runs, runs_frame

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, env: str, seed: int, final: dict, algo: str = "gigpo", mode: str = "mean",
              eval_only: bool = False, prompt_style: str = "plain") -> None:
    folder.mkdir(parents=True)
    config = {"algo": {"name": algo, "mode": mode}, "env": {"name": env, "prompt_style": prompt_style},
              "model": {"name": "tiny", "path": None}, "train": {"seed": seed, "iterations": 0 if eval_only else 5},
              "mode": "eval" if eval_only else "train", "checkpoint": None}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.jsonl").write_text(json.dumps({"iter": 0, "final": True, "env_steps": 0, **final}) + "\n")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "gigpo0", "alfworld", 0, {"val/success": 0.8, "val/success/pick": 0.5})
    write_run(root / "gigpo1", "alfworld", 1, {"val/success": 0.9, "val/success/pick": 0.7})
    write_run(root / "grpo_ws", "webshop", 0, {"val/success": 0.4, "val/score": 0.6}, algo="grpo", mode="mean_std")
    write_run(root / "base", "alfworld", 0, {"val/success": 0.1}, eval_only=True)
    write_run(root / "react", "alfworld", 0, {"val/success": 0.2}, eval_only=True, prompt_style="react")
    return root


def row(markdown: str, name: str) -> list[str]:
    [line] = [line for line in markdown.splitlines() if line.startswith(f"| {name.split(' | ')[0]} | ")
              and line.split(" | ")[1] == name.split(" | ")[1]]
    return [c.strip() for c in line.strip("|").split("|")]


def test_paper_layout_rows_cells_and_dashes(runs):
    table = paper_table(runs_frame(load_runs(runs)), reference=None)
    md = to_markdown(table)
    header = md.splitlines()[0]
    assert header.startswith("| Type | Method | ALFWorld Pick | ALFWorld Look | ALFWorld Clean | ALFWorld Heat | "
                             "ALFWorld Cool | ALFWorld Pick2 | ALFWorld All | ALFWorld seeds | WebShop Score | "
                             "WebShop Succ. | WebShop seeds |")
    methods = [line.split(" | ")[1] for line in md.splitlines()[3:] if line.startswith("| ") and " | " in line]
    assert methods[:8] == ["Base model", "ReAct", "Reflexion", "PPO (with critic)", "RLOO", "GRPO", "GiGPO w/ std",
                           "GiGPO w/o std"]
    # pick: 50, 70 -> 60.0 ± 14.1 (sample std sqrt(200)); all: 80, 90 -> 85.0 ± 7.1; no WebShop runs -> "-"
    assert row(md, "RL training | GiGPO w/o std")[2:] == ["60.0 ± 14.1", "-", "-", "-", "-", "-", "85.0 ± 7.1", "2",
                                                          "-", "-", "-"]
    # One seed: the value alone; GRPO ran on WebShop only.
    assert row(md, "RL training | GRPO")[2:] == ["-"] * 8 + ["60.0", "40.0", "1"]
    assert row(md, "Prompting | Base model")[8:10] == ["10.0", "1"] and row(md, "Prompting | ReAct")[8] == "20.0"
    assert set(row(md, "RL training | PPO (with critic)")[2:]) == {"-"}  # no runs: never a number from elsewhere
    assert "Reflexion: not reproduced" in md
    assert table.loc[table["method"] == "GiGPO (mean)", "ALFWorld All std"].iloc[0] == pytest.approx(7.0710678)


def test_paper_layout_latex_is_booktabs_and_reference_rows_are_labelled_paper(runs, tmp_path):
    reference = tmp_path / "reference.csv"  # a made-up reference row: only the plumbing is tested
    reference.write_text("# test data\nmodel,method,ALFWorld All,WebShop Succ.\nSome-Model,GRPO,12.5,3.0\n")
    table = paper_table(runs_frame(load_runs(runs)), reference=reference)
    tex = to_latex(table)
    assert tex.startswith("\\begin{tabular}{ll" + "c" * 11 + "}\n\\toprule")
    assert "\\multicolumn{8}{c}{ALFWorld}" in tex and "\\cmidrule(lr){3-10}\\cmidrule(lr){11-13}" in tex
    assert "\\bottomrule" in tex and "GiGPO w/o std & 60.0 $\\pm$ 14.1" in tex
    assert "\\textit{Some-Model (paper)}" in tex
    paper = table[table["section"] == "Some-Model (paper)"]
    assert paper["ALFWorld All mean"].tolist() == [12.5] and paper["WebShop Succ. mean"].tolist() == [3.0]


def test_committed_reference_rows_show_mean_and_std_and_leave_untranscribed_cells_empty(runs):
    table = paper_table(runs_frame(load_runs(runs)))  # the committed analysis/paper_table1.csv
    md = to_markdown(table)
    assert "| **Qwen2.5-1.5B-Instruct (paper)** |" in md and "| **Qwen2.5-7B-Instruct (paper)** |" in md
    small = md[md.index("Qwen2.5-1.5B-Instruct (paper)"):md.index("Qwen2.5-7B-Instruct (paper)")]
    # Task types were not transcribed: "-"; All and WebShop success with their std; no seed count.
    assert row(small, "RL training | GiGPO w/o std")[2:] == ["-"] * 6 + ["86.1 ± 4.7", "-", "-", "67.4 ± 4.5", "-"]
    large = md[md.index("Qwen2.5-7B-Instruct (paper)"):]
    assert row(large, "Prompting | Base model")[10:12] == ["26.4", "7.8"]
    assert "as quoted by the secondary sources" in md
    # Beside another env in ALFWorld's place (the CPU demonstration) the paper's rows are left out.
    other = paper_table(runs_frame(load_runs(runs)), envs=("sokoban", "webshop"))
    assert not other["section"].str.endswith("(paper)").any()


def test_reference_with_an_unknown_method_is_refused_naming_it(runs, tmp_path):
    reference = tmp_path / "reference.csv"
    reference.write_text("model,method,ALFWorld All\nSome-Model,GiGPO w/o std,12.5\n")  # the paper's name, not ours
    with pytest.raises(ValueError, match=r"reference.csv: unknown method\(s\) \['GiGPO w/o std'\]"):
        paper_table(runs_frame(load_runs(runs)), reference=reference)


def test_cli_writes_markdown_latex_and_csv(runs, tmp_path):
    out = tmp_path / "out"
    tables_main([str(runs), "--layout", "paper", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["table1.csv", "table1.md", "table1.tex"]
    with pytest.raises(SystemExit, match="two environments"):
        tables_main([str(runs), "--layout", "paper", "--envs", "sokoban", "--out", str(out)])


@pytest.mark.slow
def test_cpu_demonstration_fills_every_rl_and_prompting_row(tmp_path):
    """The experiment table1_cpu at the smallest budget: every RL row and both prompting rows get numbers
    in both blocks (Sokoban in ALFWorld's place, WebShop's generated catalog)."""
    tiny = ["env.max_steps=4", "env.val_episodes=2", "algo.group_size=2", "env.groups=1", "train.iterations=1",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    for sweep in (["algo=ppo,rloo,grpo,gigpo_std,gigpo"], ["mode=eval", "env.prompt_style=plain,react"]):
        out = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "experiment=table1_cpu",
                              "env=sokoban_easy,webshop", *sweep, *tiny], cwd=ROOT, capture_output=True, text=True,
                             timeout=1800)
        assert out.returncode == 0, out.stderr[-3000:]
    table = tables_main([str(tmp_path / "multirun"), "--layout", "paper", "--envs", "sokoban,webshop",
                         "--out", str(tmp_path / "out")])["table1"]
    md = (tmp_path / "out" / "table1.md").read_text()
    for name in ["Prompting | Base model", "Prompting | ReAct", "RL training | PPO (with critic)", "RL training | RLOO",
                 "RL training | GRPO", "RL training | GiGPO w/ std", "RL training | GiGPO w/o std"]:
        cells = row(md, name)[2:]
        assert "-" not in cells, (name, cells)
    ours = table[~table["section"].str.endswith("(paper)")]
    assert len(ours) == 8  # the paper's eight rows, one cell each


def test_webshop_catalogs_never_share_a_block(runs):
    """A run on the benchmark's files (env.data_dir) and one on the generated catalog are different
    numbers (analysis.load labels them webshop-real / webshop-synthetic): one block refuses both."""
    real = runs / "grpo_ws_real"
    write_run(real, "webshop", 1, {"val/success": 0.5, "val/score": 0.7}, algo="grpo", mode="mean_std")
    config = yaml.safe_load((real / "config.yaml").read_text())
    config["env"]["data_dir"] = "/data/webshop"
    (real / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"webshop-real.*webshop-synthetic.*share one block"):
        paper_table(runs_frame(load_runs(runs)), reference=None)
    table = paper_table(runs_frame(load_runs(runs)), envs=("alfworld", "webshop-real"), reference=None)
    assert table.loc[table["method"] == "GRPO", "WebShop (real) seeds"].tolist() == [1]
