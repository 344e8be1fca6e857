"""Kernel backends of gdn_dispatch (installed as ``gdn_dispatch.backends``)."""
