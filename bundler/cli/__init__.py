"""Click commands only: parse, call core, render."""
