"""Training datasets made from the project: SFT pairs from the store's chunks, preference pairs from
rankings / thumbs / corrections / a reward function, and n-gram decontamination against eval sets.

Files written follow the shared contract: `.twin/datasets/<name>/{train,validation}.jsonl` in TRL's
conversational format plus `card.json` (see docs/datasets.md).
"""
