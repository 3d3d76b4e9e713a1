"""Stage 1: single-path one-shot (SPOS) supernet over the DARTS space."""
