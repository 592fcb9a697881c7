"""Self-contained HTML reports and their tables, published as one unit (`html`)."""
