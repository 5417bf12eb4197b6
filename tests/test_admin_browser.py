"""The admin in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``scripts/browser.sh``) driven by Selenium against
``parseq up``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_PARSERS, INSTALLER_ENV, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = "browser-admin-pw"
SECRET = "browser-secret-value"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver: run scripts/browser.sh",
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """``parseq up`` (the embedded default) on a free port, with the fixture parsers."""
    port = free_port()
    env = {
        **INSTALLER_ENV,  # the start-up sync locks shipped parsers' requirements (an index)
        "PATH": os.environ["PATH"],
        "PARSEQ_VAR_DIR": str(tmp_path / "var"),
        "PARSEQ_PARSERS_DIR": str(FIXTURE_PARSERS),
        "PARSEQ_NOTEBOOKS_DIR": str(tmp_path / "notebooks"),
        "PARSEQ_ADMIN_PASSWORD": PASSWORD,
        "PARSEQ_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "parseq.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "Parseq is up" in (proc.stdout.readline() if proc.stdout else "")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for CSP
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.implicitly_wait(5)
    driver.downloads = downloads  # type: ignore[attr-defined]
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _wait_until(check, timeout_s: float = 30.0, every_s: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every_s)


def test_login_create_parser_run_it_and_download_output(
    server: str, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    d = browser
    wait = WebDriverWait(d, 20)
    try:
        d.get(f"{server}/admin/")
        assert "/admin/login/" in d.current_url  # every page needs a login
        d.find_element(By.NAME, "username").send_keys("admin")
        d.find_element(By.NAME, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(ec.url_to_be(f"{server}/admin/"))
        assert d.find_element(By.ID, "status-counts")  # the dashboard
        d.save_screenshot(str(tmp_path / "dashboard.png"))

        d.find_element(By.LINK_TEXT, "Parsers").click()
        d.find_element(By.LINK_TEXT, "Create").click()
        d.find_element(By.NAME, "name").send_keys("browser-echo")
        Select(d.find_element(By.NAME, "script")).select_by_visible_text("parsers/echo_env.py")
        args = d.find_element(By.NAME, "default_args")
        args.clear()
        args.send_keys('{"who": "browser"}')
        d.find_element(By.NAME, "secrets_set").send_keys(f"API_TOKEN={SECRET}")
        d.save_screenshot(str(tmp_path / "create-form.png"))
        d.find_element(By.CSS_SELECTOR, "input[type=submit][value=Save]").click()
        # Back on the list. Not a URL pattern: the form's own URL ends in ?url=/admin/parsers/,
        # so a pattern could match before the browser has left the form.
        wait.until(lambda drv: "/new/" not in drv.current_url)
        assert "Record was successfully created." in d.page_source
        assert SECRET not in d.page_source

        row = d.find_element(By.XPATH, "//tr[td[contains(., 'browser-echo')]]")
        row.find_element(By.CSS_SELECTOR, "a[title='Run now']").click()
        d.find_element(By.CSS_SELECTOR, "#run-now-form button[type=submit]").click()
        wait.until(ec.url_contains("/admin/runs/details/"))

        def completed() -> bool:
            d.refresh()
            return bool(d.find_elements(By.CSS_SELECTOR, ".status-completed"))

        assert _wait_until(completed), "run did not reach completed"
        assert "hello browser" in d.find_element(By.ID, "output-preview").text
        assert SECRET not in d.page_source
        d.save_screenshot(str(tmp_path / "run-details.png"))

        d.find_element(By.CSS_SELECTOR, "#run-files").find_element(
            By.LINK_TEXT, "output.txt"
        ).click()
        target = d.downloads / "output.txt"
        assert _wait_until(target.exists, timeout_s=15, every_s=0.2), "no download"
        assert target.read_text() == "hello browser\n"

        d.get(f"{server}/admin/runs/")
        assert d.find_elements(By.CSS_SELECTOR, ".status-completed")
        d.save_screenshot(str(tmp_path / "runs-page.png"))
    except BaseException:
        d.get(f"{server}/admin/runs/")
        d.save_screenshot(str(tmp_path / "runs-page-failure.png"))
        print(f"screenshot of the runs page: {tmp_path / 'runs-page-failure.png'}")
        raise


#: Every kind of page the admin has, and the API docs page (parser 1 is a shipped fixture).
CSP_PAGES = [
    "/admin/",
    "/admin/parsers/",
    "/admin/parsers/new/",
    "/admin/parsers/details/?id=1",
    "/admin/parsers/edit/?id=1",
    "/admin/parsers/run/1",
    "/admin/runs/",
    "/admin/skips/",
    "/admin/tokens/",
    "/admin/tokens/new/",
    "/api/v1/docs",
]


def _csp_violations(d) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["message"] for e in d.get_log("browser") if "Content Security Policy" in e["message"]]


def test_sign_in_security_in_a_real_browser(server: str, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 25 where a browser matters: a login with ``next=////evil.example/`` stays on the
    site, no page breaks the Content-Security-Policy (its scripts and Flask-Admin's confirm
    handler still run), and "Log out everywhere" ends the session."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    wait = WebDriverWait(d, 20)
    try:
        d.get(f"{server}/admin/login/?next=////evil.example/")
        d.find_element(By.NAME, "username").send_keys("admin")
        d.find_element(By.NAME, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(ec.url_to_be(f"{server}/admin/"))  # not evil.example
        assert _csp_violations(d) == []

        for page in CSP_PAGES:
            d.get(server + page)
            assert "/admin/login/" not in d.current_url, page
            assert not (v := _csp_violations(d)), "\n".join([page, *v])
        # The docs page's scripts (with their nonce) ran: Swagger UI lists the operations.
        assert _wait_until(lambda: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 5)

        d.get(f"{server}/admin/parsers/run/1")
        d.find_element(By.CSS_SELECTOR, "#run-now-form button[type=submit]").click()
        wait.until(ec.url_contains("/admin/runs/details/"))
        assert _csp_violations(d) == []

        # Flask-Admin's inline delete handler is allowed by its hash: the confirm appears.
        d.get(f"{server}/admin/parsers/")
        d.find_element(
            By.CSS_SELECTOR, "form.delete-form button, button[title='Delete Record']"
        ).click()
        wait.until(ec.alert_is_present())
        d.switch_to.alert.dismiss()  # nothing deleted
        assert _csp_violations(d) == []

        d.find_element(By.ID, "logout-everywhere").click()
        wait.until(ec.url_contains("/admin/login/"))
        d.get(f"{server}/admin/")
        assert "/admin/login/" in d.current_url
        assert _csp_violations(d) == []
    except BaseException:
        d.save_screenshot(str(tmp_path / "sign-in-failure.png"))
        print(f"screenshot: {tmp_path / 'sign-in-failure.png'}")
        raise


@pytest.mark.services
def test_live_log_of_a_worker_process_in_the_browser(
    services_app, services_env, worker_process, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A ``parseq web`` process shows the log of a run a ``parseq worker`` process executes,
    line by line while it runs (PostgreSQL + RabbitMQ + S3 between them)."""
    import re
    import uuid

    from selenium.webdriver.common.by import By

    from parseq.services import runs
    from parseq.web.admin.auth import create_user
    from tests.conftest import add_parser, stop_process

    name, user = f"live-{uuid.uuid4().hex[:8]}", f"watcher-{uuid.uuid4().hex[:6]}"
    with services_app.app_context():
        create_user(user, PASSWORD)
        run = runs.create_run(add_parser(name, "ticker.py"), {"ticks": 60, "pause": 0.25})
        run_id = run.id
    port = free_port()
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "parseq.cli", "web", "--port", str(port)],
            env=services_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        assert _wait_until(lambda: b"Parseq web on" in log_path.read_bytes(), 20, 0.1)
        d = browser
        d.get(f"http://127.0.0.1:{port}/admin/login/")
        d.find_element(By.NAME, "username").send_keys(user)
        d.find_element(By.NAME, "password").send_keys(PASSWORD)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        d.get(f"http://127.0.0.1:{port}/admin/runs/details/?id={run_id}")

        def ticks() -> int:
            # From the page's source: the page reloads itself, so elements go stale.
            found = re.search(r'id="log-tail">([^<]*)<', d.page_source)
            return found.group(1).count("tick") if found else 0

        assert _wait_until(lambda: ticks() >= 3, 30, 0.2), "no live log lines"
        first = ticks()
        page = d.page_source
        assert "status-running" in page and 'id="live-log"' in page  # before the run ended
        # The page reloads itself: more lines come without a click.
        assert _wait_until(lambda: ticks() > first, 15, 0.2), "the log did not grow"
        d.save_screenshot(str(tmp_path / "live-log.png"))
    finally:
        stop_process(web)


