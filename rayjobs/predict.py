"""``grounding predict``: image file(s) -> top boxes (original pixels) + 22 attribute probabilities.

    grounding predict chest1.dcm chest2.png --checkpoint runs/demo/train/run-1/model.pt \
        --detector runs/demo/detector/detector.pt --out runs/demo/predict --top-k 3

Writes ``<out>/predictions.json`` (one object per image, named by its path only) and an overlay PNG
per image. No text input: inference needs only the image. Files that cannot be decoded get an error
entry; the exit status is 0 when at least one image was predicted.
"""

from __future__ import annotations

import json
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import check_inputs, clean_exit, common_parser, setup_logging

# images are not checked here: one that cannot be read gets an error entry (documented above)
INPUTS = {"checkpoint": ic.require_checkpoint,
          "detector": ic.require_checkpoint,
          "out": ic.require_writable_folder, "work_dir": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help, ray=False)
    parser.add_argument("images", nargs="+", help="DICOM / PNG / JPEG files (local paths or URIs)")
    parser.add_argument("--checkpoint", required=True, help="exported grounding model.pt")
    parser.add_argument("--detector", default="", help="detector.pt (default: the reference in the checkpoint)")
    parser.add_argument("--out", default=None, help="output folder (default: <work_dir>/predict)")
    parser.add_argument("--top-k", type=int, default=3, help="boxes per image after NMS (default 3)")
    parser.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU threshold on alpha-ranked ROIs")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    parser.add_argument("--no-overlays", action="store_true", help="write only predictions.json")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    check_inputs(args, INPUTS)
    if args.config or args.overrides:
        print("predict: --config/--set are ignored; the checkpoint's own config is used", file=sys.stderr)
    from grounding.data import storage
    from grounding.model.checkpoint import CheckpointError
    from grounding.detection.detector import WeightsError
    from grounding.model.predict import PredictError, Predictor, write_predictions

    try:
        predictor = Predictor(args.checkpoint, args.detector, device=args.device, top_k=args.top_k,
                              nms_iou=args.nms_iou)
    except (PredictError, CheckpointError, WeightsError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return 2
    results = predictor.predict_files(args.images, keep_pixels=not args.no_overlays)
    out = args.out or storage.join(args.work_dir or predictor.cfg.run.work_dir, "predict")
    summary = write_predictions(results, out, overlays=not args.no_overlays)
    for r in results:
        if r.get("error"):
            print(f"{r['file']}: error {r['error']['reason']}: {r['error']['message']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0 if summary["images"] > sum(summary["errors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
