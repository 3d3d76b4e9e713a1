"""Stage 2: evolutionary search scored by angle, accuracy and flatness."""
