"""Data: corpora and their mirror layouts, tokenizers, the one cache builder, LM packing and MLM masking."""
