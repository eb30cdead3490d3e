"""The MAS app uvicorn serves: the operator's own app (MYCA_MAS_APP=module:attr) with the
status router mounted into it, or, without one, a small app of myca_ops's own."""

from __future__ import annotations

import importlib
import os

from fastapi import FastAPI

from myca_ops.mas.status import mount


def build(target: str = "") -> FastAPI:
    if not target:
        return mount(FastAPI(title="MYCA MAS (myca-ops)"))
    module_name, _, attr = target.partition(":")
    try:
        operator_app = getattr(importlib.import_module(module_name), attr or "app")
    except (ImportError, AttributeError) as exc:
        raise SystemExit(
            f"MYCA_MAS_APP={target}: cannot load the operator's app ({exc}); check mas_app_module"
        ) from exc
    return mount(operator_app)


app = build(os.environ.get("MYCA_MAS_APP", ""))
