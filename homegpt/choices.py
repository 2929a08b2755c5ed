"""The names a config can choose from, importable without torch (the CLI registers its flags with them, and
`homegpt prepare`'s worker processes must not pay for importing torch)."""

ARCHS = ("gpt2", "modern")
MLPS = {"gpt2": ("gelu",), "modern": ("swiglu", "relu2")}  # the first is the default
DEFAULT_ARCH = "modern"  # the architecture of the recipe that measured best (BENCHMARKS.md)
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
# Whether the head reads the token embedding, when a config doesn't say: GPT-2 always does; the modern
# architecture's own head measured better at equal FLOPs (BENCHMARKS.md) and costs no extra FLOPs per token.
TIE_EMBEDDINGS = {"gpt2": True, "modern": False}
