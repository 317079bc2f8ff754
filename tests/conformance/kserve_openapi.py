"""Prints the OpenAPI document of KServe's own V2 (Open Inference Protocol) REST endpoints, as
KServe's Python model server (FastAPI) generates it from its data models: the reference the
schemathesis run in tests/tests/openapi.rs drives the server with, next to the server's own
document. Run with the project venv: `.venv/bin/python tests/conformance/kserve_openapi.py`.
"""

import json, sys, fastapi
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from kserve.protocol.dataplane import DataPlane
from kserve.model_repository import ModelRepository
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
repo = ModelRepository()
app = fastapi.FastAPI(title="KServe V2")
register_v2_endpoints(app, DataPlane(model_registry=repo), ModelRepositoryExtension(model_registry=repo))
json.dump(app.openapi(), sys.stdout)
