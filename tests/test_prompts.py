"""Prompt rendering and action projection (gigpo.envs.prompts)."""

from gigpo.envs import alfworld, sokoban
from gigpo.envs.prompts import View, project_action, render

ADMISSIBLE = ["go to desk 1", "take mug 1 from desk 1", "look"]


def test_project_takes_last_action_and_admissible_spelling():
    text = "<think>maybe <action>look</action></think><action> Go To Desk 1 </action>"
    assert project_action(text, ADMISSIBLE) == ("go to desk 1", True)


def test_project_rejects_missing_tags_and_inadmissible_actions():
    assert project_action("  go to desk 1 ", ADMISSIBLE) == ("go to desk 1", False)
    assert project_action("<action>fly away</action>", ADMISSIBLE) == ("fly away", False)
    assert project_action("<action>up", ["up"]) == ("<action>up", False)


def test_project_free_form_accepts_any_tagged_action():
    assert project_action("<think>x</think><action>search[red shoes]</action>", []) == ("search[red shoes]", True)


def test_render_fills_all_fields_and_numbers_history():
    view = View(env_index=0, group_id=0, traj_id=0, step=5, task="put a mug on the desk",
                observation="You see a mug.", admissible=ADMISSIBLE,
                history=[("obs three", "look"), ("obs four", "go to desk 1")])
    text = render("{task}|{history}|{observation}|{admissible}|{step}", view)
    assert text.startswith("put a mug on the desk|[step 3] observation:\nobs three\naction: look\n[step 4]")
    assert text.endswith("|You see a mug.|go to desk 1, take mug 1 from desk 1, look|5")
    empty = View(0, 0, 0, 0, "t", "o", [], [])
    assert render("{history}|{admissible}", empty) == "(none)|(any)"


def test_env_prompts_render_full_and_compact():
    view = View(0, 0, 0, 0, "a task", "#P#", ["up"], [])
    for module in (sokoban, alfworld):
        full, compact = module.render_prompt(view, compact=False), module.render_prompt(view, compact=True)
        assert "#P#" in full and "#P#" in compact
        assert "<action>" in full and len(compact) < len(full)


def test_template_entries_accept_any_filled_argument():
    admissible = ["search[<your query>]", "click[buy now]"]
    assert project_action("<action>search[gluten free bar]</action>", admissible) == ("search[gluten free bar]", True)
    assert project_action("<action>search[]</action>", admissible)[1] is False
    assert project_action("<action>search[ ]</action>", admissible)[1] is False
    assert project_action("<action>click[anything]</action>", admissible)[1] is False
    assert project_action("<action>Click[Buy Now]</action>", admissible) == ("click[buy now]", True)
