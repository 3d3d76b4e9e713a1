"""The proxy study: how well each search metric ranks cells against trained-from-scratch ground truth."""
