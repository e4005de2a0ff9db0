"""Prompt rendering and action projection (gigpo.envs.prompts)."""

from dataclasses import replace

import pytest

from gigpo.envs import alfworld, sokoban
from gigpo.envs.prompts import View, project_action, render, renderer

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
        full, compact = renderer(module.PROMPTS, compact=False)(view), renderer(module.PROMPTS, compact=True)(view)
        assert "#P#" in full and "#P#" in compact
        assert "<action>" in full and len(compact) < len(full)


def test_template_entries_accept_any_filled_argument():
    admissible = ["search[<your query>]", "click[buy now]"]
    assert project_action("<action>search[gluten free bar]</action>", admissible) == ("search[gluten free bar]", True)
    assert project_action("<action>search[]</action>", admissible)[1] is False
    assert project_action("<action>search[ ]</action>", admissible)[1] is False
    assert project_action("<action>click[anything]</action>", admissible)[1] is False
    assert project_action("<action>Click[Buy Now]</action>", admissible) == ("click[buy now]", True)


# ---- the paper code's projection (env.projection=paper) ---------------------------------------

from gigpo.envs import projection  # noqa: E402
from gigpo.envs import prompts as prompts_module  # noqa: E402
from gigpo.envs import webshop  # noqa: E402


def test_paper_projection_ignores_admissibility():
    # "go to desk 7" is not admissible: the engine gets it (and answers "Nothing happens."), no penalty
    assert alfworld.project_action("<think>hm</think><action>go to desk 7</action>", ADMISSIBLE) == ("go to desk 7",
                                                                                                    True)


def test_paper_projection_needs_think_tags_and_no_cjk():
    assert alfworld.project_action("<action>look</action>", ADMISSIBLE) == ("look", False)
    assert alfworld.project_action("<think>x<action>look</action>", ADMISSIBLE) == ("look", False)
    assert alfworld.project_action("<think>先看看</think><action>look</action>", ADMISSIBLE) == ("look", False)


def test_paper_projection_takes_first_pair_and_lowercases():
    text = "<think>x</think><action> Go To Desk 1 </action> or <action>look</action>"
    assert alfworld.project_action(text, ADMISSIBLE) == ("go to desk 1", True)


def test_paper_projection_without_tags_sends_last_30_characters():
    text = "I think I should go to the desk number one right now"
    action, valid = alfworld.project_action(text, ADMISSIBLE)
    assert action == text.lower()[-30:] and len(action) == 30 and not valid
    assert alfworld.project_action("<think>x</think><action>look", ADMISSIBLE)[1] is False
    assert webshop.project_action(text, [])[0] == text.lower()[-20:]  # WebShop's fallback keeps 20
    assert alfworld.project_action("<THINK>x</THINK><action>look</action>", ADMISSIBLE) == ("look", False)


def test_projection_by_name():
    assert projection("alfworld", "paper") is alfworld.project_action
    assert projection("webshop", "paper") is webshop.project_action
    assert projection("sokoban", "strict") is project_action
    with pytest.raises(ValueError, match="no paper projection"):
        projection("sokoban", "paper")
    with pytest.raises(ValueError, match="env.projection"):
        projection("alfworld", "loose")
    # WebShop, paper: format only, any click goes to the env
    assert webshop.project_action("<think>a</think><action>click[Whatever]</action>", []) == ("click[whatever]", True)


# ---- the paper code's prompt structure --------------------------------------------------------

def test_alfworld_prompt_first_then_history_structure():
    first = View(0, 0, 0, 0, "put a mug on the desk", "-= Welcome =-\nYou are in a room.\n\nYour task is to: x",
                 ["go to desk 1", "help", "look"], [])
    text = renderer(alfworld.PROMPTS, compact=False)(first)
    assert text == alfworld.PROMPT_FIRST.format(current_observation=first.observation,
                                                admissible_actions="'go to desk 1'\n 'look'")
    assert "help" not in text and "Prior to this step" not in text
    later = View(0, 0, 0, 3, "put a mug on the desk", "You see a mug.", ["look", "help"],
                 [("obs two", "go to desk 1"), ("obs three", "take mug 1 from desk 1")])
    text = renderer(alfworld.PROMPTS, compact=False)(later)
    assert "Your task is to: put a mug on the desk\nPrior to this step, you have already taken 3 step(s)." in text
    assert ("[Observation 2: 'obs two', Action 2: 'go to desk 1']\n"
            "[Observation 3: 'obs three', Action 3: 'take mug 1 from desk 1']\n"
            "You are now at step 4 and your current observation is: You see a mug.") in text
    assert text.index("Prior to this step") < text.index("[Observation 2") < text.index("You are now at step 4")
    assert "['look']" in text and "<think> </think>" in text and "<action> </action>" in text


