"""`ironcliw export kubernetes`: read the config and the run history (never changing
either), write the manifests to stdout or one file per object into a directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..admission import predict_component
from ..config import Config, Paths
from ..errors import ConfigError
from ..history import History
from .kubernetes import Options, manifests, object_name
from .yamltext import dump

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
HEADER = (
    "Written by `ironcliw export kubernetes` from {source}.",
    "Memory requests are the supervisor's predicted peaks; see the README's Kubernetes section for",
    "what has no equivalent in a cluster (freezing, trims, make-room, idle unload, on-demand loading).",
)


def export_kubernetes(config: Config, paths: Paths, args: argparse.Namespace) -> int:
    history = History(paths.state_dir)
    history.load(set_aside=False)
    coverage = config.memory.prediction_coverage
    predictions = {
        name: predict_component(spec, history.runs(name), coverage) for name, spec in config.components.items()
    }
    options = Options(image=args.image, namespace=args.namespace, image_root=args.image_root)
    try:
        objects = manifests(config, predictions, options)
    except ConfigError as exc:
        print(f"ironcliw: cannot export: {exc}", file=sys.stderr)
        return EXIT_USAGE
    header = tuple(line.format(source=config.source) for line in HEADER)
    if args.output is None:
        sys.stdout.write("---\n".join(dump(obj, header if i == 0 else ()) for i, obj in enumerate(objects)))
        return EXIT_OK
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            name = f"{obj['kind'].lower()}-{object_name(obj['metadata']['name'])}.yaml"
            (out / name).write_text(dump(obj, header))
    except OSError as exc:
        print(f"ironcliw: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {len(objects)} manifests to {out}")
    return EXIT_OK
