"""The search: the space file (`space`), Algorithm 1 itself (`algorithm`), the brief
distillation of candidates (`candidates`) and where it runs (`executors`), the
resumable run folder (`run`), and what the answer is worth (`audit`, `show`)."""
