"""BM25 product search over a catalog, as the benchmark's Pyserini/Lucene engine does.

Each product is indexed by the text the benchmark indexed (``search_engine.py``): title,
description, first bullet point and "type: v1, v2, and type: ..." option text, lower-cased.
Scoring is bm25s's Lucene variant with Pyserini's default parameters k1=0.9, b=0.4. Tokens are
lower-cased, English stop words removed and Porter-stemmed (PyStemmer's "english" stemmer, as
Lucene's English analyzer stems), so "bars" matches "bar". The splitter keeps one-character tokens
and numbers ("3 ounce", "usb c", "x-large" -> x, large), which bm25s's default drops.

Indexes are cached per catalog path for the process; query results are cached too, since all
trajectories of a GiGPO group tend to issue the same searches.
"""

from __future__ import annotations

from functools import lru_cache

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenizer

from gigpo.console import quiet
from gigpo.envs.webshop.data import Catalog

quiet("bm25s")  # bm25s sets its logger to DEBUG on import (index-building chatter); GIGPO_VERBOSE=bm25s keeps it

TOP_K = 50
# Every run of word characters, one-character tokens and numbers included.
SPLITTER = r"(?u)\b\w+\b"
_indexes: dict[str, "SearchIndex"] = {}


def product_text(product: dict) -> str:
    """The indexed text of a product."""
    options = ", and ".join(f"{kind}: {', '.join(values)}" for kind, values in product["options"].items())
    first_bullet = product["bullets"][0] if product["bullets"] else ""
    return " ".join([product["name"], product["description"], first_bullet, options]).lower()


class SearchIndex:
    """BM25 over one catalog's products; ``search(query)`` gives the top-50 asins, best first."""

    def __init__(self, catalog: Catalog):
        self.asins = [p["asin"] for p in catalog.products]
        self.tokenizer = Tokenizer(splitter=SPLITTER, stopwords="en", stemmer=Stemmer.Stemmer("english"))
        corpus_ids = self.tokenizer.tokenize([product_text(p) for p in catalog.products], return_as="ids",
                                             show_progress=False)
        self.bm25 = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
        self.bm25.index(corpus_ids, show_progress=False)
        self.search = lru_cache(maxsize=4096)(self._search)

    def _search(self, query: str) -> tuple[str, ...]:
        ids = self.tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        empty = self.tokenizer.get_vocab_dict().get("")  # bm25s's id for "no known token"
        ids = [i for i in ids if i != empty]
        if not ids:
            return ()
        scores = self.bm25.get_scores(ids)  # [num_products]
        k = min(TOP_K, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # best first, ties by catalog order
        return tuple(self.asins[i] for i in top if scores[i] > 0)


def search_index(catalog: Catalog) -> SearchIndex:
    """The (process-wide cached) search index of ``catalog``."""
    if catalog.path not in _indexes:
        _indexes[catalog.path] = SearchIndex(catalog)
    return _indexes[catalog.path]
