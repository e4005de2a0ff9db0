"""BM25 product search over a catalog, as the benchmark's Pyserini/Lucene engine does.

Each product is indexed by the text the benchmark indexed (``search_engine.py``): title,
description, first bullet point and "type: v1, v2, and type: ..." option text, lower-cased.
Scoring is bm25s's Lucene variant with Pyserini's default parameters k1=0.9, b=0.4.
Deviation: Lucene's English analyzer stems (Porter); here tokens are not stemmed (English stop
words are removed), so "bars" does not match "bar".

Indexes are cached per catalog path for the process; query results are cached too, since all
trajectories of a GiGPO group tend to issue the same searches.
"""

from __future__ import annotations

from functools import lru_cache

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

from gigpo.envs.webshop.data import Catalog

TOP_K = 50
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
        self.tokenizer = Tokenizer(stopwords="en")
        self.stopwords = frozenset(self.tokenizer.stopwords)
        corpus_ids = self.tokenizer.tokenize([product_text(p) for p in catalog.products], return_as="ids",
                                             show_progress=False)
        self.bm25 = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
        self.bm25.index(corpus_ids, show_progress=False)
        self.search = lru_cache(maxsize=4096)(self._search)

    def _search(self, query: str) -> tuple[str, ...]:
        vocab = self.tokenizer.get_vocab_dict()
        ids = [vocab[t] for t in self.tokenizer.splitter(query.lower()) if t in vocab and t not in self.stopwords]
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
