"""``fusedembed serve MODEL INDEX``: a small HTTP endpoint over a trained model and an
embedding file (``pip install 'fusedembed[serve]'``: FastAPI + uvicorn).

FastAPI and uvicorn rather than the standard library's ``http.server``: the latter's own
documentation says it is not for production (basic security checks only); uvicorn is a
maintained production ASGI server, and FastAPI validates the JSON bodies (every malformed
request is answered with a JSON error, not a traceback) and documents the API at ``/docs``.

Endpoints (JSON in and out; errors are ``{"error": "..."}`` with a 4xx status):

* ``POST /embed`` ``{"texts": [...]}`` or ``{"images": [<base64 JPEG/PNG/GIF/WebP>, ...]}`` ->
  ``{"output": "text_embedding", "dim": D, "embeddings": [[...], ...]}``
* ``POST /search`` ``{"text": "..."}``, ``{"texts": [...]}``, ``{"image": <base64>}`` or
  ``{"images": [...]}``, optional ``"k"`` (default 10) -> ``{"results": [[{"id", "score"}, ...], ...]}``
  (one list per query)
* ``GET /health`` -> model, gallery size, dimension

Requests are bounded: the body by ``max_request_bytes`` (413 past it, counted as the bytes
arrive, whatever Content-Length says), the batch by ``MAX_ITEMS`` inputs, ``k`` by ``MAX_K``.
The model runs one request at a time (a lock), in FastAPI's worker threads.
"""

import base64
import binascii
import threading
from typing import List, Optional

import torch

from .embedfile import EmbeddingFile
from .index import build_index
from .inference import Embedder, ModelError, image_tensor_from_bytes, load_embedder

MAX_ITEMS = 256
MAX_K = 1000


class _BodyLimit:
    """ASGI middleware answering 413 (JSON) to a request body over ``limit`` bytes: refused
    from its Content-Length, or as the bytes arrive (a chunked body), before the app sees it.
    The body is read here (at most ``limit`` bytes) and handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":        # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._refuse(send)
            more = message.get("more_body", False)
        handed = False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        import json

        body = json.dumps({"error": f"request body over {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _images(items: List[str]) -> List[torch.Tensor]:
    out = []
    for n, item in enumerate(items):
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"images[{n}] is not base64") from None
        out.append(image_tensor_from_bytes(data, f"images[{n}]"))
    return out


def create_app(embedder: Embedder, gallery: EmbeddingFile, *, index_kind: str = "exact",
               max_request_bytes: int = 8 << 20):
    """The ASGI app (FastAPI, wrapped in the body-size limit)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException

    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
    index = (build_index(gallery[:], "exact", device=embedder.device) if index_kind == "exact"
             else build_index(gallery, index_kind))
    lock = threading.Lock()
    app = FastAPI(title="fusedembed", description=f"model {embedder.source}; gallery {gallery.path}")

    class Inputs(BaseModel, extra="forbid"):
        texts: Optional[List[str]] = Field(None, max_length=MAX_ITEMS)
        images: Optional[List[str]] = Field(None, max_length=MAX_ITEMS, description="base64 image files")

    class SearchInputs(Inputs):
        text: Optional[str] = None
        image: Optional[str] = None
        k: int = Field(10, ge=1, le=MAX_K)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = "; ".join("the body is not valid JSON" if e.get("type") == "json_invalid" else
                             f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return error(422, problems or "invalid request")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    def encode(texts: List[str], images: List[str]):
        if bool(texts) == bool(images):
            raise ValueError("give texts or images (one kind per request)")
        if len(texts) + len(images) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} inputs per request")
        with lock:
            if texts:
                return embedder.embed_texts(texts)
            return embedder.embed_images(_images(images))

    def answer(fn):
        try:
            return fn()
        except (ValueError, ModelError) as err:
            return error(400, str(err))

    @app.post("/embed")
    def embed(inputs: Inputs):
        def run():
            key, emb = encode(inputs.texts or [], inputs.images or [])
            return {"output": key, "dim": emb.shape[1], "embeddings": emb.tolist()}
        return answer(run)

    @app.post("/search")
    def search(inputs: SearchInputs):
        def run():
            texts = (inputs.texts or []) + ([inputs.text] if inputs.text is not None else [])
            images = (inputs.images or []) + ([inputs.image] if inputs.image is not None else [])
            _, q = encode(texts, images)
            if q.shape[1] != gallery.dim:
                raise ValueError(f"the model embeds in {q.shape[1]} dimensions, the gallery holds {gallery.dim}")
            scores, found = index.search(q, inputs.k)
            return {"results": [[{"id": gallery.ids[i], "score": s} for s, i in zip(srow.tolist(), irow.tolist())
                                 if i >= 0] for srow, irow in zip(scores, found)]}
        return answer(run)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": embedder.source, "gallery": str(gallery.path), "items": len(gallery),
                "dim": gallery.dim, "output": gallery.meta.get("output"), "index": index_kind}

    return _BodyLimit(app, max_request_bytes)


def run(model, index_path, *, host: str = "127.0.0.1", port: int = 8000, device=None, index_kind: str = "exact",
        max_request_bytes: int = 8 << 20, out=None) -> None:
    """Serves until interrupted (Ctrl-C)."""
    import uvicorn

    gallery = EmbeddingFile(index_path)
    embedder = load_embedder(model, device=device)
    app = create_app(embedder, gallery, index_kind=index_kind, max_request_bytes=max_request_bytes)
    if out is not None:
        out.write(f"serving {embedder.source} over {gallery.path} ({len(gallery)} items) at http://{host}:{port} "
                  f"(POST /embed, /search; API at /docs)\n")
        out.flush()
    uvicorn.run(app, host=host, port=port, log_level="warning")
