from __future__ import annotations

from typing import List

import libcst as cst

from maskcheck.findings import Finding
from maskcheck.settings import Settings


def analyse_module(module: cst.Module, path: str, settings: Settings) -> List[Finding]:
    # TODO: placeholder until the analyser lands.
    return []