def test_run_page_shows_output_ipynb_rendered_and_its_scripts_do_not_run(
    server: str, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.test_notebooks_rich import RENDERED_CELLS

    nb = new_notebook(cells=[new_markdown_cell("intro"), *RENDERED_CELLS[1:2]])
    nb.cells.insert(0, new_code_cell("x = 1"))
    nb.cells.insert(0, RENDERED_CELLS[0])
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    nbformat.write(nb, tmp_path / "notebooks" / "rendered.ipynb")
    d = browser
    wait = WebDriverWait(d, 20)
    d.get(f"{server}/admin/login/")
    d.find_element(By.NAME, "username").send_keys("admin")
    d.find_element(By.NAME, "password").send_keys(PASSWORD)
    d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    wait.until(ec.url_to_be(f"{server}/admin/"))
    d.get(f"{server}/admin/parsers/new/")
    d.find_element(By.NAME, "name").send_keys("rendered")
    Select(d.find_element(By.NAME, "script")).select_by_visible_text("notebooks/rendered.ipynb")
    d.find_element(By.CSS_SELECTOR, "input[type=submit][value=Save]").click()
    wait.until(lambda drv: "/new/" not in drv.current_url)
    row = d.find_element(By.XPATH, "//tr[td[contains(., 'rendered')]]")
    row.find_element(By.CSS_SELECTOR, "a[title='Run now']").click()
    d.find_element(By.CSS_SELECTOR, "#run-now-form button[type=submit]").click()
    wait.until(ec.url_contains("/admin/runs/details/"))

    def completed() -> bool:
        d.refresh()
        return bool(d.find_elements(By.CSS_SELECTOR, ".status-completed"))

    assert _wait_until(completed), "run did not reach completed"
    frame = d.find_element(By.ID, "notebook-view")
    assert frame.get_attribute("sandbox") == ""  # sandboxed, scripts not allowed
    d.switch_to.frame(frame)
    try:
        assert d.find_element(By.TAG_NAME, "h1").text.startswith("Rendered heading")
        assert "from stdout" in d.find_element(By.TAG_NAME, "body").text
        time.sleep(1)  # time for a script or an onerror handler to run, if one could
        assert d.find_element(By.ID, "rich").text == "rich html"  # not "pwned"
        d.save_screenshot(str(tmp_path / "notebook-view.png"))
    finally:
        d.switch_to.default_content()
    assert "pwned" not in d.title
