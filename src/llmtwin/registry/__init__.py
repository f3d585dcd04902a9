"""The model registry (MLflow): record trained runs, resolve NAME@ALIAS, promote, merge/export.

tracking.py  the project's MLflow client (SQLite under .twin/ or a server); mlflow imported lazily
record.py    record_run: a run dir → an MLflow run + a registered version with alias `candidate`
models.py    list / show / resolve a reference to a local model dir / move aliases
promote.py   held-out loss of candidate vs champion; moves `champion` if better (or forced)
merge.py     LoRA merged into its float32 base; export as a plain Hugging Face dir
load.py      a registered model as the LLM (`llm.provider: registry`, `twin ask --model`)
"""
