"""Headless Chromium builds the demo's cart-abandonment journey on the canvas only, from an empty
draft: the inactivity trigger on the start node, then an email, a wait for `Order Completed`
with a timeout, a condition on `profile.ltv`, an SMS and a goal, each dropped from the palette
onto the outcome it follows and filled in its side panel. The editor proposes it, and its
export is the demo's (modulo positions and order, which the export keeps but which say nothing
about what the journey does). On the way an outcome is connected by dragging it (and the Undo
button takes it back) and a step is moved. Then the keyboard: a step is moved, connected and deleted, and
the last change undone, without the mouse. Two tabs on one draft: the tab opened before the
other's save is refused, saying so, and keeps what was typed; a save the server answers without
JSON (the security token gone, the session expired) says why instead of "saving…" forever; and
the console's pages log no 404 for their icon.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys.models import BusinessUnit, ChangeRequest, Step, WorkflowVersion
from journeys.services.workflows import workflow_create, workflow_export
from tests.browser import browser, login, needs_chromium, only_local_resources, shot, wait_for  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]
REASON = "rebuild cart abandonment on the canvas"


def _by():
    from selenium.webdriver.common.by import By

    return By


def _wait(browser, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _status(browser, text: str) -> None:
    """Wait for the canvas's status line to say `text` (it says what each change did, or why not)."""
    line = browser.find_element(_by().ID, "canvas-status")
    try:
        _wait(browser, lambda b: text in line.text)
    except Exception:
        raise AssertionError(f"status says {line.text!r}, not {text!r}") from None


def _give_reason_if_asked(browser) -> None:
    By = _by()
    dialog = browser.find_element(By.ID, "canvas-reason-dialog")
    if dialog.get_attribute("open") is not None:
        browser.find_element(By.ID, "canvas-reason-input").send_keys(REASON)
        browser.find_element(By.ID, "canvas-reason-ok").click()


def _drop(browser, kind: str, *, on=None, at: tuple[int, int] | None = None) -> None:
    """Drag a kind from the palette onto an element of the drawing, or onto empty space at `at`
    (pixels from the drawing's top-left corner)."""
    from selenium.webdriver.common.action_chains import ActionChains

    By = _by()
    item = browser.find_element(By.CSS_SELECTOR, f'.palette-item[data-kind="{kind}"]')
    chain = ActionChains(browser).click_and_hold(item).move_by_offset(15, 15)
    if on is not None:
        chain.move_to_element(on)
    else:
        drawing = browser.find_element(By.CSS_SELECTOR, "#canvas-surface svg")
        size = drawing.size
        chain.move_to_element_with_offset(drawing, at[0] - size["width"] // 2, at[1] - size["height"] // 2)
    chain.release().perform()
    _give_reason_if_asked(browser)


def _port(browser, step: str, outcome: str):
    return browser.find_element(_by().CSS_SELECTOR, f'g.port[data-step="{step}"][data-outcome="{outcome}"]')


def _node(browser, key: str):
    return browser.find_element(_by().CSS_SELECTOR, f'g.node[data-key="{key}"]')


def _fill(browser, values: dict[str, str]) -> None:
    from selenium.webdriver.support.ui import Select

    By = _by()
    for name, value in values.items():
        field = browser.find_element(By.CSS_SELECTOR, f'#canvas-panel [name="{name}"]')
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)


def _edit(browser, key: str, values: dict[str, str], *, saved_as: str) -> None:
    """Open a step in the side panel, fill its form, save it."""
    By = _by()
    _node(browser, key).click()
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, f'#canvas-panel [data-step="{key}"] #save-step'))
    _fill(browser, values)
    browser.find_element(By.ID, "save-step").click()
    _give_reason_if_asked(browser)
    _status(browser, f"Saved step {saved_as}")


