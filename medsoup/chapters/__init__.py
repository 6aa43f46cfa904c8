"""One module per chapter: its settings table (profiles), its protocol as run configs, and the
long per-seed rows its notebook records; :mod:`medsoup.chapters.tables` turns those rows into the
tables and sentences every chapter shows. Notebooks call these; nothing below imports them."""
