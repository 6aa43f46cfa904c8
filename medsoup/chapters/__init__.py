"""One module per chapter: its settings table (profiles), its protocol as run configs, and the
tables and sentences its notebook shows. Notebooks call these; nothing below imports them."""