def _click_empty_space(browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    surface = browser.find_element(_by().ID, "canvas-surface")
    browser.execute_script("arguments[0].scrollTo(0, 0)", surface)
    ActionChains(browser).move_to_element_with_offset(surface, surface.size["width"] // 2 - 30,
                                                      -surface.size["height"] // 2 + 30).click().perform()
    _wait(browser, lambda b: b.find_elements(_by().CSS_SELECTOR, "#canvas-panel .help"))


def _comparable(export: dict) -> dict:
    """What a journey does: the version's settings, its steps and edges, without drawing positions
    and in a stable order."""
    version = dict(export["version"])
    version["steps"] = sorted(({k: v for k, v in s.items() if k not in ("x", "y")} for s in version["steps"]),
                              key=lambda s: s["key"])
    version["edges"] = sorted(version["edges"], key=lambda e: (e["from"], e["outcome"]))
    return version


def test_editor_builds_the_cart_abandonment_journey_on_the_canvas(demo, live_server, browser, shot):
    By = _by()
    base = live_server.url
    workflow = workflow_create(name="Cart rescue", business_unit=BusinessUnit.objects.get(slug="retention"))
    draft = WorkflowVersion.objects.create(workflow=workflow, number=1)
    login(browser, base, "editor")
    browser.get(f"{base}{reverse('console:version_graph', args=[draft.pk])}")
    wait_for(browser, 'id="palette"')

    # the trigger, on the start node: Checkout Started not followed by Order Completed within 1h
    browser.find_element(By.CSS_SELECTOR, "g.start").click()
    _wait(browser, lambda b: b.find_elements(By.ID, "save-settings"))
    _fill(browser, {"trigger_kind": "inactivity", "trigger_event": "Checkout Started",
                    "followed_by": "Order Completed", "within": "1h", "reentry_policy": "cooldown",
                    "reentry_cooldown": "1d", "goal_event": "Order Completed"})
    browser.find_element(By.ID, "save-settings").click()
    _give_reason_if_asked(browser)  # asked once, at the first change of the session
    _status(browser, "Saved the trigger settings")
    assert REASON in browser.find_element(By.ID, "canvas-reason").text

    # an email under the start node: the entry step
    _drop(browser, "send_message", at=(150, 200))
    _status(browser, "Added send_message_1")
    _edit(browser, "send_message_1", {"key": "email", "channel": "email", "template": "cart-reminder"}, saved_as="email")

    # a wait on the email's free outcome, a condition on the wait's timeout, an SMS when valuable, a goal on the event
    _drop(browser, "wait_for_event", on=_port(browser, "email", "next"))
    _status(browser, "Added wait_for_event_1")
    _edit(browser, "wait_for_event_1", {"key": "wait", "event": "Order Completed", "timeout": "24h"}, saved_as="wait")
    _drop(browser, "condition", on=_port(browser, "wait", "timeout"))
    _status(browser, "Added condition_1")
    _edit(browser, "condition_1", {"key": "valuable", "rule": "profile.ltv >= 500"}, saved_as="valuable")
    feedback = browser.find_element(By.ID, "id_rule-feedback")
    _wait(browser, lambda b: "valid rule" in feedback.text)  # the rule editor works in the panel too
    shot("canvas-panel.png", max_height=1100)
    _drop(browser, "send_message", on=_port(browser, "valuable", "yes"))
    _status(browser, "Added send_message_1")
    _edit(browser, "send_message_1", {"key": "sms", "channel": "sms", "template": "cart-discount-sms"}, saved_as="sms")
    browser.find_element(By.ID, "preview-button").click()  # the template preview, in the panel
    _wait(browser, lambda b: "CODE10" in b.find_element(By.ID, "preview-result").text)
    _drop(browser, "goal", on=_port(browser, "wait", "event"))
    _status(browser, "Added goal_1")
    _edit(browser, "goal_1", {"key": "bought", "goal": "ordered"}, saved_as="bought")

    # an outcome dragged onto a step connects it; Undo takes that back; a step dragged stays where it is put
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).click_and_hold(_port(browser, "valuable", "no")).move_by_offset(10, 30) \
        .move_to_element(_node(browser, "bought")).release().perform()
    _status(browser, "Connected valuable —no→ bought")
    browser.find_element(By.ID, "canvas-undo").click()
    _status(browser, "Undone: connected valuable —no→ bought")
    assert not draft.edges.filter(source__key="valuable", outcome="no").exists()
    before = Step.objects.get(version=draft, key="bought")
    ActionChains(browser).click_and_hold(_node(browser, "bought")).move_by_offset(0, 20).move_by_offset(0, 20) \
        .release().perform()
    _status(browser, "Moved")
    after = Step.objects.get(version=draft, key="bought")
    assert (after.x, after.y) == (before.x, before.y + 40)

    # the drawing shows no errors, only the outcomes that lead nowhere (as the demo's)
    issues = browser.find_element(By.ID, "canvas-issue-list").text
    assert "error" not in browser.find_element(By.ID, "canvas-issue-list").get_attribute("innerHTML")
    assert "valuable: outcome(s) no lead nowhere" in issues
    only_local_resources(browser, base)
    _click_empty_space(browser)  # nothing selected: the panel shows how the canvas works
    shot("canvas-built.png")

    # proposed for review
    browser.find_element(By.ID, "canvas-propose").click()
    wait_for(browser, 'id="propose-form"')
    browser.find_element(By.ID, "id_summary").send_keys("cart abandonment, drawn on the canvas")
    browser.find_element(By.NAME, "_propose").click()
    wait_for(browser, "Proposed for review")
    assert ChangeRequest.objects.get(version=draft).proposed_by.username == "editor"

    # and it does what the demo's does
    draft.refresh_from_db()
    demo_version = WorkflowVersion.objects.get(workflow__name="Cart abandonment", state="live")
    assert _comparable(workflow_export(version=draft)) == _comparable(workflow_export(version=demo_version))
    assert len({(s.x, s.y) for s in Step.objects.filter(version=draft)}) == 5  # placed where dropped


def test_keyboard_moves_connects_deletes_and_undoes(demo, live_server, browser, shot):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    By = _by()
    base = live_server.url
    workflow = workflow_create(name="Keys only", business_unit=BusinessUnit.objects.get(slug="retention"))
    draft = WorkflowVersion.objects.create(workflow=workflow, number=1, trigger_event="Signed Up")
    login(browser, base, "editor")
    browser.get(f"{base}{reverse('console:version_graph', args=[draft.pk])}")
    wait_for(browser, 'id="palette"')

    # palette buttons add with Enter: a condition, then (it selected) a goal after its 'yes'
    condition = browser.find_element(By.CSS_SELECTOR, '.palette-item[data-kind="condition"]')
    condition.send_keys(Keys.ENTER)
    _give_reason_if_asked(browser)
    _status(browser, "Added condition_1")
    browser.find_element(By.CSS_SELECTOR, '.palette-item[data-kind="goal"]').send_keys(Keys.ENTER)
    _status(browser, "Added goal_1")
    browser.find_element(By.CSS_SELECTOR, '.palette-item[data-kind="exit"]').send_keys(Keys.ENTER)
    _status(browser, "Added exit_1")

    # the goal, focused, moves right with the arrow keys (saved after a pause)
    goal = browser.find_element(By.CSS_SELECTOR, 'g.node[data-key="goal_1"]')
    x = Step.objects.get(version=draft, key="goal_1").x
    goal.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.SHIFT + Keys.ARROW_RIGHT)
    _status(browser, "Moved")
    assert Step.objects.get(version=draft, key="goal_1").x == x + 70

    # C on the condition opens its connections: 'no' goes to the exit
    browser.find_element(By.CSS_SELECTOR, 'g.node[data-key="condition_1"]').send_keys("c")
    _wait(browser, lambda b: b.switch_to.active_element.get_attribute("id") == "connect-yes")
    Select(browser.find_element(By.ID, "connect-no")).select_by_value("exit_1")
    _status(browser, "Connected condition_1 —no→ exit_1")
    assert draft.edges.filter(source__key="condition_1", outcome="no", target__key="exit_1").exists()

    # Delete removes the exit (after a confirmation), Ctrl+Z brings it back with its edge
    browser.find_element(By.CSS_SELECTOR, 'g.node[data-key="exit_1"]').send_keys(Keys.DELETE)
    _wait(browser, lambda b: b.switch_to.alert).accept()
    _status(browser, "Deleted exit_1")
    assert not Step.objects.filter(version=draft, key="exit_1").exists()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, "z")
    _status(browser, "Undone: deleted exit_1")
    assert draft.edges.filter(source__key="condition_1", outcome="no", target__key="exit_1").exists()
    shot("canvas-keyboard.png")


