#!/usr/bin/env python
"""A real third-party shop on loopback: django-oscar (installed from PyPI by the `shop` extra) hosted
by the minimal Django project in thirdparty/oscar/ (issue #18).

  python scripts/thirdparty_shop.py serve  --port P --data-dir D [--host 127.0.0.1]
      Makes D/db.sqlite3 and D/whoosh_index if the database is missing (copies of a migrated, seeded,
      indexed template kept in the cache directory, built on first use), applies any unapplied
      migration, seeds an empty catalogue, then runs Django's server in the foreground (no reloader)
      on HOST:P.
  python scripts/thirdparty_shop.py orders --data-dir D
      Prints the number of orders in the shop's own records (Oscar's Order model): one integer.
  python scripts/thirdparty_shop.py manage --data-dir D -- ARGS...
      Any Django management command against the shop in D (e.g. `-- createsuperuser`).

The template lives in $SIMPERSONA_OSCAR_CACHE_DIR (default ~/.cache/simpersona/oscar), named
by a hash of the Django/Oscar versions and of thirdparty/oscar's files, so changing the settings,
the seed or the catalogue builds a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "thirdparty" / "oscar"
SETTINGS = "thirdparty.oscar.settings"


def _log(msg: str) -> None:
    print(f"[thirdparty_shop] {msg}", file=sys.stderr, flush=True)


def _configure(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ["SIMPERSONA_OSCAR_DATA_DIR"] = str(data_dir.resolve())
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS


def _cache_dir() -> Path:
    env = os.environ.get("SIMPERSONA_OSCAR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "simpersona" / "oscar"


def _template_key() -> str:
    from importlib.metadata import version

    h = hashlib.sha256()
    for dist in ("django", "django-oscar", "sorl-thumbnail", "django-haystack", "whoosh"):
        h.update(f"{dist}={version(dist)}\n".encode())
    for path in sorted(PROJECT.rglob("*")):
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _unapplied_migrations() -> int:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


TEMPLATE_FILES = ("db.sqlite3", "whoosh_index")  # what a template holds: the database and the search index


def prepare(data_dir: Path) -> None:
    """Make the data directory's database current and seeded (see the module's docstring)."""
    _configure(data_dir)
    db = data_dir / "db.sqlite3"
    template = _cache_dir() / f"oscar-{_template_key()}"
    from_template = False
    if not db.exists() and (template / "db.sqlite3").exists():
        for name in TEMPLATE_FILES:
            src, dst = template / name, data_dir / name
            if dst.is_dir():
                shutil.rmtree(dst)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        from_template = True
        _log(f"database and search index copied from the template {template}")

    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    built = False
    if not from_template:
        t0 = time.monotonic()
        pending = _unapplied_migrations()
        if pending:
            _log(f"applying {pending} migrations (once; later starts copy a template)")
            call_command("migrate", interactive=False, verbosity=0)
            built = True
        from oscar.core.loading import get_model

        if not get_model("catalogue", "Product").objects.exists():
            call_command("seed_shop", verbosity=0)
            built = True
        if not (data_dir / "whoosh_index").exists():
            call_command("update_index", verbosity=0)  # Haystack's own command: (re)index the products
        if built:
            _log(f"database ready in {time.monotonic() - t0:.1f}s")
    if built and not template.exists():
        connections.close_all()
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=template.parent, prefix=".building-"))
        for name in TEMPLATE_FILES:
            src = data_dir / name
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, tmp / name)
        try:
            os.rename(tmp, template)  # atomic; a concurrent builder that got there first wins
            _log(f"template saved to {template}")
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    # Oscar shows this placeholder for products without images; the thumbnailer reads it from MEDIA_ROOT
    missing = Path(settings.MEDIA_ROOT) / settings.OSCAR_MISSING_IMAGE_URL
    if not missing.exists():
        import oscar

        missing.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(oscar.__file__).parent / "static" / "oscar" / "img" / "image_not_found.jpg", missing)


def cmd_serve(args) -> int:
    prepare(Path(args.data_dir))
    from django.core.management import call_command

    _log(f"serving http://{args.host}:{args.port}/")
    call_command("runserver", f"{args.host}:{args.port}", use_reloader=False, use_threading=True, skip_checks=True)
    return 0


def cmd_orders(args) -> int:
    data_dir = Path(args.data_dir)
    if not (data_dir / "db.sqlite3").exists():
        _log(f"no shop database in {data_dir}")
        return 2
    _configure(data_dir)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("order_count")
    return 0


def cmd_manage(args) -> int:
    _configure(Path(args.data_dir))
    from django.core.management import execute_from_command_line

    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    execute_from_command_line(["thirdparty_shop.py manage", *rest])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="prepare the data dir and run the shop in the foreground")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--data-dir", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.set_defaults(fn=cmd_serve)
    orders = sub.add_parser("orders", help="print the shop's order count")
    orders.add_argument("--data-dir", required=True)
    orders.set_defaults(fn=cmd_orders)
    manage = sub.add_parser("manage", help="run a Django management command against the shop")
    manage.add_argument("--data-dir", required=True)
    manage.add_argument("rest", nargs=argparse.REMAINDER)
    manage.set_defaults(fn=cmd_manage)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
