"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the UI tests.

Nothing is downloaded: the driver is /usr/bin/chromedriver, the browser /usr/bin/chromium,
and Chromium's background networking is off (this machine reaches no outside host).
Every step can take a screenshot; the test keeps them when it fails.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,900")


class Browser:
    """A logged-in Label Studio user in headless Chromium, with a screenshot per step."""

    def __init__(self, base_url: str, shots: Path):
        webdriver = pytest.importorskip("selenium.webdriver", reason="make test-browser installs selenium")
        from selenium.webdriver.chrome.service import Service

        binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
        if not binary or not driver:
            pytest.skip("needs Debian's chromium and chromium-driver (make test-browser installs them)")
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(driver), options=options)
        self.driver.implicitly_wait(5)
        self.base, self.shots, self.step = base_url.rstrip("/"), shots, 0
        shots.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.driver.quit()

    def shot(self, name: str) -> None:
        self.step += 1
        self.driver.save_screenshot(str(self.shots / f"{self.step:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.png"))

    def wait(self, condition, timeout: float = 60, what: str = "the page"):
        """Poll `condition()` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception:  # the page is re-rendering: try again
                pass
            time.sleep(0.25)
        self.shot(f"timeout {what}")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def button(self, text: str, last: bool = False):
        from selenium.webdriver.common.by import By

        found = [b for b in self.driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == text]
        return found[-1 if last else 0] if found else None

    def click_text(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait(lambda: self.driver.find_element(By.XPATH, f"//*[normalize-space(text())='{text}']"),
                  what=f"'{text}'").click()

    def body_text(self) -> str:
        return self.driver.execute_script("return document.body.innerText")

    def login(self, email: str, password: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(f"{self.base}/user/login/")
        self.driver.find_element(By.NAME, "email").send_keys(email)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.css("button[type=submit]")[0].click()
        self.wait(lambda: "/user/login" not in self.driver.current_url, what="the login")
        self.shot("logged in")

    # -- the labeling screen ---------------------------------------------------------
    def open_labeling(self, project_id: int) -> int:
        """Data Manager > "Label All Tasks"; the id of the task Label Studio serves."""
        self.driver.get(f"{self.base}/projects/{project_id}/data")
        self.wait(lambda: self.button("Label All Tasks"), what="the Data Manager").click()
        return self.current_task()

    def current_task(self) -> int:
        js = "const e = document.querySelector('.lsf-current-task__task-id'); return e && e.childNodes[0].textContent"
        return int(self.wait(lambda: (self.driver.execute_script(js) or "").strip(), what="a task in the labeling "
                             "screen"))

    def ticked(self) -> list[str]:
        """The choices ticked in the labeling screen (pre-ticked ones, before the annotator clicks)."""
        self.wait(lambda: self.css("input.ant-checkbox-input"), what="the choices")
        return [box.get_attribute("name") for box in self.css("input.ant-checkbox-input") if box.is_selected()]

    def label(self, choice: str) -> int:
        """Tick `choice`, Submit, and return the id of the task served next."""
        task = self.current_task()
        box = self.css(f"input.ant-checkbox-input[name='{choice}']")[0]
        self.driver.execute_script("arguments[0].click()", box)
        self.wait(lambda: self.button("Submit"), what="Submit").click()
        return int(self.wait(lambda: (t := self.current_task()) != task and t, what=f"the task after {task}"))

    # -- Settings > Model ------------------------------------------------------------
    def start_training(self, project_id: int) -> str:
        """The model card's menu > Start Training > the dialog's Start Training; the dialog's text."""
        self.driver.get(f"{self.base}/projects/{project_id}/settings/ml")
        self.wait(lambda: self.css("button[aria-label='Machine learning model options']"),
                  what="the model card")[0].click()
        self.shot("model card menu")
        self.click_text("Start Training")
        self.wait(lambda: self.button("Start Training", last=True), what="the dialog").click()
        text = self.wait(lambda: "Request Sent!" in (t := self.body_text()) and t, what="the answer")
        self.shot("start training dialog")
        return text.split("Start Model Training")[-1]
