"""Fault injection for tests: `TSA_TEST_HOOKS=/path/hooks.json` names faults to inject.

    {"hang_decode": "clip.mp4"}      the decode child hangs in native code on that file name
    {"slow_start": 3}               a fresh decode child takes 3 s more before it is ready
    {"raise_stage": "vae:KEY"}      that model stage raises on any batch holding clip KEY
    {"storage_blind": {"node": NODE_ID, "path": PREFIX}}
                                    the storage check on that Ray node sees nothing under PREFIX

The file is read at each use, so a test can change the faults between two runs of one Ray
instance. Without the variable (every real run) nothing is read.
"""
from __future__ import annotations

import json
import os
from typing import Optional

HOOKS_ENV = "TSA_TEST_HOOKS"


def test_hook(name: str) -> Optional[str]:
    path = os.environ.get(HOOKS_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(name)
    except (OSError, ValueError):
        return None
