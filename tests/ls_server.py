"""A real Label Studio server for integration tests: backend.tools.servers, shared with the demo and bench.

`label-studio start` runs in its own process group on a free loopback port with a
throwaway data dir, so tests talk to the same server, database and auth code as users
do. Start it once per pytest session (conftest.py's `label_studio` fixture): the first
start of a data dir runs the database migrations (tens of seconds up to minutes).
"""
from backend.tools.servers import LabelStudioServer, free_port

__all__ = ["LabelStudioServer", "free_port"]