def _condition_draft(name: str) -> WorkflowVersion:
    workflow = workflow_create(name=name, business_unit=BusinessUnit.objects.get(slug="retention"))
    draft = WorkflowVersion.objects.create(workflow=workflow, number=1, trigger_event="Signed Up",
                                           entry_step="condition_1")
    Step.objects.create(version=draft, key="condition_1", kind="condition", config={"rule": "profile.ltv > 1"},
                        x=100, y=150)
    return draft


def _open_step(browser, key: str) -> None:
    _node(browser, key).click()
    _wait(browser, lambda b: b.find_elements(_by().CSS_SELECTOR, f'#canvas-panel [data-step="{key}"] #save-step'))


def _panel_value(browser, name: str) -> str:
    return browser.find_element(_by().CSS_SELECTOR, f'#canvas-panel [name="{name}"]').get_attribute("value")


def test_a_tab_opened_before_another_tab_saved_is_refused_not_overwriting(demo, live_server, browser):
    # given condition_1's form open in tab A, then in tab B
    By = _by()
    base = live_server.url
    draft = _condition_draft("Two tabs")
    graph = f"{base}{reverse('console:version_graph', args=[draft.pk])}"
    login(browser, base, "editor")
    browser.get(graph)
    _open_step(browser, "condition_1")
    tab_a = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(graph)
    _open_step(browser, "condition_1")

    # when tab B saves a rule, then tab A (opened before B's save) saves another
    _fill(browser, {"rule": "profile.ltv > 111"})
    browser.find_element(By.ID, "save-step").click()
    _give_reason_if_asked(browser)
    _status(browser, "Saved step condition_1")
    browser.switch_to.window(tab_a)
    _fill(browser, {"rule": "profile.ltv > 222"})
    browser.find_element(By.ID, "save-step").click()
    _give_reason_if_asked(browser)

    # then tab A says why it did not save, keeps what was typed, and B's rule stays
    _status(browser, "step condition_1 changed since you opened it (in another tab or by another editor): "
                     "nothing was saved")
    assert "error" in browser.find_element(By.ID, "canvas-status").get_attribute("class")
    assert _panel_value(browser, "rule") == "profile.ltv > 222"
    assert Step.objects.get(version=draft).config["rule"] == "profile.ltv > 111"

    # and a drag on tab A's drawing, older than the draft, moves nothing but redraws the draft as it is
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.switch_to.window(browser.window_handles[1])
    browser.find_element(By.CSS_SELECTOR, '.palette-item[data-kind="goal"]').send_keys(Keys.ENTER)
    _status(browser, "Added goal_1")
    y = Step.objects.get(version=draft, key="condition_1").y
    browser.switch_to.window(tab_a)
    assert not browser.find_elements(By.CSS_SELECTOR, 'g.node[data-key="goal_1"]')
    ActionChains(browser).click_and_hold(_node(browser, "condition_1")).move_by_offset(0, 20).move_by_offset(0, 20) \
        .release().perform()
    _status(browser, "the draft changed since this drawing of it was loaded")
    _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, 'g.node[data-key="goal_1"]'))
    assert Step.objects.get(version=draft, key="condition_1").y == y


