"""The shipped text (``corpus.txt`` for prompts, ``heldout.txt`` for perplexity) and what is built from it:
prompts of an exact token length (:mod:`.prompts`) and output-quality measures (:mod:`.quality`).

Below the engines and the bench: both the benchmark and the engines' offline training read from here."""
