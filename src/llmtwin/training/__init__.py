"""Training recipes: one file per method (retrieval models here: the reranker and the query adapter)."""
