"""Build the dashboard's SVG icon sprite from Lucide's individual icons (ISC license).

The sprite is committed (enginex/web/static/vendor/lucide-sprite.svg, with lucide-LICENSE);
run this only to add an icon:

    npm pack lucide-static@1.87.0 && tar xzf lucide-static-1.87.0.tgz
    python scripts/build_icon_sprite.py package/icons

Templates draw an icon with ``{{ icon("bot") }}`` (enginex/web/templates/_icons.html), which
references ``/static/vendor/lucide-sprite.svg#bot``: one cached file, no inline SVG per page,
nothing from a CDN. Stroke and fill come from the ``.icon`` rule in app.css.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ICONS = (
    "layout-dashboard", "play", "bot", "circle-check", "file-text", "users", "settings",
    "scroll-text", "chart-column", "building-2", "server", "plug", "user", "mail", "log-out",
    "chevrons-up-down", "shield", "arrow-left-right",
)
VERSION = "1.87.0"
OUT = Path(__file__).resolve().parents[1] / "enginex/web/static/vendor/lucide-sprite.svg"


def symbol(name: str, source: str) -> str:
    body = re.search(r"<svg[^>]*>(.*)</svg>", source, re.S)
    if body is None:
        raise SystemExit(f"{name}.svg has no <svg> element")
    shapes = " ".join(line.strip() for line in body.group(1).splitlines() if line.strip())
    return f'<symbol id="{name}" viewBox="0 0 24 24">{shapes}</symbol>'


def main(icons_dir: str) -> None:
    folder = Path(icons_dir)
    symbols = [symbol(name, (folder / f"{name}.svg").read_text()) for name in ICONS]
    OUT.write_text(
        f"<!-- Lucide v{VERSION} (ISC, see lucide-LICENSE); built by "
        "scripts/build_icon_sprite.py -->\n"
        '<svg xmlns="http://www.w3.org/2000/svg">\n' + "\n".join(symbols) + "\n</svg>\n")
    print(f"wrote {len(symbols)} icons to {OUT}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/build_icon_sprite.py <lucide-static>/icons")
    main(sys.argv[1])
