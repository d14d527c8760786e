"""Tiny model configs shared by the tests (imported as `tiny_configs`: pytest puts tests/ on sys.path)."""

# PusaTransformer3DModel at toy size: 2 blocks, 2 heads of 12, 4 latent channels.
TINY_DIT = dict(
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=12,
    ffn_dim=32,
    text_dim=32,
    freq_dim=16,
    in_channels=4,
    out_channels=4,
    rope_max_seq_len=32,
)