def test_a_save_the_server_refuses_without_json_says_why_and_keeps_the_form(demo, live_server, browser):
    # given condition_1's form open, its name typed, and the security token (CSRF cookie) gone
    By = _by()
    base = live_server.url
    draft = _condition_draft("Lost token")
    login(browser, base, "editor")
    browser.get(f"{base}{reverse('console:version_graph', args=[draft.pk])}")
    _open_step(browser, "condition_1")
    _fill(browser, {"name": "work in progress"})
    browser.delete_cookie("csrftoken")

    # when it is saved
    browser.find_element(By.ID, "save-step").click()
    _give_reason_if_asked(browser)

    # then the status says the server refused it and why, not "saving…" forever; the form keeps the text
    _status(browser, "Not saved: the server answered 403 — your session may have expired or the security token "
                     "was refused; reload the page and sign in (your text is still in the form)")
    assert _panel_value(browser, "name") == "work in progress"
    assert Step.objects.get(version=draft).name == ""

    # and with the session expired, opening a step says so instead of showing the sign-in page as its panel
    browser.delete_cookie("sessionid")
    browser.find_element(By.ID, "canvas-settings-button").click()
    _status(browser, "Could not open it: the server answered with its sign-in page — your session has expired")
    problem = browser.find_element(By.ID, "canvas-panel-problem").text
    assert "sign in" in problem and not browser.find_elements(By.CSS_SELECTOR, "#canvas-panel #id_username")


def test_console_pages_name_their_icon_so_the_browser_logs_no_404(demo, live_server, browser):
    base = live_server.url
    login(browser, base, "ops")
    for path in ("/admin/", "/console/", "/console/dashboard.json", "/agents/"):
        browser.get(base + path)
        wait_for(browser, "</body>" if not path.endswith(".json") else "{")

    messages = [e["message"] for e in browser.get_log("browser")]
    assert not [m for m in messages if "favicon" in m or "404" in m], messages
