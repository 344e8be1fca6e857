"""Pure-torch reference backend (installed as ``gdn_dispatch.reference``).

The executable form of the API contract: float32 (or float64) math on any device.
"""
