"""The OpenAPI schema (``/api/openapi.json``) and its Swagger UI (``/api/docs``), behind the token like every other
API route (FastAPI's own docs routes take no dependencies, so ``create_app`` turns them off and serves these).

A browser opens ``/api/docs?token=<token>``; the page fetches the schema with the same ``?token=``. No OAuth2
redirect page is served: the API has no OAuth2 flow.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from .guards import require_auth

OPENAPI_URL = "/api/openapi.json"
DOCS_URL = "/api/docs"

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_auth)])


@router.get(OPENAPI_URL)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    token = request.query_params.get("token")
    schema = OPENAPI_URL + (f"?token={quote(token, safe='')}" if token else "")
    return get_swagger_ui_html(openapi_url=schema, title=f"{request.app.title} API", oauth2_redirect_url=None)
