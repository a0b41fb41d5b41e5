"""Corpus readers, packing, the on-disk cache and deterministic validation hold-out."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from zoo.data.corpora import iter_documents, read_any, read_wikiextractor, read_wikitext, resolve_source
from zoo.data.packing import BlockLayout, encode_documents, num_blocks, pack_blocks, prepare_splits
from zoo.data.tokenization import load_tokenizer
from zoo.errors import DataNotFoundError, ZooError
from zoo.recipe.lm import DataSection


def test_mirror_tokenizers_have_full_vocabularies() -> None:
    assert load_tokenizer("bert-base-uncased").vocab_size == 30522
    gpt2 = load_tokenizer("gpt2")
    assert gpt2.vocab_size == 50257 and gpt2.eos_token_id == 50256
    roberta = load_tokenizer("roberta-base")
    assert len(roberta) == 50265 and roberta.mask_token_id == 50264
    assert load_tokenizer("bert-base-uncased").tokenize("unaffable") == ["una", "##ffa", "##ble"]


def test_packing_edge_cases() -> None:
    layout = BlockLayout(6, (101,), (102,))  # 4 content tokens per block
    stream = np.arange(1, 11, dtype=np.uint16)  # 10 tokens -> 2 blocks, remainder 2 dropped
    blocks = pack_blocks(stream, layout)
    assert blocks.tolist() == [[101, 1, 2, 3, 4, 102], [101, 5, 6, 7, 8, 102]]
    assert num_blocks(3, layout) == 0 and pack_blocks(stream[:3], layout).shape == (0, 6)
    raw = BlockLayout(4, (), ())
    assert pack_blocks(stream, raw, np.array([1])).tolist() == [[5, 6, 7, 8]]


def test_encoding_puts_a_separator_after_each_document_and_skips_nothing() -> None:
    tok = load_tokenizer("gpt2")
    docs = ["Hello world", "a", "x " * 300]  # the last document is longer than any block
    flat = np.concatenate(list(encode_documents(docs, tok, np.dtype(np.uint16))))
    expected = []
    for doc in docs:
        expected += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert flat.tolist() == expected


def test_blank_lines_separate_documents_and_empty_lines_vanish(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n\nfirst doc line 1\nline 2\n\n\n\nsecond\n   \nthird\n")
    assert list(read_any(path)) == ["first doc line 1\nline 2", "second", "third"]


def test_wikiextractor_reader_on_the_real_mirror(mirror: Path) -> None:
    first = mirror / "wikipedia" / "enwiki_2015_wikiextractor" / "AA" / "wiki_00.gz"
    docs = list(read_wikiextractor(first))
    assert len(docs) == 38  # MANIFEST: 38 <doc> blocks in wiki_00
    assert docs[0].startswith("Anarchism is a political philosophy")
    assert all("<doc" not in d and "</doc>" not in d for d in docs)


def test_wikitext_articles_split_on_top_level_headings(tmp_path: Path) -> None:
    path = tmp_path / "wiki.valid.tokens"
    path.write_text(" \n = A = \n \n text a \n = = Sub = = \n more a \n = B = \n text b \n")
    assert list(read_wikitext(path)) == ["= A =\ntext a\n= = Sub = =\nmore a", "= B =\ntext b"]


def test_gzip_and_corrupt_files(tmp_path: Path) -> None:
    good = tmp_path / "a.txt.gz"
    with gzip.open(good, "wt") as fh:
        fh.write("one\n\ntwo\n")
    assert list(read_any(good)) == ["one", "two"]
    bad = tmp_path / "b.txt.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ZooError, match="cannot be read"):
        list(read_any(bad))


def test_offline_without_local_copy_names_hub_id_and_path(mirror: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        resolve_source("wikitext-103", "train")
    message = str(info.value)
    assert "Salesforce/wikitext" in message and str(mirror / "wikitext" / "wikitext-103") in message
    with pytest.raises(DataNotFoundError, match="wiki.{train,valid,test}.tokens"):
        resolve_source("wikitext-2", "train")  # the mirror has valid/test only


def test_held_out_validation_is_deterministic_and_disjoint(text_corpus: Path) -> None:
    source = resolve_source("text", "train", [str(text_corpus)])
    held = resolve_source("text", "validation", [str(text_corpus)])
    assert held.held_out and not source.held_out
    train = list(iter_documents("text", "train", source, 0.1, exclude_held_out=True))
    val = list(iter_documents("text", "validation", held, 0.1, exclude_held_out=False))
    assert set(train).isdisjoint(val) and len(train) + len(val) == 400
    assert 10 <= len(val) <= 80
    assert val == list(iter_documents("text", "validation", held, 0.1, exclude_held_out=False))


def test_cache_is_built_once_and_keyed_by_what_changes_tokens(text_corpus: Path, isolated: Path) -> None:
    data = DataSection(corpus="text", paths=[str(text_corpus)], validation_fraction=0.1)
    bert, gpt2 = load_tokenizer("bert-base-uncased"), load_tokenizer("gpt2")
    splits, fp1 = prepare_splits(data, bert)
    built = (isolated / "cache" / "packed" / fp1 / "train.bin").stat().st_mtime_ns
    again, fp2 = prepare_splits(data, bert)
    assert fp1 == fp2 and (isolated / "cache" / "packed" / fp1 / "train.bin").stat().st_mtime_ns == built
    assert again["train"].tokens == splits["train"].tokens > 0 and splits["validation"].tokens > 0
    assert prepare_splits(data, gpt2)[1] != fp1
    assert prepare_splits(DataSection(corpus="text", paths=[str(text_corpus)], validation_fraction=0.2), bert)[1] != fp1
    stream = splits["train"].stream()
    assert isinstance(stream, np.memmap) and stream.dtype == np.uint16