def test_template_files_override_and_unknown_fields_fail(tmp_path):
    from gigpo.envs import prompt_renderer
    from types import SimpleNamespace

    first, later = tmp_path / "first.txt", tmp_path / "later.txt"
    first.write_text("NO HISTORY {current_observation} [{admissible_actions}]")
    later.write_text("{task_description}|{step_count}|{history_length}|{action_history}|{current_step}")
    cfg = SimpleNamespace(name="alfworld", compact_prompt=False, prompt_template=str(later),
                          prompt_template_first=str(first))
    assert prompt_renderer(cfg)(View(0, 0, 0, 0, "t", "o", ["look"], [])) == "NO HISTORY o ['look']"
    view = View(0, 0, 0, 1, "t", "o2", ["look"], [("o1", "look")])
    assert prompt_renderer(cfg)(view) == "t|1|1|[Observation 1: 'o1', Action 1: 'look']|2"
    bad = tmp_path / "bad.txt"
    bad.write_text("{task} {obsrvation}")
    with pytest.raises(ValueError, match="obsrvation"):
        prompts_module.load_template(str(bad))


def test_compact_prompts_show_history():
    # issue 12 item 8: env.history_len reaches the tiny model's prompt (the last actions)
    view = View(0, 0, 0, 2, "t", "o", ["up"], [("o0", "up"), ("o1", "left")])
    for module in (sokoban, alfworld, webshop):
        assert "up, left" in renderer(module.PROMPTS, compact=True)(view)
        assert prompts_module.template_fields(module.COMPACT_PROMPT) & prompts_module.HISTORY_FIELDS


def test_webshop_full_prompt_shows_pages_and_actions_as_the_paper_code():
    task = "i need a red mug, and price lower than 20.00 dollars"
    page = f"Instruction: [SEP] {task} [SEP] Back to Search [SEP] Page 1 (Total results: 2) [SEP] B0X [SEP] Red Mug"
    view = View(0, 0, 0, 1, task, page, ["click[back to search]", "click[b0x]"],
                [(f"WebShop [SEP] Instruction: [SEP] {task} [SEP] Search", "search[red mug]")])
    text = renderer(webshop.PROMPTS, compact=False)(view)
    assert ("current observation is: 'Back to Search' [SEP] 'Page 1 (Total results: 2)' [SEP] 'B0X' [SEP] "
            "'Red Mug'.") in text
    assert "[Observation 1: ''Search'', Action 1: 'search[red mug]']" in text
    assert "[\n'click[back to search]',\n'click[b0x]',\n]" in text
    assert f"Your task is to: {task}.\nPrior to this step, you have already taken 1 step(s)." in text
    assert "Instruction:" not in renderer(webshop.PROMPTS, compact=False)(replace(view, history=[], step=0))



def test_one_renderer_serves_every_env_and_a_first_template_reaches_compact_prompts_alike():
    # Every env declares its prompts as data (PROMPTS) and renders through prompts.renderer; a user's
    # first-step template replaces the compact prompt at step 0 in every env, WebShop included.
    from gigpo.envs import ENVS, env_module

    start = View(0, 0, 0, 0, "t", "obs", ["up"], [])
    later = replace(start, step=1, history=[("obs0", "up")])
    for name in ENVS:
        module = env_module(name)
        assert isinstance(module.PROMPTS, prompts_module.PromptSet) and not hasattr(module, "render_prompt"), name
        render_view = renderer(module.PROMPTS, compact=True, template_first="FIRST {observation}")
        assert render_view(start) == "FIRST obs", name
        assert render_view(later) == render(module.PROMPTS.compact, later), name
