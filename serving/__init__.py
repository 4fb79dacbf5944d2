"""Serving EM3: TF Serving deployment files, the gRPC client and a local stand-in server."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
