"""The serving ceiling: a bare FastAPI app answering the recommendation route with a constant list.

    python bench/_ceiling_app.py --port 8123

Same server as the service (``uvicorn.run(app, host, port, log_level)``: one process, the
same event loop and HTTP parser, access log off at ``warning``), no database, cache, model
or middleware. Whatever the service does above this is the cost of its work.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

# The shape of a real answer (10 scored items), built once.
CONSTANT = {
    "user_id": "1", "model": "constant", "model_version": "ceiling", "source": "model",
    "items": [{"item_id": str(i), "score": 1.0 / (i + 1), "rank": i + 1, "title": None} for i in range(10)],
    "unknown_items": [],
}


def create_app() -> FastAPI:
    app = FastAPI(title="ceiling")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/users/{user_id}/recommendations")
    async def recommend(user_id: str) -> dict:
        return CONSTANT

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
