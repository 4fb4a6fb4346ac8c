"""GPU facts and judgements: ``nvidia-smi`` (:mod:`.smi`), the image's CUDA requirement
against the driver (:mod:`.cuda`), and whether a model fits, as vLLM budgets memory
(:mod:`.fit`, :mod:`.catalog`). Pure logic and one subprocess; no engine, no click."""
