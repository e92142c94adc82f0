"""The installed `isal` command: the engine's CLI (isal_core.cli) plus what needs Label Studio.

The engine knows nothing of Label Studio, so `isal simulate --label-studio local|URL`
(the protocol played through Label Studio and this backend, backend.tools.simulate_label_studio) is added
here, on the backend's side of the one-way arrow backend -> isal_core.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from isal_core import cli
from isal_core.simulation.config import SimulationConfig


def add_label_studio_arguments(p: argparse.ArgumentParser) -> None:
    ls = p.add_argument_group("headless Label Studio run (every strategy the backend serves, and isal_l1; see "
                              "backend.tools.simulate_label_studio)")
    ls.add_argument("--label-studio", metavar="local|URL",
                    help="play the protocol through Label Studio and the ISAL backend: 'local' starts one under "
                         "<out>/label-studio; a URL must be a server on this machine (default --out: "
                         "the offline one + '-label-studio')")
    ls.add_argument("--api-key", help="with a URL: a token of that server (default: LABEL_STUDIO_API_KEY)")
    ls.add_argument("--files-root", help="with a URL: that server's LOCAL_FILES_DOCUMENT_ROOT (images go there)")


def run_simulation(config: SimulationConfig, args: argparse.Namespace) -> Path:
    """Offline, or through Label Studio with --label-studio."""
    if not args.label_studio:
        return cli.simulate(config)
    from .simulate_label_studio import simulate_label_studio

    if args.out is None:
        config = config.model_copy(update={"out": config.out.rstrip("/") + "-label-studio"})
    return simulate_label_studio(config, args.label_studio, args.api_key, args.files_root)


def main(argv: list[str] | None = None) -> int:
    parser = cli.build_parser()
    add_label_studio_arguments(parser.commands["simulate"])
    return cli.main(argv, parser, simulate_runner=run_simulation)


if __name__ == "__main__":
    sys.exit(main())
