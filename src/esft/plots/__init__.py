"""Figures and tables, made only from files that earlier stages wrote."""
