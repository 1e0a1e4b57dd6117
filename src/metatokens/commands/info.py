"""`metatokens info`: model shapes and their parameter counts, with and without meta-attention."""

from __future__ import annotations

from ..model.config import MODEL_SHAPES, model_shape


def add_command(sub) -> None:
    p = sub.add_parser("info", help="parameter counts of the named model shapes")
    p.add_argument("--shape", choices=list(MODEL_SHAPES), help="one shape only (default: all)")
    p.set_defaults(func=run)


def parameter_counts(shape: str) -> tuple[int, int]:
    """(with meta-attention, without) for a named shape; built on the meta device, so free."""
    import torch  # here, not at import: every `metatokens` call builds this command's parser

    from ..model import GPT

    with torch.device("meta"):
        meta = GPT(model_shape(shape, meta_token_id=0))
        base = GPT(model_shape(shape, meta_attention=False))
    return meta.num_params(), base.num_params()


def run(args) -> int:
    print(f"{'shape':<12}{'layers x heads x d':>20}{'window':>8}{'vocab':>8}{'with meta':>14}{'without':>14}{'extra':>8}")
    for shape in [args.shape] if args.shape else MODEL_SHAPES:
        s = MODEL_SHAPES[shape]
        meta, base = parameter_counts(shape)
        dims = f"{s['n_layer']} x {s['n_head']} x {s['n_embd']}"
        print(f"{shape:<12}{dims:>20}{s['block_size']:>8}{s['vocab_size']:>8}{meta:>14,}{base:>14,}{(meta - base) / base:>8.1%}")
    return 0
