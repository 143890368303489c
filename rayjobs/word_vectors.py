"""``grounding word-vectors``: Ray Data tokenisation + gensim Word2Vec + attribute negatives.

    grounding word-vectors --indiana ../shared/data/indiana/NLMCXR_reports.tgz --out runs/wv
"""

from __future__ import annotations

import functools
import logging
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import (build_config, check_inputs, clean_exit, get_args_parser as common_parser,
                          setup_logging)

INPUTS = {"manifest": ic.require_manifest_text, "indiana": ic.require_indiana,
          "texts": ic.require_text_folder, "out": ic.require_writable_folder}

log = logging.getLogger("rayjobs.word_vectors")


def get_args_parser(add_help: bool = True):
    parser = common_parser("Word2Vec on the report corpus; attribute vectors and negatives", add_help)
    parser.add_argument("--manifest", default=None, help="manifest Parquet (report_text column)")
    parser.add_argument("--indiana", default=None, help="NLMCXR_reports.tgz")
    parser.add_argument("--texts", default=None, help="folder of *.txt reports")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--no-ray", action="store_true", help="tokenise in this process")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    logging.getLogger("gensim").setLevel(logging.WARNING)  # per-epoch lines drown the table
    cfg = build_config(args).word_vectors
    check_inputs(args, INPUTS)
    from grounding.text import word_vectors

    if not (args.manifest or args.indiana or args.texts):
        print("give at least one of --manifest, --indiana, --texts", file=sys.stderr)
        return 2
    texts = word_vectors.corpus_texts(args.manifest, args.indiana, args.texts)
    log.info("corpus: %d reports", len(texts))
    tokenize = word_vectors.sentences_by_report
    if not args.no_ray:
        import ray

        from grounding.distributed import text as ray_text
        from grounding.distributed.runtime import init_ray

        init_ray(args.address)
        tokenize = functools.partial(ray_text.tokenize_texts, batch_size=cfg.batch_size)
    try:
        table = word_vectors.run(
            texts, args.out, vector_size=cfg.vector_size, window=cfg.window, min_count=cfg.min_count,
            epochs=cfg.epochs, seed=cfg.seed, skip_gram=cfg.skip_gram,
            negative_rule=cfg.negative_rule, min_reports=cfg.min_reports, tokenize=tokenize)
    except ValueError as err:
        print(f"word-vectors: {err}", file=sys.stderr)
        return 1
    finally:
        if not args.no_ray and not args.address:
            ray.shutdown()
    print(word_vectors.format_table(table))
    print(f"wrote {args.out}: {table['settings']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
