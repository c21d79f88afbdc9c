"""The README is a front page and every relative link in it and in docs/ resolves."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_readme_is_a_front_page():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().split("\n")
  assert len(lines) <= 200, len(lines)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
  with open(page) as f:
    text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # code blocks hold no links
  broken = []
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
      continue
    path = target.split("#")[0]
    if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(page), path))):
      broken.append(target)
  assert not broken, broken
