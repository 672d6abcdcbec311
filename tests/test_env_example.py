"""Every setting read from the environment is documented in .env.example, with a comment."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIABLE_LINE = re.compile(r"^(?:# )?([A-Z_][A-Z0-9_]*)=")


def test_every_environment_variable_of_the_settings_is_in_env_example():
    settings = (ROOT / "perfgate_site" / "settings.py").read_text()
    used = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_][A-Z0-9_]*)"', settings))
    assert len(used) > 10, "too few env() calls found: the pattern is out of date"

    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for number, line in enumerate(lines):
        match = VARIABLE_LINE.match(line)
        if match:
            above = lines[number - 1] if number else ""
            documented[match.group(1)] = above.startswith("# ") and not VARIABLE_LINE.match(above)

    assert used <= set(documented), f"missing from .env.example: {sorted(used - set(documented))}"
    assert all(documented.values()), f"without a comment: {[n for n, ok in documented.items() if not ok]}"
