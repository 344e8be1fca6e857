"""``python -m gdn_dispatch info | compile | bench``."""

from gdn_dispatch.cli import main

raise SystemExit(main())
