"""Packing: the notebook's `Dataset.map` + `group_texts` vs zoo's streaming packer, on the IMDB unsup corpus.

Baseline (Hugging Face course / `language_modeling.ipynb`): the documents as a disk-backed dataset
(what `load_dataset` gives; building it is not timed), `map(tokenize_function, batched=True)`, then
`map(group_texts, batched=True)` with `sum(examples[k], [])`, blocks of 128 tokens.
zoo: documents streamed from the tarball (reading is timed), batched Rust tokenization
(`zoo.data.packing.token_ids`), one vectorised flatten per batch (`flatten_documents`), appended to a token
file that `BlockDataset` memory-maps: blocks are views, nothing grows with the corpus.

Reported per corpus size: tokens/s end to end, the grouping stage alone (the issue's
"group_texts vs zoo"), and peak RSS of the process tree during the timed part.

    python benchmarks/bench_packing.py            # 12.5k, 25k, 50k documents
    python benchmarks/bench_packing.py --quick    # 2k, 4k documents
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TARGET = 20.0


@dataclass(frozen=True)
class Setting:
    documents: int
    block_size: int = 128
    tokenizer: str = "bert-base-uncased"
    num_proc: int | None = None


def unsup_tarball() -> Path:
    from zoo import paths
    from zoo.errors import DataNotFoundError

    root = paths.data_dir()
    candidate = (root / "imdb" / "aclImdb_v1_unsup.tar.gz") if root else None
    if candidate is None or not candidate.is_file():
        raise DataNotFoundError(f"the IMDB unsup tarball is expected at {candidate or '$ZOO_DATA_DIR/imdb/'}")
    return candidate


def documents(limit: int) -> Any:
    """The first `limit` unsupervised IMDB reviews, streamed (the reader `zoo pretrain ... imdb` uses)."""
    from zoo.data.corpora import read_imdb

    return islice(read_imdb(unsup_tarball(), "train"), limit)


# --------------------------------------------------------------------------- the two arms


def baseline_arm(setting: Setting) -> dict[str, Any]:
    """Dataset.map tokenization, then the notebook's group_texts with sum(lists, [])."""
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        os.environ["HF_DATASETS_CACHE"] = tmp  # a fresh cache: no map result is reused across runs
        from datasets import load_dataset

        from zoo.data.tokenization import load_tokenizer

        tokenizer = load_tokenizer(setting.tokenizer)
        block_size = setting.block_size
        source = Path(tmp) / "imdb_unsup.jsonl"
        with open(source, "w", encoding="utf-8") as fh:
            for doc in documents(setting.documents):
                fh.write(json.dumps({"text": doc}) + "\n")
        raw = load_dataset("json", data_files=str(source), split="train", cache_dir=tmp)

        def tokenize_function(examples: dict[str, list]) -> Any:
            return tokenizer(examples["text"])

        group_texts = common.notebook_group_texts(block_size)

        with common.PeakRSS() as rss:
            start = time.perf_counter()
            tokenized = raw.map(tokenize_function, batched=True, num_proc=setting.num_proc, remove_columns=["text"])
            tokenize_s = time.perf_counter() - start
            blocks = tokenized.map(group_texts, batched=True, num_proc=setting.num_proc)
            total_s = time.perf_counter() - start
        tokens = sum(len(ids) for ids in tokenized["input_ids"])
        return {"tokens": tokens, "blocks": len(blocks), "total_s": total_s, "tokenize_s": tokenize_s,
                "group_s": total_s - tokenize_s, "peak_rss_mib": rss.mib}


