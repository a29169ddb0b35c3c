"""Screenshot a ``featviz report`` page in headless Chromium (the README's docs/report.png).

    python3 tools/report_screenshot.py report.html docs/report.png [--section maps]

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (the ``test``
extra). The page is opened from ``file://`` with the network emulated offline; the picture is
the browser window (1280 px wide) scrolled to ``--section``, saved as an optimized PNG.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def open_chromium(profile: Path, width: int = 1280, height: int = 1500) -> webdriver.Chrome:
    """Start headless Debian Chromium with a new empty profile and no network."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        raise SystemExit("install Debian's chromium and chromium-driver first "
                         "(apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    return driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--section", default="", help="id of the section scrolled to the top")
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        driver = open_chromium(Path(profile), height=args.height)
        try:
            driver.get(args.page.resolve().as_uri())
            if args.section:
                driver.execute_script(
                    "document.getElementById(arguments[0]).scrollIntoView()", args.section)
            driver.execute_async_script(
                "var done=arguments[arguments.length-1];Promise.all([...document.images]"
                ".filter(i=>i.offsetParent).map(i=>{i.loading='eager';return i.decode()"
                ".catch(()=>0);})).then(()=>done(0));")
            shot = args.out.with_suffix(".raw.png")
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    image = Image.open(shot).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    shot.unlink()
    print(args.out, f"{args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
