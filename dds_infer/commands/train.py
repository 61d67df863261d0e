"""``dds-infer train``: train the emulator on a labelled catalogue (Green et al. 2021, §4)."""

from __future__ import annotations

from ._model_args import add_columns_args


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the stellar-model emulator with the paper's iterative chi^2 procedure",
        description="Train an emulator on a catalogue with spectroscopic labels, parallaxes and "
        "prior reddenings (Green et al. 2021, section 4) and write it as a bundle. "
        "A checkpoint is written after every iteration (default <out>.ckpt/); --resume continues it.",
    )
    p.add_argument("--catalog", required=True, help="catalogue (Green2020 HDF5 or a table)")
    add_columns_args(p)
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--iterations", type=int, default=20, help="outer iterations (covariance/E refresh)")
    p.add_argument("--epochs", type=int, default=25, help="epochs per iteration")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (x e^-1/5 per iteration)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initial weights and batch order")
    p.add_argument("--split", default=None, metavar="FILE",
                   help="explicit train/validation/test split instead of the seeded 70/20/10 one: .npz or .json "
                        "with three arrays of catalogue row indices (after --max-stars), e.g. a predefined test "
                        "set or a bundle's extras/split.npz to reuse its split; train rows may repeat (bootstrap)")
    p.add_argument("--parallax-zp", type=float, default=0.0,
                   help="parallax zero-point [mas] subtracted before μ̂ = 10 − 5 log10 ϖ (Gaia DR2: −0.029; "
                        "0 reproduces the paper's training)")
    p.add_argument("--label-update", choices=("none", "joint"), default="none",
                   help="'joint': after each iteration re-estimate every star's θ together with E from its "
                        "photometry, spectroscopic labels held fixed as the prior (Eqs. 8-9 extended to θ; "
                        "reduces the errors-in-variables bias of noisy labels). 'none': the paper's procedure")
    p.add_argument("--label-shrinkage", choices=("none", "tweedie"), default="none",
                   help="'tweedie': before training, shrink each label to its posterior mean under the "
                        "catalogue's label density (Tweedie's formula; corrects the regression dilution of "
                        "noisy labels to first order). 'none': the paper's procedure")
    p.add_argument("--label-shrinkage-groups", type=int, default=1,
                   help="with --label-shrinkage tweedie: estimate the label density separately in this many "
                        "parallax-quantile groups (a magnitude-limited sample's θ population depends on "
                        "distance; 1: one pooled density)")
    p.add_argument("--label-shrinkage-bandwidth", type=float, default=1.0,
                   help="with --label-shrinkage tweedie: smoothing σ of the label density, in median label σ "
                        "(default 1; smaller resolves sharper features but is noisier)")
    p.add_argument("--label-update-centring", action="store_true",
                   help="with --label-update joint: remove the mean shift of the updated labels per parallax "
                        "group after every update (posterior means average to their prior means; a mean shift "
                        "is the labels drifting with the network's zero-point)")
    p.add_argument("--parallax-likelihood", choices=("inverted", "linearized"), default="inverted",
                   help="'linearized': from iteration 2, a Gaussian likelihood in ϖ linearised about each star's "
                        "photometric distance, for every star with a parallax (removes the low-S/N bias of "
                        "μ̂ = 10 − 5 log10 ϖ and of the S/N cut). 'inverted': the paper's μ̂, S/N > 5 only")
    p.add_argument("--hidden", default="32,32", help="hidden layer widths, comma separated")
    p.add_argument("--l2-hidden", type=float, default=1e-4,
                   help="L2 weight on the stellar-model kernels (Eq. 15; the paper's 1e-4). It smooths M(θ): on "
                        "the physical mock it costs ~0.02 mag RMS on the giant branch (see README)")
    p.add_argument("--l1-reddening", type=float, default=1e-2,
                   help="L1 weight on the R(θ) kernel (Eq. 15; the paper's 1e-2), which keeps R nearly constant")
    p.add_argument("--max-stars", type=int, default=None, help="use only the first N catalogue rows")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default <out>.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the last finished iteration")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many iterations (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from ..cli import emit_json
    from ..selection import recorded_selection_limit
    from ..training import TrainConfig, train
    from ..train_io import read_split, save_training_bundle
    from ._common import read_catalog

    try:
        hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    if not hidden or min(hidden) <= 0:
        raise ValueError(f"--hidden needs positive widths, got {args.hidden!r}")
    split = None if args.split is None else read_split(args.split)
    cat = read_catalog(args.catalog, args.columns, parallax_unit=args.parallax_unit, require_labels=True, require_reddening_prior=True)
    ckpt = args.checkpoint_dir or f"{str(args.out).rstrip('/')}.ckpt"
    cfg = replace(TrainConfig(), iterations=args.iterations, epochs=args.epochs, batch_size=args.batch_size,
                  lr=args.lr, seed=args.seed, hidden=hidden, l2_hidden=args.l2_hidden,
                  l1_reddening=args.l1_reddening, parallax_zero_point=args.parallax_zp,
                  label_update=args.label_update, label_shrinkage=args.label_shrinkage,
                  label_shrinkage_groups=args.label_shrinkage_groups,
                  label_shrinkage_bandwidth=args.label_shrinkage_bandwidth,
                  label_update_centring=args.label_update_centring, parallax_likelihood=args.parallax_likelihood,
                  max_stars=args.max_stars, checkpoint_dir=ckpt,
                  resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    emu, hist = train(cat, cfg, split=split)
    out = save_training_bundle(emu, hist, args.out, catalog_path=args.catalog)
    last_it = hist["iterations"][-1] if hist["iterations"] else {}
    summary = {
        "out": str(out), "checkpoint_dir": ckpt, "split_file": args.split,
        "n_stars": hist["n_stars"], "n_train": int(hist["split"]["train"].size),
        "n_validation": int(hist["split"]["validation"].size), "n_test": int(hist["split"]["test"].size),
        "iterations_done": len(hist["iterations"]), "iterations": cfg.iterations, "epochs": cfg.epochs,
        "final_train_loss": last_it.get("train_loss"), "final_val_loss": last_it.get("val_loss"),
        "final_chi2_threshold": last_it.get("chi2_threshold"),
        "final_outlier_frac_train": last_it.get("outlier_frac_train"),
        "label_update": cfg.label_update, "label_shrinkage": cfg.label_shrinkage,
        "n_labels_shrink_capped": hist.get("n_labels_shrink_capped", 0),
        "final_n_labels_capped": last_it.get("n_labels_capped", 0),
        "label_shrinkage_groups": cfg.label_shrinkage_groups,
        "label_shrinkage_bandwidth": cfg.label_shrinkage_bandwidth, "parallax_likelihood": cfg.parallax_likelihood,
        "final_n_parallax_modelled": last_it.get("n_parallax_modelled"),
        "l2_hidden": cfg.l2_hidden, "l1_reddening": cfg.l1_reddening,
        "label_update_centring": cfg.label_update_centring,
        "selection_limit": recorded_selection_limit(emu),
    }
    if args.json:
        emit_json(summary)
        return 0
    print(f"trained on {summary['n_train']} stars ({summary['n_validation']} validation, "
          f"{summary['n_test']} test held out); {summary['iterations_done']}/{cfg.iterations} iterations")
    print(f"final loss: train {summary['final_train_loss']:.4f}, validation {summary['final_val_loss']:.4f}")
    if cfg.label_shrinkage != "none" or cfg.label_update != "none":
        groups = f" in {cfg.label_shrinkage_groups} parallax groups" if cfg.label_shrinkage_groups > 1 else ""
        print(f"labels: shrinkage {cfg.label_shrinkage}{groups} ({summary['n_labels_shrink_capped']} shifts capped at 3σ), "
              f"update {cfg.label_update} ({summary['final_n_labels_capped']} at the 5σ trust region "
              "in the last iteration)")
    if cfg.parallax_likelihood != "inverted":
        print(f"parallax: {cfg.parallax_likelihood} likelihood, c_0 modelled for "
              f"{summary['final_n_parallax_modelled']} stars in the last iteration")
    if summary["selection_limit"] is not None:
        print(f"training selection limit recorded: {summary['selection_limit']:.2f} mag (95th percentile of "
              "the training split's first band; dds-infer infer --selection-limit bundle)")
    print(f"bundle: {out}")
    return 0