def zoo_arm(setting: Setting) -> dict[str, Any]:
    """Stream, tokenize in batches, flatten each batch vectorised, append to a memory-mapped token file."""
    import numpy as np

    from zoo.data.packing import (
        DOCS_PER_BATCH,
        BlockDataset,
        batched,
        block_layout,
        flatten_documents,
        separator_id,
        token_dtype,
        token_ids,
    )
    from zoo.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(setting.tokenizer)
    sep, dtype = separator_id(tokenizer), token_dtype(tokenizer)
    layout = block_layout(tokenizer, "mlm", setting.block_size)
    tokenize_s = group_s = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp, common.PeakRSS() as rss:
        path = Path(tmp) / "tokens.bin"
        start = time.perf_counter()
        tokens = 0
        with open(path, "wb") as fh:
            for batch in batched(documents(setting.documents), DOCS_PER_BATCH):
                t0 = time.perf_counter()
                ids = token_ids(tokenizer, batch)
                t1 = time.perf_counter()
                flat = flatten_documents(ids, sep, dtype)
                fh.write(flat.tobytes())
                group_s += time.perf_counter() - t1
                tokenize_s += t1 - t0
                tokens += int(flat.size)
        t2 = time.perf_counter()
        blocks = BlockDataset(np.memmap(path, dtype=dtype, mode="r", shape=(tokens,)), layout)
        group_s += time.perf_counter() - t2
        total_s = time.perf_counter() - start
        n_blocks = len(blocks)
    return {"tokens": tokens, "blocks": n_blocks, "total_s": total_s, "tokenize_s": tokenize_s,
            "group_s": group_s, "peak_rss_mib": rss.mib}


ARMS = {"baseline": baseline_arm, "zoo": zoo_arm}


# --------------------------------------------------------------------------- driver


def summarise(setting: Setting, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(arm: str, key: str) -> float:
        return common.median([r[key] for r in runs[arm]])

    speed = {arm: common.median([r["tokens"] / r["total_s"] for r in runs[arm]]) for arm in runs}
    return {"documents": setting.documents, "tokens": runs["zoo"][0]["tokens"],
            "baseline tok/s": round(speed["baseline"]), "zoo tok/s": round(speed["zoo"]),
            "end-to-end speedup": round(speed["zoo"] / speed["baseline"], 2),
            "baseline group s": round(med("baseline", "group_s"), 3), "zoo group s": round(med("zoo", "group_s"), 3),
            "grouping speedup": round(med("baseline", "group_s") / med("zoo", "group_s"), 1),
            "baseline tokenize s": round(med("baseline", "tokenize_s"), 2),
            "zoo tokenize s": round(med("zoo", "tokenize_s"), 2),
            "baseline peak RSS MiB": med("baseline", "peak_rss_mib"), "zoo peak RSS MiB": med("zoo", "peak_rss_mib")}


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--documents", help="comma-separated corpus sizes (documents)")
    parser.add_argument("--num-proc", type=int, default=None, help="baseline Dataset.map num_proc (default: none)")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](Setting(**json.loads(args.arm_spec))))
        return 0
    sizes = [int(x) for x in args.documents.split(",")] if args.documents else (
        [2000, 4000] if args.quick else [12500, 25000, 50000])
    repeats = args.repeats or (1 if args.quick else 2)
    print("machine:", json.dumps(common.machine()))
    rows, raw = [], []
    for size in sizes:
        setting = Setting(size, num_proc=args.num_proc)
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "zoo": []}
        for repeat, arm in common.interleaved(["baseline", "zoo"], repeats):
            result = common.run_arm("bench_packing.py", arm, asdict(setting))
            runs[arm].append(result)
            print(f"  {size} docs {arm} #{repeat + 1}: {result['tokens'] / result['total_s']:.0f} tokens/s "
                  f"(tokenize {result['tokenize_s']:.1f} s, group {result['group_s']:.2f} s), "
                  f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append(summarise(setting, runs))
        raw.append({"setting": asdict(setting), "runs": runs})
    common.print_table(rows, "packing (IMDB unsup; block 128; bert-base-uncased tokenizer)")
    largest = rows[-1]
    verdict = "meets" if largest["grouping speedup"] >= TARGET else "MISSES"
    print(f"grouping: zoo {common.fmt_ratio(largest['grouping speedup'])} the notebook's group_texts "
          f"({verdict} the {TARGET:.0f}x target); end to end (tokenization included): "
          f"{common.fmt_ratio(largest['end-to-end speedup'])}")
    growth = {arm: rows[-1][f"{arm} peak RSS MiB"] - rows[0][f"{arm} peak RSS MiB"] for arm in ("baseline", "zoo")}
    print(f"peak RSS growth from {rows[0]['documents']} to {largest['documents']} documents: "
          f"baseline {growth['baseline']:+.0f} MiB, zoo {growth['zoo']:+.0f} MiB")
    common.save_json(args.json, {"machine": common.machine(), "rows": rows, "raw": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
