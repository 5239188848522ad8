"""``python -m datasets.prepare --dataset cifar10|cifar100|cats_vs_dogs|digits|synthetic[_cifar] [--labels L]``.

``make data``: prepares a dataset once and prints where its arrays are and its manifest's summary (docs/data.md).
"""

from __future__ import annotations

import sys

from datasets.loading import prepare
from datasets.prepared import DataError, Prepared, prepared_dir, read_prepared
from shared import errors
from shared.data import DATASETS, LABELS, with_labels
from shared.io import check_writable


def _summary(p: Prepared) -> str:
    m = p.manifest
    sizes = ", ".join(f"{k} {v}" for k, v in m["splits"].items())
    tag = " (SYNTHETIC)" if m.get("synthetic") else ""
    return (f"prepared {m['name']}{tag} in {p.path}: {sizes}; {m['image_size']}x{m['image_size']}x3 uint8; "
            f"{m['num_classes']} classes; mean {[round(v, 4) for v in m['mean']]} "
            f"std {[round(v, 4) for v in m['std']]}")


def main(argv: list[str] | None = None) -> int:
    parser = errors.ArgumentParser(prog="python -m datasets.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--labels", default=None,
                        help=f"which label set: {', '.join(LABELS['cifar100'])} (cifar100 only; default fine): "
                             "cifar100 --labels coarse prepares cifar100_coarse")
    parser.add_argument("--data-dir", default="data", help="where sources are looked for and prepared/ is written")
    parser.add_argument("--val-size", type=float, default=None,
                        help="validation split carved from the training images: a count, or a fraction when < 1 "
                             "(cifar10, cifar100: 5000; cats_vs_dogs: 0.1; digits: 0.2 of all 1,797)")
    parser.add_argument("--no-download", action="store_true", help="never touch the network")
    parser.add_argument("--check", action="store_true", help="only verify an existing preparation's checksums")
    args = parser.parse_args(argv)
    if args.dataset not in DATASETS:
        raise errors.UserError(f"unknown dataset {args.dataset!r}; valid choices: {', '.join(DATASETS)}")
    try:
        args.dataset = with_labels(args.dataset, args.labels)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    if not args.check:  # before any download: the arrays go to <data-dir>/prepared/<name>
        check_writable(prepared_dir(args.dataset, args.data_dir).parent, folder=True, what="the prepared-data folder")
    try:
        if args.check:
            p = read_prepared(prepared_dir(args.dataset, args.data_dir))
        else:
            p = prepare(args.dataset, args.data_dir, download=not args.no_download, val_size=args.val_size,
                        in_process=True)
    except (DataError, ValueError) as e:
        raise errors.UserError(str(e)) from None
    print(_summary(p))
    return 0


if __name__ == "__main__":
    sys.exit(errors.run(main))
