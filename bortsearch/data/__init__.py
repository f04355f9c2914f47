"""The data: corpora streamed from disk (`corpus`), their tokenizers (`tokenizer`)
and the masked-LM batches every training step reads (`batches`)."""
