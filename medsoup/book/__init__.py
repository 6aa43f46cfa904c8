"""The book layer: executing notebooks with papermill, building the Jupyter Book, batch reruns.

``python -m medsoup.book`` (:mod:`medsoup.book.build`) executes and builds;
``python -m medsoup.book.batch`` (:mod:`medsoup.book.batch`) reruns a notebook over a grid.
"""
