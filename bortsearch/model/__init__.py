"""The model: one BERT-family encoder for teacher, maximum point and candidates.

`arch` (the architecture ⟨D, A, H, I⟩ and its non-size settings), `encoder` (the Flax
`Encoder`, parameters, `Model`), `hf` (Hugging Face checkpoints in and out) and
`proxies` (parameter counts, FLOPs and measured latency).
"""
