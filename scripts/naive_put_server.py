"""The benchmark baseline: a naive Litestar endpoint that streams a PUT body to a file.

It appends each request body at ``?offset=N`` of ``DATA_DIR/<name>`` through anyio's file
API — what a straightforward handler looks like, with no database, no hashing and no
fsync. ``scripts/bench_upload.py`` runs it beside Ferry so the two are measured in one run.

Run: ``python scripts/naive_put_server.py --port P --data-dir DIR``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from litestar import Litestar, Request, put


def build(data_dir: Path) -> Litestar:
    """The baseline app: ``PUT /upload/{name}?offset=N`` writes the body at ``offset``."""

    @put("/upload/{name:str}", status_code=204, request_max_body_size=None)
    async def upload(request: Request[Any, Any, Any], name: str, offset: int = 0) -> None:
        path = data_dir / Path(name).name
        mode = "r+b" if path.exists() else "wb"
        async with await anyio.open_file(path, mode) as handle:
            await handle.seek(offset)
            async for chunk in request.stream():
                if chunk:
                    await handle.write(chunk)

    return Litestar([upload])


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.data_dir)
    uvicorn.run(build(args.data_dir), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
