"""The HTML report as a browser shows it: rendered in headless Chromium, the page is no wider than the window
(long video names, file names and per-frame lists wrap instead of stretching the tables) and every frame image
loads. Skipped where no Chromium is installed (.ci/run installs one when it can)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from evaluation.report import write_report
from receler.media import write_video

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium)")

# Measures the page once everything has loaded and writes the numbers into the page, where --dump-dom shows them.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    window: window.innerWidth, page: document.documentElement.scrollWidth, images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right)});
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path, *args) -> str:
    """Run headless Chromium with a fresh profile and nothing in the background; returns its stdout."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--hide-scrollbars"]
    result = subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=120)
    return result.stdout


def long_report(tmp_path):
    """A report with what made the tables overflow: long stems and file names, per-frame lists, empty columns."""
    videos = tmp_path / "videos"
    stems = [f"{i:03d}_a_red_circle_moving_left_and_a_yellow_square_moving_right_on_a_black_background"
             for i in range(3)]
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 3, y * 4, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    for stem in stems:
        write_video(np.stack([np.roll(base, 2 * f, axis=1) for f in range(9)]), videos / f"{stem}_clean.mp4")
        write_video(np.stack([np.roll(base, -2 * f, axis=0) for f in range(9)]), videos / f"{stem}_erased.mp4")
    pairs = [{"stem": s, "reference": f"{s}_clean.mp4", "candidate": f"{s}_erased.mp4", "frames_compared": 9,
              "psnr": 13.566001409012031, "ssim": 0.4243156872159626, "prompt": None, "clip_score": None,
              "psnr_per_frame": [15.158819619372023 - k / 7 for k in range(9)],
              "ssim_per_frame": [0.4988136320442109 - k / 70 for k in range(9)]} for s in stems]
    preservation = tmp_path / "preservation.json"
    preservation.write_text(json.dumps({"psnr": 13.57, "ssim": 0.42, "clip_score": None, "num_pairs": 3,
                                        "protocol": {"reference_side": "clean", "candidate_side": "erased"},
                                        "video_dir": str(videos), "pairs": pairs, "skipped": []}))
    return write_report(tmp_path / "report" / "report.html", metrics=[preservation], video_dir=videos)


def test_report_fits_the_window_and_every_frame_image_loads(tmp_path):
    html = long_report(tmp_path)
    probe = html.with_name("probe.html")
    probe.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    for width in (1280, 900):
        dom = chromium(tmp_path, f"--window-size={width},1000", "--virtual-time-budget=10000", "--dump-dom",
                       probe.as_uri())
        found = re.search(r'<pre id="probe">(.*?)</pre>', dom)
        assert found, dom[-500:]
        numbers = json.loads(found.group(1).replace("&quot;", '"'))
        assert numbers["window"] == width
        assert numbers["page"] <= width, f"the page is {numbers['page']} px wide in a {width} px window"
        assert max(numbers["tables"]) <= width
        assert numbers["images"] == 3 and numbers["loaded"] == 3  # one frame strip per prompt, each loaded
    shot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1000,2400", f"--screenshot={shot}", html.as_uri())
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1000) and pixels.min() < 100, "the screenshot shows the page"
