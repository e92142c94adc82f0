"""One way to write a file so that no reader ever sees half of it and no crash leaves one.

Temp file in the same folder, fsync, os.replace. Used for checkpoints, s_test files,
run states, rankings, JSON metadata and downloaded images alike.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", verify: Callable[[str], object] | None = None,
                 **open_kwargs) -> Iterator[IO]:
    """`with atomic_write(p, "w") as f: f.write(...)`: p appears whole when the block ends, or not at all;
    with `verify`, only once verify(the written file) returned (what it raises leaves nothing behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other processes (a worker, a reader) may read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, **dump_kwargs) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(data, f, **({"indent": 1, "sort_keys": True} | dump_kwargs))
