"""``dds-infer import-keras``: published Keras HDF5 network -> emulator bundle."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "import-keras",
        help="convert the published Green2020 Keras network (HDF5) into an emulator bundle",
        description="Read a Keras HDF5 network of the Green2020 architecture with h5py "
        "(no TensorFlow) and write an emulator bundle directory.",
    )
    p.add_argument("h5", help="Keras HDF5 model file (e.g. green2020_nn_model.h5)")
    p.add_argument("--normalization", required=True, help="JSON with theta_med, theta_std")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--density", default=None,
                   help="optional training-density HDF5 (rho_stars) to attach as the valid domain")
    p.add_argument("--selection-limit", type=float, default=None, metavar="MAG",
                   help="record the training set's magnitude limit in the model's first band (Green2020: G, "
                   "about 17) in the bundle, for dds-infer infer --selection-limit bundle")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bundle import save_bundle
    from ..cli import emit_json
    from ..keras_import import import_keras_model

    emu = import_keras_model(args.h5, args.normalization, density_path=args.density)
    if args.selection_limit is not None:
        from ..selection import selection_record

        emu = emu.with_provenance(**selection_record(emu.bands.names[0], args.selection_limit,
                                                     "given to dds-infer import-keras"))
    out = save_bundle(emu, args.out)
    info = {
        "out": str(Path(out).resolve()),
        "bands": list(emu.bands.names),
        "hidden": list(emu.hidden),
        "domain": emu.domain is not None,
        "selection_limit": args.selection_limit,
    }
    if args.json:
        emit_json(info)
    else:
        print(f"wrote bundle {info['out']} ({len(info['bands'])} bands, hidden {info['hidden']}, "
              f"domain {'attached' if info['domain'] else 'none'})")
    return 0
