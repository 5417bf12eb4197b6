"""The API's docs page in a real browser (headless Chromium, as ``test_admin_browser``): Swagger
UI loads from Parseq's own files under its Content-Security-Policy, "Authorize" takes an API
token, and "Try it out" calls the API with it."""

from __future__ import annotations

from pathlib import Path

from tests.test_admin_browser import browser, pytestmark, server  # noqa: F401 (fixtures)
from tests.test_api_docs_example import cli_token


def test_swagger_ui_authorizes_with_a_token_and_calls_the_api(
    server: str,  # noqa: F811
    browser,  # noqa: F811
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    wait = WebDriverWait(d, 20)
    token = cli_token(tmp_path, "docs-page")
    try:
        d.get(f"{server}/api/v1/docs")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
        assert "Parseq API" in d.find_element(By.CSS_SELECTOR, ".info .title").text
        d.find_element(By.CSS_SELECTOR, "button.authorize").click()
        field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input")))
        field.send_keys(token)
        d.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()
        d.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()

        op = d.find_element(By.ID, "operations-api_parsers-list_parsers")
        op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda _d: op.find_elements(By.CSS_SELECTOR, "button.try-out__btn"))
        op.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
        op.find_element(By.CSS_SELECTOR, "button.execute").click()
        status = wait.until(
            lambda _d: op.find_elements(
                By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
            )
        )
        d.save_screenshot(str(tmp_path / "api-docs.png"))
        assert status[0].text.strip() == "200"
        assert "Bearer" in op.find_element(By.CSS_SELECTOR, ".curl-command").text
        body = op.find_element(
            By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description"
        )
        assert '"parsers"' in body.text
        blocked = [
            e["message"]
            for e in d.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused" in e["message"]
        ]
        assert blocked == []
    finally:
        d.save_screenshot(str(tmp_path / "api-docs-last.png"))
